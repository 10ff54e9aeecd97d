"""Training data: reading training folders, normalising patches, sampling crops.

A training folder is what ``merge_corrections`` writes, or MemBrain-seg's as it is:
``imagesTr/<name>_0000.<ext>`` beside ``labelsTr/<name>.<ext>`` (``.nii.gz`` usually; any
readable volume format works). Arrays are ``(z, y, x)``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .constants import (
    IGNORE,
    MEMBRANE,
    MERGE_SUMMARY_NAME,
    TRAIN_IMAGE_SUFFIX,
    TRAIN_IMAGES_SUBDIR,
    TRAIN_LABELS_SUBDIR,
)
from .corrections import require_label_values
from .errors import InputError, PatchCorrectionsWarning
from .intensity import NORMALISATION, ZSCORE, normalise, statistics_of
from .io.volumes import (
    is_volume_file,
    read_volume,
    volume_stem,
)

_SAMPLE_STEP = 4  # annotated voxels are listed on a grid of this spacing, to stay small


@dataclass
class TrainingPatch:
    """One training pair in memory.

    Attributes
    ----------
    image
        Normalised image ``(z, y, x)``, float32.
    labels
        Labels ``(z, y, x)``, uint8 in {0, 1, 2}.
    annotated, membrane
        First voxels ``(n, 3)`` of the small blocks that hold annotated, or membrane,
        voxels; crop centres are drawn from them.
    """

    name: str
    image: np.ndarray
    labels: np.ndarray
    annotated: np.ndarray
    membrane: np.ndarray
    pixel_size: float | None = None
    """Å per voxel of ``image`` (after any resampling), where known."""

    @classmethod
    def from_arrays(
        cls,
        name: str,
        image: np.ndarray,
        labels: np.ndarray,
        normalisation: str = NORMALISATION,
        statistics: tuple[float, float] | None = None,
    ) -> TrainingPatch:
        """A patch whose image is normalised by ``normalisation`` with ``statistics`` (its
        tomogram's, ideally; default: the image's own)."""
        labels = labels.astype(np.uint8)
        statistics = statistics or statistics_of(normalisation, image)
        return cls(
            name,
            normalise(image, statistics, clip=normalisation != ZSCORE),
            labels,
            _blocks_with(labels != IGNORE),
            _blocks_with(labels == MEMBRANE),
        )

    def with_labels(self, labels: np.ndarray) -> TrainingPatch:
        """The same (already normalised) image with other labels ``(z, y, x)``."""
        labels = labels.astype(np.uint8)
        return TrainingPatch(
            self.name,
            self.image,
            labels,
            _blocks_with(labels != IGNORE),
            _blocks_with(labels == MEMBRANE),
            self.pixel_size,
        )

    def voxel_in(self, blocks: np.ndarray, rng: np.random.Generator, wanted) -> np.ndarray:
        """A random voxel ``(z, y, x)`` of a random block of ``blocks`` where ``wanted``
        (a function of the labels) holds."""
        corner = blocks[rng.integers(len(blocks))]
        window = tuple(slice(c, c + _SAMPLE_STEP) for c in corner)
        inside = np.argwhere(wanted(self.labels[window]))
        return corner + inside[rng.integers(len(inside))]


def _blocks_with(mask: np.ndarray) -> np.ndarray:
    """First-voxel coordinates ``(n, 3)`` of the blocks of ``_SAMPLE_STEP``³ voxels holding
    at least one true voxel of ``mask``: small to keep, and no scribble is missed."""
    step = _SAMPLE_STEP
    padded = np.pad(mask, [(0, -n % step) for n in mask.shape])
    z, y, x = (n // step for n in padded.shape)
    blocks = padded.reshape(z, step, y, step, x, step).any(axis=(1, 3, 5))
    return (np.argwhere(blocks) * step).astype(np.int32)


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
    return pairs


def recorded_statistics(folder: Path) -> dict[str, dict]:
    """The tomogram statistics ``merge_corrections`` recorded per patch of a training
    folder (from the extraction manifest), by patch name; empty for other folders."""
    path = Path(folder) / MERGE_SUMMARY_NAME
    try:
        rows = json.loads(path.read_text(encoding="utf-8")).get("patches", [])
    except (OSError, ValueError, AttributeError):
        return {}
    return {
        row["name"]: row["intensity_statistics"]
        for row in rows
        if isinstance(row, dict) and isinstance(row.get("intensity_statistics"), dict)
    }


MAX_RESAMPLING = 3.0
"""Largest ratio of pixel sizes a training patch is resampled across; beyond it a header's
voxel size is more likely wrong than the data so far off the network's scale."""


