"""The extraction manifest: one JSON file that records every patch of an output folder.

Per patch it keeps the name, the source files, the centre, offset and size (all ``x, y, z``,
as users speak), voxel size and origin in Å, and the padding, so patches and corrections can
be traced back to, and pasted back into, their tomogram.
"""

from __future__ import annotations

import json
from pathlib import Path

from .._version import __version__
from ..constants import MANIFEST_NAME
from ..errors import InputError
from .files import inside, is_plain_name, write_text_atomic

MANIFEST_VERSION = 1
_REQUIRED = ("name", "image", "label", "offset_xyz", "size_xyz")


def as_xyz(zyx) -> list:
    """A per-axis ``(z, y, x)`` triple as the ``[x, y, z]`` list users and manifests speak."""
    z, y, x = zyx
    return [x, y, z]


def padding_zyx(record: dict) -> tuple[tuple[int, int], ...] | None:
    """A record's ``padding_xyz`` (manifest or merge summary) as ``(before, after)`` per
    axis ``(z, y, x)``; ``None`` when it records none."""
    padding = record.get("padding_xyz")
    return tuple(tuple(p) for p in padding[::-1]) if padding else None


def manifest_path(folder: Path) -> Path:
    """Where the manifest of an extraction folder lives."""
    return Path(folder) / MANIFEST_NAME


def load_manifest(folder: Path) -> list[dict]:
    """The patch records of ``folder``'s manifest; empty when there is no manifest."""
    path = manifest_path(folder)
    if not path.exists():
        return []
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a valid manifest ({exc}); move it aside") from None
    patches = content.get("patches") if isinstance(content, dict) else None
    if not isinstance(patches, list):
        raise InputError(f"{path}: not a patch manifest (no 'patches' list)")
    for index, record in enumerate(patches):
        missing = [k for k in _REQUIRED if not isinstance(record, dict) or k not in record]
        if missing:
            raise InputError(f"{path}: patch entry {index} lacks {', '.join(missing)}")
        # Names become file names and paths are read, written and deleted: a hand-edited or
        # downloaded manifest must not reach outside its folder.
        if not is_plain_name(record["name"]):
            raise InputError(
                f"{path}: patch entry {index} has the name {record['name']!r}; a patch name "
                "must be a plain file name"
            )
        for key in ("image", "label"):
            if not inside(folder, record[key]):
                raise InputError(
                    f"{path}: patch {record['name']!r} names the {key} {record[key]!r}, "
                    "outside the folder; the manifest may only name files inside it"
                )
    return patches


def manifest_text(patches: list[dict]) -> str:
    """The manifest file's content for ``patches``."""
    content = {
        "format_version": MANIFEST_VERSION,
        "written_by": f"patch_corrections {__version__}",
        "axis_order": "x, y, z (voxel indices, 0-based); voxel_size and origin in Å",
        "patches": patches,
    }
    return json.dumps(content, indent=2) + "\n"


def save_manifest(folder: Path, patches: list[dict]) -> Path:
    """Write the manifest atomically and return its path."""
    path = manifest_path(folder)
    write_text_atomic(path, manifest_text(patches))
    return path
