"""The membrane probabilities of a whole volume: the sigmoid of one sliding-window pass's
blended logits, or, with test-time augmentation, of the mean logit of 8 passes over the
volume flipped 8 ways (MemBrain-seg's), with the variance of those passes' probabilities.

Test-time augmentation holds one float32 copy of the volume to sum the 8 passes' logits
(two more for the variance). On a GPU with room for them these sums stay in GPU memory.
:func:`probability_slabs` hands its slabs on where they were computed (on the GPU, for a
network there), so that what is made of them next is made there too;
:func:`sliding_window` and :func:`tta_with_variance` bring them to the host.

Arrays are ``(z, y, x)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..io.geometry import Index3
from .sliding_window import YIELD_SLICES, Predict, Prepare, ReadBlock, blended_logits, to_host

FLIPS = tuple(
    tuple(axis for axis, on in zip((0, 1, 2), bits) if on)
    for bits in itertools.product((False, True), repeat=3)
)
"""The 8 flips of a volume (axes of ``(z, y, x)``) that test-time augmentation averages."""
TTA_DEVICE_SHARE = 0.25
"""The test-time augmentation sums stay on the GPU when they take at most this share of its
free memory (the rest is left to the network's activations); otherwise on the host."""


def sliding_window(
    read_block: ReadBlock,
    shape: Index3,
    predict: Predict,
    window: int,
    overlap: float = 0.5,
    batch_size: int = 1,
    tta: bool = False,
    on_window: Callable[[int], None] | None = None,
    prepare: Prepare | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Predict a whole volume; yields ``(z0, probabilities)`` slabs in z order.

    Parameters
    ----------
    read_block
        ``read_block(start, stop)`` returns the normalised volume's block ``[start, stop)``
        ``(z, y, x)`` as float32 (inside the volume).
    shape
        Volume shape ``(z, y, x)``.
    predict
        The network, see ``Predict``.
    window
        Edge of the cubic windows.
    tta
        Average the logits of the 8 flipped passes (see the module's description).
    on_window
        Called with the number of windows just finished (progress).
    prepare
        See ``Prepare``; none by default.

    Yields
    ------
    Consecutive slabs ``(n, y, x)`` float32 NumPy arrays of probabilities, starting at
    ``z0``; together they cover ``[0, z)`` exactly once.
    """
    run = (read_block, shape, predict, window, overlap, batch_size)
    for z0, probabilities, _ in probability_slabs(*run, tta, False, on_window, prepare):
        yield z0, to_host(probabilities)


def tta_with_variance(
    read_block: ReadBlock,
    shape: Index3,
    predict: Predict,
    window: int,
    overlap: float = 0.5,
    batch_size: int = 1,
    on_window: Callable[[int], None] | None = None,
    variance: bool = True,
    prepare: Prepare | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """Test-time augmentation: yields ``(z0, probabilities, variance)`` slabs in z order,
    as NumPy arrays.

    The probability is the sigmoid of the 8 passes' mean logit (MemBrain-seg's); the
    variance is that of the 8 passes' probabilities, a measure of how unsure the network
    is (``None`` without ``variance``, which saves two float32 copies of the volume).
    """
    run = (read_block, shape, predict, window, overlap, batch_size)
    for z0, probabilities, spread in probability_slabs(*run, True, variance, on_window, prepare):
        yield z0, to_host(probabilities), None if spread is None else to_host(spread)


def probability_slabs(
    read_block: ReadBlock,
    shape: Index3,
    predict: Predict,
    window: int,
    overlap: float = 0.5,
    batch_size: int = 1,
    tta: bool = False,
    variance: bool = False,
    on_window: Callable[[int], None] | None = None,
    prepare: Prepare | None = None,
) -> Iterator[tuple[int, Any, Any | None]]:
    """``(z0, probabilities, variance)`` float32 slabs in z order, as the arguments of
    :func:`sliding_window` would give them but left where they were computed: NumPy
    arrays, or torch tensors on the device of ``predict``'s logits (with ``tta``, only
    when the sums fit there, see :data:`TTA_DEVICE_SHARE`). ``variance`` (with ``tta``)
    is ``None`` unless asked for."""
    run = (read_block, shape, predict, window, overlap, batch_size)
    if not tta:
        for z0, logits in blended_logits(*run, (), on_window, prepare):
            yield z0, _sigmoid(logits), None
        return
    sums = _tta_sums_of_passes(run, 3 if variance else 1, on_window, prepare)
    passes = len(FLIPS)
    for z0 in range(0, shape[0], YIELD_SLICES):
        rows = slice(z0, z0 + YIELD_SLICES)
        probabilities = _sigmoid(sums[0][rows] / passes)
        if not variance:
            yield z0, probabilities, None
            continue
        mean = sums[1][rows] / passes
        spread = sums[2][rows] / passes - mean * mean
        yield z0, probabilities, _clamped_at_zero(spread)


def _tta_sums_of_passes(run: tuple, count: int, on_window, prepare) -> list:
    """The 8 flipped passes' sums over the volume: their logits, then (``count`` 3) their
    probabilities and the squares of those."""
    shape = run[1]
    sums = None
    for flip in FLIPS:
        for z0, logits in blended_logits(*run, flip, on_window, prepare):
            if sums is None:
                sums = _tta_sums(logits, shape, count)
            if isinstance(sums[0], np.ndarray):
                logits = to_host(logits)
            rows = slice(z0, z0 + len(logits))
            sums[0][rows] += logits
            if count > 1:
                probability = _sigmoid(logits * 1)  # a copy: the logits are summed as such
                sums[1][rows] += probability
                sums[2][rows] += probability * probability
    assert sums is not None
    return sums


def _tta_sums(logits, shape: Index3, count: int) -> list:
    """``count`` zeroed float32 volumes of ``shape`` for the test-time augmentation sums: on
    the GPU that ``logits`` are on if they fit there (see :data:`TTA_DEVICE_SHARE`), else
    NumPy arrays on the host."""
    if not isinstance(logits, np.ndarray) and logits.device.type == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(logits.device)
        if count * 4 * int(np.prod(shape)) <= TTA_DEVICE_SHARE * free:
            return [logits.new_zeros(shape) for _ in range(count)]
    return [np.zeros(shape, np.float32) for _ in range(count)]


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """The logistic function, without overflow, computed in place in float32 ``logits``."""
    logits *= 0.5
    np.tanh(logits, out=logits)
    logits += 1
    logits *= 0.5
    return logits


def _sigmoid(logits):
    """:func:`sigmoid` in place, of a float32 NumPy array or torch tensor alike."""
    if isinstance(logits, np.ndarray):
        return sigmoid(logits)
    return logits.mul_(0.5).tanh_().add_(1).mul_(0.5)


def _clamped_at_zero(values):
    """``values`` with negatives (rounding's, in a variance) set to 0, in place."""
    if isinstance(values, np.ndarray):
        return np.maximum(values, 0, out=values)
    return values.clamp_(min=0)
