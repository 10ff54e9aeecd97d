"""Finding label patches, their images and their correction masks in folders.

Two inputs are understood:

- an extraction output folder (``manifest.json``, ``images/``, ``labels/``), or its
  ``labels/`` folder;
- MemBrain-seg's layout: a folder of label patches, each file's stem naming its patch, with
  the images in another folder (``--images-dir``) under the same stem or ``<stem>_0000``.
  Its extraction writes ``labelsCorr/`` beside ``imagesCorr/`` (and training folders
  ``labelsTr/`` beside ``imagesTr/``): the sibling is found without ``--images-dir``, and
  the folder holding both may be given instead of the labels folder.

Corrections follow MemBrain-seg's tree: ``corrections_dir/<patch name>/Add*, Remove*,
Ignore*`` in any readable format, prefixes matched case-insensitively.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..constants import CORRECTION_KINDS, TRAIN_IMAGE_SUFFIX
from ..errors import InputError
from .manifest import load_manifest, manifest_path
from .volumes import is_volume_file, volume_stem


@dataclass
class LabelPatch:
    """One label patch and where its image is.

    ``record`` is the manifest entry when the patch came from an extraction folder.
    """

    name: str
    label: Path
    image: Path | None
    record: dict | None = None


@dataclass
class CorrectionFolder:
    """The masks painted for one patch, by kind, and the files that matched no kind."""

    folder: Path
    masks: dict[str, list[Path]] = field(default_factory=dict)
    unmatched: list[Path] = field(default_factory=list)


LABEL_FOLDERS = {"labelsCorr": "imagesCorr", "labelsTr": "imagesTr", "labels": "images"}
"""Label folders and the image folder beside each, as MemBrain-seg and we name them."""


def _volume_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_volume_file(p) and not p.name.startswith("."))


def _find_image(images_dir: Path, stem: str) -> Path | None:
    for candidate in _volume_files(images_dir):
        if volume_stem(candidate) in (stem, stem + TRAIN_IMAGE_SUFFIX):
            return candidate
    return None


def _from_manifest(folder: Path, records: list[dict], only_in: Path | None) -> list[LabelPatch]:
    patches = []
    for record in records:
        label = (folder / record["label"]).resolve()
        if only_in is not None and label.parent != only_in.resolve():
            continue
        patches.append(
            LabelPatch(record["name"], label, (folder / record["image"]).resolve(), record)
        )
    return patches


def find_label_patches(labels_dir: Path, images_dir: Path | None = None) -> list[LabelPatch]:
    """List the label patches of ``labels_dir`` with their images.

    Parameters
    ----------
    labels_dir
        An extraction output folder, its ``labels/`` folder, or any folder of label patches.
    images_dir
        Folder of image patches; overrides the manifest's image paths when given.
    """
    labels_dir = Path(labels_dir)
    if not labels_dir.is_dir():
        raise InputError(f"{labels_dir}: labels folder not found")
    if images_dir is not None and not Path(images_dir).is_dir():
        raise InputError(f"{images_dir}: images folder not found")
    if not manifest_path(labels_dir).exists() and not _volume_files(labels_dir):
        # The folder holding MemBrain-seg's labelsCorr/ (or labelsTr/): use that one.
        inner = [labels_dir / name for name in LABEL_FOLDERS if (labels_dir / name).is_dir()]
        if len(inner) == 1:
            labels_dir = inner[0]
    if images_dir is None and not manifest_path(labels_dir.parent).exists():
        sibling = labels_dir.parent / LABEL_FOLDERS.get(labels_dir.name, "")
        if labels_dir.name in LABEL_FOLDERS and sibling.is_dir():
            images_dir = sibling
    if manifest_path(labels_dir).exists():
        patches = _from_manifest(labels_dir, load_manifest(labels_dir), None)
    elif manifest_path(labels_dir.parent).exists():
        patches = _from_manifest(labels_dir.parent, load_manifest(labels_dir.parent), labels_dir)
    else:
        patches = []
    known = {p.label for p in patches}
    for path in _volume_files(labels_dir):
        if path.resolve() not in known:
            patches.append(LabelPatch(volume_stem(path), path.resolve(), None))
    if images_dir is not None:
        for patch in patches:
            patch.image = _find_image(Path(images_dir), patch.name)
    names = [p.name for p in patches]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(
            f"{labels_dir}: several label files share the patch name {duplicates[0]!r}; "
            "keep one file per patch"
        )
    return sorted(patches, key=lambda p: p.name)


def correction_kind(path: Path) -> str | None:
    """``"add"``, ``"remove"`` or ``"ignore"`` from a file name's prefix, else ``None``."""
    name = path.name.lower()
    for kind in CORRECTION_KINDS:
        if name.startswith(kind) and is_volume_file(path):
            return kind
    return None


def scan_corrections(corrections_dir: Path) -> dict[str, CorrectionFolder]:
    """Read the corrections tree: one entry per sub-folder, keyed by the folder's name."""
    corrections_dir = Path(corrections_dir)
    if not corrections_dir.is_dir():
        raise InputError(f"{corrections_dir}: corrections folder not found")
    folders: dict[str, CorrectionFolder] = {}
    for folder in sorted(p for p in corrections_dir.iterdir() if p.is_dir()):
        if folder.name.startswith("."):
            continue
        entry = CorrectionFolder(folder)
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):
                continue
            kind = correction_kind(path)
            if kind is None:
                entry.unmatched.append(path)
            else:
                entry.masks.setdefault(kind, []).append(path)
        # A folder may be named after the patch file itself (``tomo_patch0.nii.gz/``).
        name = volume_stem(folder)
        if name in folders:
            raise InputError(
                f"{folder}: a second corrections folder for patch {name!r} (beside "
                f"{folders[name].folder.name}); keep one"
            )
        folders[name] = entry
    return folders


def stray_files(corrections_dir: Path) -> list[Path]:
    """Files lying directly in the corrections folder, outside any patch folder."""
    return sorted(
        p for p in Path(corrections_dir).iterdir() if p.is_file() and not p.name.startswith(".")
    )
