"""Training and validation patches read from training folders (``merge_corrections``'s, or
MemBrain-seg's as they are: see :func:`patch_corrections.io.patch_folders.find_training_pairs`),
checked, resampled to the network's pixel size and normalised as the tomograms they came
from will be when segmented; split into training and validation patches."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..constants import NORMALISATION
from ..errors import InputError, warn
from ..io.patch_folders import find_training_pairs
from ..io.summary import recorded_statistics
from ..io.volumes import read_volume
from ..labels.corrections import require_label_values
from .data import TrainingPatch

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
            from ..inference.rescale import resample_image, resample_labels

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
        warn(
            f"{len(moved)} patch(es) (e.g. {moved[0][0]}) are at another voxel size than "
            f"the network's {pixel_size:g} Å: resampled to it (e.g. to "
            f"{'x'.join(map(str, moved[0][1][::-1]))} voxels, x,y,z) for training"
        )
    unrecorded = [p[0] for p in train_pairs if normalisation not in recorded.get(p[0], {})]
    unrecorded += [p[0] for p in val_pairs if normalisation not in val_recorded.get(p[0], {})]
    if unrecorded:
        warn(
            f"{len(unrecorded)} of {len(train_pairs) + len(val_pairs)} patch(es) (e.g. "
            f"{unrecorded[0]}) carry no record of their tomogram's intensity statistics "
            "(merge_summary.json from an extraction manifest): each is normalised by its "
            "own, which segment, normalising whole tomograms, will not match exactly"
        )
    if not any(len(p.annotated) for p in train_patches):
        raise InputError(f"{train_dir}: no training patch has an annotated (non-ignore) voxel")
    asked = (split["val_fraction"] if split else val_fraction) > 0 or val_dir is not None
    if not val_patches and asked:  # none asked for: nothing to say
        warn("no validation patches: best.pt is not written; last.pt is the result")
    elif val_patches and not any(len(p.membrane) for p in val_patches):
        warn("the validation patches hold no membrane voxel: their Dice says little")
    split = {
        "train_dir": str(Path(train_dir).resolve()),
        "val_fraction": split["val_fraction"] if split else val_fraction,
        "train": [p.name for p in train_patches],
        "val": [p.name for p in val_patches],
        "val_dir": str(Path(val_dir).resolve())
        if val_dir is not None
        else (split["val_dir"] if split else None),
    }
    return train_patches, val_patches, split


def shared_pixel_size(train_dir: Path, patches: list[TrainingPatch]) -> float | None:
    """The pixel size the ``patches`` share (where known), for a network that records
    none; with several, a warning and ``None``."""
    sizes = {p.pixel_size for p in patches}
    if len(sizes) > 1:
        warn(
            f"{train_dir}: patches at different voxel sizes "
            f"({', '.join(f'{v:g}' for v in sorted(sizes, key=str))} Å) and no network "
            "pixel size to resample them to: the checkpoint records none"
        )
    return sizes.pop() if len(sizes) == 1 else None
