"""Training patches in memory and the crops a step trains on (training folders are read
by :mod:`.datasets`). Arrays are ``(z, y, x)``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..constants import IGNORE, MEMBRANE, NORMALISATION, ZSCORE
from ..errors import InputError
from ..inference.intensity import normalise, statistics_of
from ..network.distributed import SINGLE, Ranks

if TYPE_CHECKING:
    import torch

    from ..network.unet import UNetConfig
    from .config import TrainConfig

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


def batch_for_step(
    patches: list[TrainingPatch], step: int, config: TrainConfig, ranks: Ranks = SINGLE
) -> tuple[np.ndarray, np.ndarray]:
    """This rank's crops of step ``step``: image ``(b, 1, z, y, x)`` float32, labels uint8.

    The step's stream holds ``b · ranks.size`` crops, the batch of one process with all
    ranks' samples; rank ``r`` draws (without cutting) the ``r · b`` crops before its own.
    """
    rng = np.random.default_rng([config.seed, step])
    size = (config.crop_size,) * 3
    windows = []
    for _ in range((ranks.rank + 1) * config.batch_size):
        patch = patches[rng.integers(len(patches))]
        windows.append((patch, crop_start(patch, size, rng, config.membrane_centres)))
    crops = [cut_crop(patch, start, size) for patch, start in windows[-config.batch_size :]]
    return (np.stack([c[0] for c in crops])[:, None], np.stack([c[1] for c in crops])[:, None])


STEP_VALUES_PER_FEATURE = 12
"""Values a training step keeps per feature-map value, at least (activations, norms and
their gradients): measured 15-20 on a CPU for the ``small`` and ``full`` presets."""


def check_step_memory(network: UNetConfig, config: TrainConfig, device: torch.device) -> None:
    """``InputError`` when a step of ``config.batch_size`` crops of ``config.crop_size``
    needs more memory than ``device`` has free, before the first step tries."""
    from ..io.memory import require_memory
    from ..network.devices import free_memory

    crops = config.batch_size * config.crop_size**3
    value = 2 if device.type == "cuda" else 4  # autocast halves the activations on a GPU
    needed = STEP_VALUES_PER_FEATURE * value * network.feature_values(crops)
    free = free_memory(device)
    if free is not None:
        require_memory(
            needed,
            f"--batch-size {config.batch_size} with --crop-size {config.crop_size}: a "
            f"training step on {device}",
            "use a smaller --batch-size or --crop-size",
            free,
        )


def check_crop_size(crop_size: int, network: UNetConfig, patches: list[TrainingPatch]) -> None:
    """``InputError`` unless ``crop_size`` suits the ``network`` (see
    :meth:`UNetConfig.check_edge`) and fits in a training patch."""
    network.check_edge(crop_size, "--crop-size")
    largest = max(max(p.image.shape) for p in patches)
    if crop_size > largest:
        divisor = network.divisor
        fits = max(divisor, largest // divisor * divisor)
        raise InputError(
            f"--crop-size {crop_size}: larger than every training patch (the largest edge "
            f"is {largest}), so each crop would be mostly padding; use --crop-size {fits}"
        )
