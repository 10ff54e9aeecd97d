"""Files and formats: every rule about a file lives here, once.

- ``volumes``: the one face of volume I/O (``read_volume``, ``open_volume``,
  ``write_volume``) over the formats ``mrc`` (``mrc_writer`` for slab-by-slab writes),
  ``nrrd`` and ``nifti``, whose modules own each format's axis conversion; ``readers``
  holds what their readers share.
- ``geometry``: voxel size and origin, world <-> voxel positions, ``x, y, z`` <-> ``(z, y,
  x)``.
- ``centres``, ``manifest`` (typed ``PatchRecord``), ``summary`` (merge summaries):
  what the package reads and writes about patches.
- ``patch_folders`` (label patches and training pairs), ``correction_folders`` (mask
  names, which masks belong to a patch), ``placement`` (where a patch lies in its
  tomogram), ``names`` (output names, a round's folders, names read from files that must
  stay inside their folder).
- ``staging`` (files moved into place together, or not at all) and ``locks``.
"""

from .centres import Centre, read_centres
from .geometry import Geometry, as_xyz
from .manifest import PatchRecord, load_manifest, read_records, save_manifest
from .mrc_writer import MrcSlabWriter
from .names import RoundFolders
from .volumes import VolumeInfo, open_volume, read_info, read_volume, write_volume

__all__ = [
    "Centre",
    "Geometry",
    "MrcSlabWriter",
    "PatchRecord",
    "RoundFolders",
    "VolumeInfo",
    "as_xyz",
    "load_manifest",
    "open_volume",
    "read_centres",
    "read_info",
    "read_records",
    "read_volume",
    "save_manifest",
    "write_volume",
]
