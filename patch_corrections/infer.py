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


def gaussian_importance(size: Index3, sigma_scale: float = 1 / 8) -> np.ndarray:
    """Gaussian weights ``size`` peaking at the centre (max 1, never 0), float32."""
    axes = []
    for n in size:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2
        axes.append(np.exp(-(x**2) / (2 * (n * sigma_scale) ** 2)))
    weight = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    weight /= weight.max()
    return np.maximum(weight, 1e-3).astype(np.float32)


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
    read_slab: Callable[[int, int], np.ndarray],
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
    read_slab
        ``read_slab(z0, z1)`` returns the normalised volume's slices ``[z0, z1)``,
        ``(z1 - z0, y, x)`` float32.
    shape
        Volume shape ``(z, y, x)``. A volume smaller than a window is padded (with 0, the
        normalised mean) and the padding cropped from the result.
    predict
        The network, see ``Predict``.
    window
        Edge of the cubic windows.
    on_window
        Called with the number of windows just finished (progress).

    Yields
    ------
    Consecutive slabs ``(n, y, x)`` float32 of probabilities, starting at ``z0``; together
    they cover ``[0, z)`` exactly once. Besides them, memory holds three arrays of
    ``window`` slices: the normalised input and the two blending accumulators.
    """
    size = tuple(max(n, window) for n in shape)  # padded volume
    sz, sy, sx = size
    importance = gaussian_importance((window,) * 3)
    z_starts = window_starts(sz, window, overlap)
    yx_starts = list(
        itertools.product(window_starts(sy, window, overlap), window_starts(sx, window, overlap))
    )
    numerator = np.zeros((window, sy, sx), np.float32)
    weights = np.zeros((window, sy, sx), np.float32)
    done = 0  # z slices already yielded
    for k, z0 in enumerate(z_starts):
        slab = read_slab(z0, min(z0 + window, shape[0]))
        if slab.shape != (window, sy, sx):  # pad a volume smaller than a window
            padded = np.zeros((window, sy, sx), np.float32)
            padded[: slab.shape[0], : shape[1], : shape[2]] = slab
            slab = padded
        for first in range(0, len(yx_starts), batch_size):
            chosen = yx_starts[first : first + batch_size]
            windows = np.stack([slab[:, y0 : y0 + window, x0 : x0 + window] for y0, x0 in chosen])
            probabilities = predict_probabilities(windows, predict, tta)
            for (y0, x0), probability in zip(chosen, probabilities):
                numerator[:, y0 : y0 + window, x0 : x0 + window] += probability * importance
                weights[:, y0 : y0 + window, x0 : x0 + window] += importance
            if on_window is not None:
                on_window(len(chosen))
        del slab
        # Slices before the next row of windows get no more contributions.
        final = (z_starts[k + 1] if k + 1 < len(z_starts) else z0 + window) - z0
        end = min(z0 + final, shape[0])
        for first in range(done, end, _YIELD_SLICES):  # small pieces: no slab-sized temporary
            local = slice(first - z0, min(first + _YIELD_SLICES, end) - z0)
            yield (
                first,
                numerator[local, : shape[1], : shape[2]] / weights[local, : shape[1], : shape[2]],
            )
        done = max(done, end)
        # Shift the accumulators by `final` slices, slice by slice (no full-size copy).
        for i in range(window - final):
            numerator[i] = numerator[i + final]
            weights[i] = weights[i + final]
        numerator[window - final :] = 0
        weights[window - final :] = 0


def windows_count(shape: Index3, window: int, overlap: float) -> int:
    """How many windows ``sliding_window`` runs over a volume of ``shape``."""
    return int(np.prod([len(window_starts(max(n, window), window, overlap)) for n in shape]))
