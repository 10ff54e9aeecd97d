"""File input and output; every axis conversion between files and memory lives here."""

from .centres import Centre, read_centres
from .manifest import load_manifest, save_manifest
from .mrc import MrcSlabWriter
from .volumes import Geometry, VolumeInfo, open_volume, read_info, read_volume, write_volume

__all__ = [
    "Centre",
    "Geometry",
    "MrcSlabWriter",
    "VolumeInfo",
    "load_manifest",
    "open_volume",
    "read_centres",
    "read_info",
    "read_volume",
    "save_manifest",
    "write_volume",
]