def load_training_pairs(
    pairs: list[tuple[str, Path, Path]],
    normalisation: str = NORMALISATION,
    recorded: dict[str, dict] | None = None,
    pixel_size: float | None = None,
    given_pixel_size: float | None = None,
    resampled: list[tuple[str, tuple[int, ...]]] | None = None,
) -> list[TrainingPatch]:
    """Read, check and normalise training pairs: each image with its tomogram's statistics
    where ``recorded`` (see :func:`recorded_statistics`) has them, else with its own.

    With ``pixel_size`` (the network's, Å), a patch at another voxel size (its header's, or
    ``given_pixel_size``) is resampled to it first: the image in Fourier space, the labels
    by nearest neighbour, ignore kept; each one's name and new shape are added to
    ``resampled``.
    """
    recorded = recorded or {}
    patches = []
    for name, image_path, label_path in pairs:
        image, info = read_volume(image_path)
        labels, _ = read_volume(label_path)
        if image.shape != labels.shape:
            raise InputError(
                f"{label_path}: shape {labels.shape[::-1]} (x,y,z) differs from its image "
                f"{image_path}: {image.shape[::-1]}"
            )
        require_label_values(labels, label_path)
        statistics = recorded.get(name, {}).get(normalisation)
        statistics = tuple(statistics) if statistics else None
        size = given_pixel_size or (info.geometry.voxel_size[2] if info.geometry else None)
        if pixel_size and size and abs(size / pixel_size - 1) > 0.01:
            if not 1 / MAX_RESAMPLING <= size / pixel_size <= MAX_RESAMPLING:
                raise InputError(
                    f"{image_path}: voxel size {size:g} Å is too far from the network's "
                    f"{pixel_size:g} Å to resample; if the header is wrong, give the patches' "
                    "pixel size with --pixel-size"
                )
            from .rescale import resample_image, resample_labels

            shape = tuple(max(1, round(n * size / pixel_size)) for n in image.shape)
            image, labels = resample_image(image, shape), resample_labels(labels, shape)
            size = pixel_size
            if resampled is not None and shape != tuple(info.shape):
                resampled.append((name, shape))
        patch = TrainingPatch.from_arrays(name, image, labels, normalisation, statistics)
        patch.pixel_size = size
        patches.append(patch)
    return patches


def split_validation(pairs: list, fraction: float, rng: np.random.Generator) -> tuple[list, list]:
    """Hold out ``fraction`` of the pairs (at least one when there are two or more)."""
    if not 0 <= fraction < 1:
        raise InputError(f"--val-fraction must be in [0, 1), got {fraction}")
    count = round(len(pairs) * fraction)
    if fraction > 0 and len(pairs) >= 2:
        count = max(count, 1)
    order = rng.permutation(len(pairs))
    held = {int(i) for i in order[:count]}
    return [p for i, p in enumerate(pairs) if i not in held], [pairs[i] for i in sorted(held)]


def sample_crop(
    patch: TrainingPatch,
    size: tuple[int, int, int],
    rng: np.random.Generator,
    membrane_share: float = 1 / 3,
) -> tuple[np.ndarray, np.ndarray]:
    """A random crop ``size`` ``(z, y, x)`` centred on an annotated voxel.

    With probability ``membrane_share`` the centre is a membrane voxel, so crops see the
    rare class; otherwise any annotated voxel, background included. Parts of the crop
    outside the patch are padded: image 0 (the normalised mean), labels ignore.
    """
    return cut_crop(patch, crop_start(patch, size, rng, membrane_share), size)


