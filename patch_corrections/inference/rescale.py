"""Windows resampled to the network's pixel size and back, as ``membrain segment
--rescale-patches`` does it.

The sliding window then runs on the tomogram's own grid with windows of the size that
covers the network's window in Å; each window is resampled to the network's window in
Fourier space (zero-padded or cropped spectrum, no amplitude correction), and the logits
are resampled back trilinearly. Tensors are ``(batch, channel, z, y, x)``.

Training patches at another pixel size than the network's are resampled the same way
before training (:func:`resample_image`, labels by nearest neighbour).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F


def grid_window(window: int, pixel_size: float, network_pixel_size: float) -> int:
    """The edge, in the tomogram's voxels, of a window that spans ``window`` network
    voxels: rounded half to even, then up to the next even number."""
    edge = round(window * network_pixel_size / pixel_size)
    return edge + edge % 2


def fourier_resize(volume: torch.Tensor, edge: int) -> torch.Tensor:
    """A cubic ``(n, n, n)`` real volume resampled to ``(edge, edge, edge)`` by cropping or
    zero-padding its centred spectrum; values are not rescaled for the change in size."""
    size = volume.shape[0]
    if size == edge:
        return volume
    spectrum = torch.fft.fftshift(torch.fft.fftn(volume))
    if size > edge:
        start = (size - edge) // 2
        spectrum = spectrum[start : start + edge, start : start + edge, start : start + edge]
    else:
        pad = (edge - size) // 2
        spectrum = F.pad(spectrum, [pad] * 6)
    return torch.real(torch.fft.ifftn(torch.fft.ifftshift(spectrum)))


def rescaled(network_logits, edge: int):
    """Wrap ``network_logits`` (windows ``(b, 1, e, e, e)`` at the network's pixel size
    to logits) so it takes windows of any cubic size: each is resampled to ``edge`` before
    the network and its logits trilinearly back to the window's size."""

    def logits(windows: torch.Tensor) -> torch.Tensor:
        size = windows.shape[2:]
        if size[0] == edge:
            return network_logits(windows)
        resized = torch.stack([fourier_resize(w[0], edge)[None] for w in windows])
        out = network_logits(resized).float()
        return F.interpolate(out, size=tuple(size), mode="trilinear", align_corners=False)

    return logits


def resample_image(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A real ``(z, y, x)`` image resampled to ``shape`` by cropping or zero-padding its
    centred spectrum, as :func:`fourier_resize` does, but for any shape and with the values
    kept at their scale (the spectrum is rescaled by the change in voxel count); float32."""
    if tuple(image.shape) == tuple(shape):
        return image.astype(np.float32, copy=False)
    spectrum = np.fft.fftshift(np.fft.fftn(image.astype(np.float64)))
    for axis, (size, edge) in enumerate(zip(image.shape, shape)):
        if size > edge:
            start = size // 2 - edge // 2  # the zero frequency stays at the centre
            spectrum = np.take(spectrum, range(start, start + edge), axis=axis)
        elif size < edge:
            before = edge // 2 - size // 2
            padding = [(0, 0)] * spectrum.ndim
            padding[axis] = (before, edge - size - before)
            spectrum = np.pad(spectrum, padding)
    resampled = np.real(np.fft.ifftn(np.fft.ifftshift(spectrum)))
    resampled *= np.prod(shape) / np.prod(image.shape)
    return resampled.astype(np.float32)


def resample_labels(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Labels resampled to ``shape`` by nearest neighbour (each output voxel takes the
    label under its centre), so values, ignore included, stay as they are."""
    index = np.ix_(
        *[
            np.minimum(((np.arange(edge) + 0.5) * size / edge).astype(np.intp), size - 1)
            for size, edge in zip(labels.shape, shape)
        ]
    )
    return labels[index]
