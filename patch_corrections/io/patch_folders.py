"""Finding label patches with their images, and training pairs, in folders.

Two inputs are understood:

- an extraction output folder (``manifest.json``, ``images/``, ``labels/``), or its
  ``labels/`` folder;
- MemBrain-seg's layout: a folder of label patches, each file's stem naming its patch, with
  the images in another folder (``--images-dir``) under the same stem or ``<stem>_0000``.
  Its extraction writes ``labelsCorr/`` beside ``imagesCorr/`` (and training folders
  ``labelsTr/`` beside ``imagesTr/``): the sibling is found without ``--images-dir``, and
  the folder holding both may be given instead of the labels folder.

A training folder is what ``merge_corrections`` writes, or MemBrain-seg's as it is:
``imagesTr/<name>_0000.<ext>`` beside ``labelsTr/<name>.<ext>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..constants import TRAIN_IMAGE_SUFFIX, TRAIN_IMAGES_SUBDIR, TRAIN_LABELS_SUBDIR
from ..errors import InputError
from .manifest import PatchRecord, manifest_path, read_records
from .names import warn_links_out
from .volumes import is_volume_file, volume_stem


@dataclass
class LabelPatch:
    """One label patch and where its image is.

    ``record`` is the manifest's when the patch came from an extraction folder.
    """

    name: str
    label: Path
    image: Path | None
    record: PatchRecord | None = None


LABEL_FOLDERS = {"labelsCorr": "imagesCorr", "labelsTr": "imagesTr", "labels": "images"}
"""Label folders and the image folder beside each, as MemBrain-seg and we name them."""


def _volume_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_volume_file(p) and not p.name.startswith("."))


def _find_image(images_dir: Path, stem: str) -> Path | None:
    for candidate in _volume_files(images_dir):
        if volume_stem(candidate) in (stem, stem + TRAIN_IMAGE_SUFFIX):
            return candidate
    return None


def _from_manifest(folder: Path, only_in: Path | None) -> list[LabelPatch]:
    return [
        LabelPatch(record.name, record.label, record.image, record)
        for record in read_records(folder)
        if only_in is None or record.label.parent == only_in.resolve()
    ]


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
        patches = _from_manifest(labels_dir, None)
    elif manifest_path(labels_dir.parent).exists():
        patches = _from_manifest(labels_dir.parent, labels_dir)
    else:
        patches = []
    known = {p.label for p in patches}
    unrecorded = [path for path in _volume_files(labels_dir) if path.resolve() not in known]
    warn_links_out(labels_dir, unrecorded)
    patches += [LabelPatch(volume_stem(path), path.resolve(), None) for path in unrecorded]
    if images_dir is not None:
        for patch in patches:
            patch.image = _find_image(Path(images_dir), patch.name)
        warn_links_out(Path(images_dir), [p.image for p in patches if p.image is not None])
    names = [p.name for p in patches]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(
            f"{labels_dir}: several label files share the patch name {duplicates[0]!r}; "
            "keep one file per patch"
        )
    return sorted(patches, key=lambda p: p.name)


def find_training_pairs(folder: Path) -> list[tuple[str, Path, Path]]:
    """``(name, image, label)`` for every label file of a training folder."""
    folder = Path(folder)
    images_dir, labels_dir = folder / TRAIN_IMAGES_SUBDIR, folder / TRAIN_LABELS_SUBDIR
    if not labels_dir.is_dir() or not images_dir.is_dir():
        raise InputError(
            f"{folder}: not a training folder (expected {TRAIN_IMAGES_SUBDIR}/ and "
            f"{TRAIN_LABELS_SUBDIR}/, as merge_corrections writes them)"
        )
    images = {volume_stem(p): p for p in images_dir.iterdir() if is_volume_file(p)}
    pairs = []
    for label in sorted(p for p in labels_dir.iterdir() if is_volume_file(p)):
        name = volume_stem(label)
        image = images.get(name + TRAIN_IMAGE_SUFFIX) or images.get(name)
        if image is None:
            raise InputError(f"{label}: no image {name}{TRAIN_IMAGE_SUFFIX}.* in {images_dir}")
        pairs.append((name, image, label))
    if not pairs:
        raise InputError(f"{labels_dir}: no label files; run merge_corrections first")
    warn_links_out(folder, [path for _, image, label in pairs for path in (image, label)])
    return pairs
