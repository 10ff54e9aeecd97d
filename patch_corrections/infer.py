"""Sliding-window inference over whole tomograms.

Windows of ``window`` voxels overlap by ``overlap``; each window's probabilities are blended
with a Gaussian importance map (centre voxels count most), optionally averaged over the 8
flips of the window (test-time augmentation). The volume is processed one row of windows
(along z) at a time: only a slab of ``window`` z slices is held in float32, so a tomogram
never needs two full float32 copies in memory.

Arrays are ``(z, y, x)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import numpy as np

Index3 = tuple[int, int, int]
_YIELD_SLICES = 8
Predict = Callable[[np.ndarray], np.ndarray]
"""Maps a batch of normalised windows ``(b, w, w, w)`` float32 to logits of the same shape."""


def gaussian_profile(n: int, sigma_scale: float = 1 / 8) -> np.ndarray:
    """1D Gaussian weights of a window edge, peaking at 1 in the centre, never below 0.1."""
    x = np.arange(n, dtype=np.float64) - (n - 1) / 2
    profile = np.exp(-(x**2) / (2 * (n * sigma_scale) ** 2))
    return np.maximum(profile / profile.max(), 0.1)


def gaussian_importance(size: Index3, sigma_scale: float = 1 / 8) -> np.ndarray:
    """Separable Gaussian weights of a window ``size``, peaking at 1 in the centre, float32.

    Because it is the product of three 1D profiles, so is the sum of all windows' weights
    over a volume, which therefore needs no array of its own.
    """
    z, y, x = (gaussian_profile(n, sigma_scale) for n in size)
    return (z[:, None, None] * y[None, :, None] * x[None, None, :]).astype(np.float32)


def _weight_sums(length: int, window: int, starts: list[int]) -> np.ndarray:
    """Sum over windows of the 1D profile along one axis, ``(length,)`` float64."""
    total = np.zeros(max(length, window))
    profile = gaussian_profile(window)
    for start in starts:
        total[start : start + window] += profile
    return total


def window_starts(length: int, window: int, overlap: float) -> list[int]:
    """Start indices of windows covering ``[0, length)``; the last one ends at ``length``."""
    if length <= window:
        return [0]
    step = max(1, round(window * (1 - overlap)))
    starts = list(range(0, length - window, step))
    return [*starts, length - window]


def _flips() -> list[tuple[int, ...]]:
    return [
        tuple(a for a, on in zip((1, 2, 3), bits) if on)
        for bits in itertools.product((False, True), repeat=3)
    ]


def predict_probabilities(windows: np.ndarray, predict: Predict, tta: bool) -> np.ndarray:
    """Membrane probabilities of a batch of windows, averaged over 8 flips with ``tta``."""
    flips = _flips() if tta else [()]
    total = np.zeros(windows.shape, np.float32)
    for axes in flips:
        flipped = np.flip(windows, axes) if axes else windows
        logits = predict(np.ascontiguousarray(flipped)).astype(np.float32)
        probability = 0.5 * (1 + np.tanh(0.5 * logits))  # the logistic, without overflow
        total += np.flip(probability, axes) if axes else probability
    return total / len(flips)


def sliding_window(
    read_block: Callable[[Index3, Index3], np.ndarray],
    shape: Index3,
    predict: Predict,
    window: int,
    overlap: float = 0.5,
    batch_size: int = 1,
    tta: bool = False,
    on_window: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Predict a whole volume; yields ``(z0, probabilities)`` slabs in z order.

    Parameters
    ----------
    read_block
        ``read_block(start, stop)`` returns the normalised volume's block ``[start, stop)``
        ``(z, y, x)`` as float32 (inside the volume).
    shape
        Volume shape ``(z, y, x)``. Along an axis shorter than a window, windows are padded
        with 0 (the normalised mean) and the padding is cropped from the result.
    predict
        The network, see ``Predict``.
    window
        Edge of the cubic windows.
    on_window
        Called with the number of windows just finished (progress).

    Yields
    ------
    Consecutive slabs ``(n, y, x)`` float32 of probabilities, starting at ``z0``; together
    they cover ``[0, z)`` exactly once. Windows are read one batch at a time, so besides
    the batch, memory holds one float32 array of ``window`` slices: the blending sum.
    """
    size = tuple(max(n, window) for n in shape)  # padded volume
    sz, sy, sx = size
    importance = gaussian_importance((window,) * 3)
    z_starts = window_starts(sz, window, overlap)
    y_starts, x_starts = window_starts(sy, window, overlap), window_starts(sx, window, overlap)
    yx_starts = list(itertools.product(y_starts, x_starts))
    weight_z = _weight_sums(sz, window, z_starts).astype(np.float32)
    weight_y = _weight_sums(sy, window, y_starts)[: shape[1]]
    weight_x = _weight_sums(sx, window, x_starts)[: shape[2]]
    weight_yx = (weight_y[:, None] * weight_x[None, :]).astype(np.float32)
    numerator = np.zeros((window, sy, sx), np.float32)
    done = 0  # z slices already yielded

    def read_window(z0: int, y0: int, x0: int) -> np.ndarray:
        start = (z0, y0, x0)
        stop = tuple(min(a + window, n) for a, n in zip(start, shape))
        block = read_block(start, stop)
        if block.shape == (window,) * 3:
            return block
        padded = np.zeros((window,) * 3, np.float32)
        padded[: block.shape[0], : block.shape[1], : block.shape[2]] = block
        return padded

    for k, z0 in enumerate(z_starts):
        for first in range(0, len(yx_starts), batch_size):
            chosen = yx_starts[first : first + batch_size]
            windows = np.stack([read_window(z0, y0, x0) for y0, x0 in chosen])
            probabilities = predict_probabilities(windows, predict, tta)
            for (y0, x0), probability in zip(chosen, probabilities):
                numerator[:, y0 : y0 + window, x0 : x0 + window] += probability * importance
            if on_window is not None:
                on_window(len(chosen))
        # Slices before the next row of windows get no more contributions.
        final = (z_starts[k + 1] if k + 1 < len(z_starts) else z0 + window) - z0
        end = min(z0 + final, shape[0])
        for first in range(done, end, _YIELD_SLICES):  # small pieces: no slab-sized temporary
            last = min(first + _YIELD_SLICES, end)
            piece = numerator[first - z0 : last - z0, : shape[1], : shape[2]]
            weights = weight_z[first:last, None, None] * weight_yx[None]
            yield first, piece / weights
        done = max(done, end)
        # Shift the sum by `final` slices, slice by slice (no full-size copy).
        for i in range(window - final):
            numerator[i] = numerator[i + final]
        numerator[window - final :] = 0


def windows_count(shape: Index3, window: int, overlap: float) -> int:
    """How many windows ``sliding_window`` runs over a volume of ``shape``."""
    return int(np.prod([len(window_starts(max(n, window), window, overlap)) for n in shape]))
