"""Sliding-window inference over whole tomograms, as ``membrain segment`` does it: one
pass of the network over a volume, its windows' logits blended into one volume of logits.

Windows of ``window`` voxels overlap by ``overlap`` (MONAI's window grid); each window's
logits are blended with MONAI's Gaussian importance map (sigma an eighth of the window,
clamped below at 1e-3). An axis shorter than a window is padded with 0 (the normalised
mean), half before and half after, and the padding is cropped from the result. A pass may
run over the volume flipped (test-time augmentation, :mod:`.probabilities`): padding and
window grid then follow the flip, and the logits are flipped back.

A pass processes one row of windows (along z) at a time: only two slabs of ``window`` z
slices are held in float32 (the weighted logits and the weights), so a tomogram never
needs two full float32 copies in memory.

The two slabs live where the network's logits come out: a ``predict`` that returns a torch
tensor on a GPU has its windows blended on the GPU, and the finished slices of each row of
windows are handed on there, a few at a time. Nothing in a row waits for the GPU, so the
host reads and normalises the next windows while the GPU runs the last ones.

Arrays are ``(z, y, x)``.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..io.geometry import Index3

ReadBlock = Callable[[Index3, Index3], np.ndarray]
YIELD_SLICES = 8
"""Finished z slices are handed on this many at a time (no slab-sized temporary)."""
READERS = max(1, min(4, os.cpu_count() or 1))
"""Threads that read and normalise windows ahead of the network."""
Predict = Callable[[Any], Any]
"""Maps a batch of normalised windows ``(b, w, w, w)`` float32 (a NumPy array, or what
``prepare`` made of it) to logits of the same shape: a NumPy array, or a torch tensor on the
device the windows are blended on."""
Prepare = Callable[[np.ndarray], Any]
"""Run by the reading threads on each batch of windows before ``predict`` gets it (e.g. to
copy it into pinned memory, from which a GPU copies without stopping the host)."""
SIGMA_SCALE = 0.125
MIN_IMPORTANCE = 1e-3


def gaussian_importance(window: int) -> np.ndarray:
    """Blending weights of a cubic window ``(w, w, w)`` float32: a Gaussian of sigma
    ``w / 8`` centred on the window, clamped below at 1e-3 (MONAI's ``gaussian`` mode)."""
    x = np.arange(window, dtype=np.float32) - np.float32((window - 1) / 2)
    sigma = np.float32(SIGMA_SCALE * window)
    profile = np.exp(x**2 / (-2 * sigma**2))
    weights = profile[:, None, None] * profile[None, :, None] * profile[None, None, :]
    return np.maximum(weights, max(float(weights.min()), MIN_IMPORTANCE))


def window_starts(length: int, window: int, overlap: float) -> list[int]:
    """Start indices of windows covering ``[0, length)``; the last one ends at ``length``."""
    if length <= window:
        return [0]
    step = max(1, int(window * (1 - overlap)))
    starts = list(range(0, length - window, step))
    return [*starts, length - window]


def windows_count(shape: Index3, window: int, overlap: float) -> int:
    """How many windows one pass of ``sliding_window`` runs over a volume of ``shape``."""
    return int(np.prod([len(window_starts(max(n, window), window, overlap)) for n in shape]))


def blended_logits(
    read_block: ReadBlock,
    shape: Index3,
    predict: Predict,
    window: int,
    overlap: float,
    batch_size: int,
    flip: tuple[int, ...] = (),
    on_window: Callable[[int], None] | None = None,
    prepare: Prepare | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """One pass over the volume flipped along ``flip`` (axes of ``(z, y, x)``): the
    blended logits, flipped back, as ``(z0, slab)`` pieces that cover ``[0, z)`` once (in
    descending z when ``flip`` holds axis 0); NumPy arrays, or torch tensors on the device
    where ``predict``'s logits are."""
    if not flip:
        yield from _blended_pass(
            read_block, shape, predict, window, overlap, batch_size, on_window, prepare
        )
        return

    def read_flipped(start: Index3, stop: Index3) -> np.ndarray:
        mirrored_start = [
            n - b if a in flip else s for a, (s, b, n) in enumerate(zip(start, stop, shape))
        ]
        mirrored_stop = [
            n - s if a in flip else b for a, (s, b, n) in enumerate(zip(start, stop, shape))
        ]
        return np.ascontiguousarray(
            np.flip(read_block(tuple(mirrored_start), tuple(mirrored_stop)), flip)
        )

    for z0, slab in _blended_pass(
        read_flipped, shape, predict, window, overlap, batch_size, on_window, prepare
    ):
        if 0 in flip:
            z0 = shape[0] - z0 - len(slab)
        yield z0, _flip(slab, flip)


def _blended_pass(
    read_block: ReadBlock,
    shape: Index3,
    predict: Predict,
    window: int,
    overlap: float,
    batch_size: int,
    on_window: Callable[[int], None] | None,
    prepare: Prepare | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Blended logits of one unflipped pass, ``(z0, slab)`` in z order, where the logits
    are (see :func:`blended_logits`)."""
    size = tuple(max(n, window) for n in shape)  # padded volume
    before = tuple((s - n) // 2 for s, n in zip(size, shape))
    _, sy, sx = size
    importance = gaussian_importance(window)
    z_starts = window_starts(size[0], window, overlap)
    yx_starts = list(
        itertools.product(window_starts(sy, window, overlap), window_starts(sx, window, overlap))
    )
    # Each row of windows (one z start) in batches of corners (y, x).
    row = [yx_starts[first : first + batch_size] for first in range(0, len(yx_starts), batch_size)]
    batches = [(z0, corners) for z0 in z_starts for corners in row]

    def read_batch(batch: tuple[int, list]) -> Any:
        z0, corners = batch
        windows = np.stack(
            [_padded_window(read_block, shape, before, window, (z0, y0, x0)) for y0, x0 in corners]
        )
        return windows if prepare is None else prepare(windows)

    read_ahead = _prefetched(read_batch, batches)
    try:
        sums = None  # weighted logits and weights, made like the first logits
        done = before[0]  # padded z slices already yielded (the padding is never yielded)
        for k, z0 in enumerate(z_starts):
            for corners in row:
                logits = _float32(predict(next(read_ahead)))
                if sums is None:
                    sums = _blending_arrays(logits, (window, sy, sx), importance)
                numerator, weights, importance = sums
                for (y0, x0), values in zip(corners, logits):
                    numerator[:, y0 : y0 + window, x0 : x0 + window] += values * importance
                    weights[:, y0 : y0 + window, x0 : x0 + window] += importance
                if on_window is not None:
                    on_window(len(corners))
            # Slices before the next row of windows get no more contributions.
            final = (z_starts[k + 1] if k + 1 < len(z_starts) else z0 + window) - z0
            end = min(z0 + final, before[0] + shape[0])
            yield from _finished_slices(sums, z0, done, end, before, shape)
            done = max(done, end)
            _shift(sums, final, window)
    finally:
        read_ahead.close()


def _padded_window(
    read_block: ReadBlock, shape: Index3, before: Index3, window: int, corner: Index3
) -> np.ndarray:
    """The window from ``corner`` on, in the coordinates of the volume padded by
    ``before`` voxels (the volume of ``shape`` starts there): read, and padded with 0."""
    start = [max(a - b, 0) for a, b in zip(corner, before)]
    stop = [min(a + window - b, n) for a, b, n in zip(corner, before, shape)]
    block = read_block(tuple(start), tuple(stop))  # type: ignore[arg-type]
    if block.shape == (window,) * 3:
        return block
    padded = np.zeros((window,) * 3, np.float32)
    at = [s + b - a for s, b, a in zip(start, before, corner)]
    padded[tuple(slice(a, a + n) for a, n in zip(at, block.shape))] = block
    return padded


def _finished_slices(sums, z0: int, done: int, end: int, before: Index3, shape: Index3):
    """The blended logits of padded slices ``done .. end`` (the row of windows at ``z0``
    is their last contribution), cropped to the volume, a few slices at a time: no
    slab-sized temporary."""
    numerator, weights, _ = sums
    inside = (slice(before[1], before[1] + shape[1]), slice(before[2], before[2] + shape[2]))
    for first in range(done, end, YIELD_SLICES):
        rows = slice(first - z0, min(first + YIELD_SLICES, end) - z0)
        yield (
            first - before[0],
            numerator[rows][:, inside[0], inside[1]] / weights[rows][:, inside[0], inside[1]],
        )


def _shift(sums, final: int, window: int) -> None:
    """Shift both sums by ``final`` slices towards the start, slice by slice (no full-size
    copy), zeroing what is left at the end."""
    numerator, weights, _ = sums
    for i in range(window - final):
        numerator[i] = numerator[i + final]
        weights[i] = weights[i + final]
    numerator[window - final :] = 0
    weights[window - final :] = 0


def _prefetched(read: Callable[[Any], Any], items: list) -> Iterator[Any]:
    """``read(item)`` for each of ``items`` in order, done by :data:`READERS` threads up to
    twice as many items ahead: the host reads and normalises the next windows while the
    network runs. Readers must allow reads from several threads (this package's do)."""
    with ThreadPoolExecutor(READERS, thread_name_prefix="read-windows") as pool:
        pending: deque = deque()
        upcoming = iter(items)
        try:
            for item in itertools.islice(upcoming, 2 * READERS):
                pending.append(pool.submit(read, item))
            while pending:
                done = pending.popleft().result()
                for item in itertools.islice(upcoming, 1):
                    pending.append(pool.submit(read, item))
                yield done
        finally:
            for future in pending:
                future.cancel()


def _float32(logits):
    """Logits as float32, NumPy or torch alike (no copy when they already are)."""
    if isinstance(logits, np.ndarray):
        return logits.astype(np.float32, copy=False)
    return logits.float()


def _blending_arrays(logits, shape: Index3, importance: np.ndarray):
    """Zeroed weighted-logit and weight slabs of ``shape`` and the importance map, as the
    same kind of array as ``logits`` (a torch tensor lands on their device)."""
    if isinstance(logits, np.ndarray):
        return np.zeros(shape, np.float32), np.zeros(shape, np.float32), importance
    return (
        logits.new_zeros(shape),
        logits.new_zeros(shape),
        logits.new_tensor(importance),
    )


def _flip(values, axes: tuple[int, ...]):
    """``values`` reversed along ``axes``, NumPy or torch alike."""
    if isinstance(values, np.ndarray):
        return np.flip(values, axes)
    return values.flip(axes)


def to_host(values) -> np.ndarray:
    """A NumPy array of ``values`` (a torch tensor is copied back from its device)."""
    return values if isinstance(values, np.ndarray) else values.cpu().numpy()