def crop_start(
    patch: TrainingPatch,
    size: tuple[int, int, int],
    rng: np.random.Generator,
    membrane_share: float = 1 / 3,
) -> np.ndarray:
    """The first voxel ``(z, y, x)`` of the crop :func:`sample_crop` cuts, drawing from
    ``rng`` exactly what it draws: a caller may skip crops of a seeded stream (another
    process's share of a batch) without cutting them."""
    if len(patch.membrane) and rng.random() < membrane_share:
        centre = patch.voxel_in(patch.membrane, rng, lambda labels: labels == MEMBRANE)
    elif len(patch.annotated):
        centre = patch.voxel_in(patch.annotated, rng, lambda labels: labels != IGNORE)
    else:
        centre = np.array([rng.integers(0, n) for n in patch.labels.shape])
    shape = np.array(patch.labels.shape)
    # Keep the crop inside the patch where the patch is big enough.
    return np.clip(centre - np.array(size) // 2, 0, np.maximum(shape - np.array(size), 0))


def cut_crop(
    patch: TrainingPatch, start: np.ndarray, size: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Image (float32) and labels (uint8) ``size`` ``(z, y, x)`` from ``start`` on; what
    lies outside the patch is padded with 0 and ignore."""
    shape = np.array(patch.labels.shape)
    stop = np.minimum(start + np.array(size), shape)
    window = tuple(slice(a, b) for a, b in zip(start, stop))
    image = np.zeros(size, np.float32)
    labels = np.full(size, IGNORE, np.uint8)
    local = tuple(slice(0, b - a) for a, b in zip(start, stop))
    image[local] = patch.image[window]
    labels[local] = patch.labels[window]
    return image, labels


def load_split(
    train_dir: Path,
    val_dir: Path | None,
    val_fraction: float,
    seed: int,
    split: dict | None,
    normalisation: str = NORMALISATION,
    pixel_size: float | None = None,
    given_pixel_size: float | None = None,
):
    """Training and validation patches, and the split that names them.

    ``split`` (names, from a saved run) wins over ``val_dir`` and ``val_fraction``, so a
    resumed run sees the same patches. Without ``val_dir``, ``val_fraction`` of the pairs is
    held out, chosen with ``seed``. Images are normalised by ``normalisation`` with the
    statistics of the tomogram each patch came from, as ``segment`` will normalise it;
    patches without that record are normalised by their own, with a warning. Patches at
    another voxel size than ``pixel_size`` are resampled to it, with a warning (see
    :func:`load_training_pairs`).
    """
    pairs = find_training_pairs(train_dir)
    if split is not None:
        val_pairs = find_training_pairs(Path(split["val_dir"])) if split["val_dir"] else pairs
        by_name = {p[0]: p for p in pairs}
        val_by_name = {p[0]: p for p in val_pairs}
        missing = [n for n in split["train"] if n not in by_name]
        missing += [n for n in split["val"] if n not in val_by_name]
        if missing:
            raise InputError(
                f"{train_dir}: the saved run's patch {missing[0]} is missing; resume needs "
                "the same training folder"
            )
        train_pairs = [by_name[n] for n in split["train"]]
        val_pairs = [val_by_name[n] for n in split["val"]]
    elif val_dir is not None:
        train_pairs, val_pairs = pairs, find_training_pairs(val_dir)
    else:
        train_pairs, val_pairs = split_validation(pairs, val_fraction, np.random.default_rng(seed))
    if not train_pairs:
        raise InputError(f"{train_dir}: no patch left for training; lower --val-fraction")
    recorded = recorded_statistics(train_dir)
    val_source = val_dir if val_dir is not None else (split or {}).get("val_dir")
    val_recorded = recorded_statistics(Path(val_source)) if val_source else recorded
    moved: list[tuple[str, tuple[int, ...]]] = []
    sizes = (pixel_size, given_pixel_size, moved)
    train_patches = load_training_pairs(train_pairs, normalisation, recorded, *sizes)
    val_patches = load_training_pairs(val_pairs, normalisation, val_recorded, *sizes)
    if moved:
        _warn(
            f"{len(moved)} patch(es) (e.g. {moved[0][0]}) are at another voxel size than "
            f"the network's {pixel_size:g} Å: resampled to it (e.g. to "
            f"{'x'.join(map(str, moved[0][1][::-1]))} voxels, x,y,z) for training"
        )
    unrecorded = [p[0] for p in train_pairs if normalisation not in recorded.get(p[0], {})]
    unrecorded += [p[0] for p in val_pairs if normalisation not in val_recorded.get(p[0], {})]
    if unrecorded:
        _warn(
            f"{len(unrecorded)} of {len(train_pairs) + len(val_pairs)} patch(es) (e.g. "
            f"{unrecorded[0]}) carry no record of their tomogram's intensity statistics "
            "(merge_summary.json from an extraction manifest): each is normalised by its "
            "own, which segment, normalising whole tomograms, will not match exactly"
        )
    if not any(len(p.annotated) for p in train_patches):
        raise InputError(f"{train_dir}: no training patch has an annotated (non-ignore) voxel")
    if not val_patches:
        _warn("no validation patches: best.pt is not written; last.pt is the result")
    elif not any(len(p.membrane) for p in val_patches):
        _warn("the validation patches hold no membrane voxel: their Dice says little")
    split = {
        "val_fraction": split["val_fraction"] if split else val_fraction,
        "train": [p.name for p in train_patches],
        "val": [p.name for p in val_patches],
        "val_dir": str(Path(val_dir).resolve())
        if val_dir is not None
        else (split["val_dir"] if split else None),
    }
    return train_patches, val_patches, split


def _warn(message: str) -> None:
    warnings.warn(message, PatchCorrectionsWarning, stacklevel=3)
