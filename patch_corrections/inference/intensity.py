"""Intensity normalisation: the statistics a tomogram or patch is normalised with, and
the normalisation itself, as training and ``segment`` share them.

Two normalisations exist: ours (``robust_z``: median and scaled median absolute
deviation, clipped) and MemBrain-seg's (``zscore``: mean and standard deviation). A
tomogram's statistics are estimated from an evenly spread sample, so it is never read
whole for them; ``volume_statistics`` reads every voxel, as ``membrain segment`` does.
"""

from __future__ import annotations

import math
import random

import numpy as np

from ..constants import NORMALISATION, ZSCORE
from ..errors import warn
from ..io.readers import VolumeReader

NORMALISATION_SAMPLE = 2_000_000
"""Voxels sampled, spread evenly through a tomogram, to estimate its intensity statistics
instead of reading it whole."""


def robust_statistics(values: np.ndarray) -> tuple[float, float]:
    """Centre (median) and scale (1.4826 x median absolute deviation) of ``values``.

    Falls back to the standard deviation, then 1, for near-constant data.
    """
    values = np.asarray(values, np.float32).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    centre = float(np.median(values))
    scale = 1.4826 * float(np.median(np.abs(values - centre)))
    if scale <= 1e-8:
        scale = float(values.std())
    return centre, scale if scale > 1e-8 else 1.0


def zscore_statistics(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of the finite ``values`` (1 for constant data)."""
    values = np.asarray(values, np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    deviation = float(values.std())
    return float(values.mean()), deviation if deviation > 0 else 1.0


def statistics_of(normalisation: str, values: np.ndarray) -> tuple[float, float]:
    """The centre and scale ``normalisation`` takes from ``values``."""
    return zscore_statistics(values) if normalisation == ZSCORE else robust_statistics(values)


SAMPLE_CHUNKS = 32
"""Chunks of a chunked (OME-Zarr) volume read for its sample, at least (more when 32
hold fewer voxels than the sample): a slice through it would read (and decompress) every
chunk it crosses whole."""


def spread_sample(reader: VolumeReader, count: int = NORMALISATION_SAMPLE) -> np.ndarray:
    """About ``count`` voxels spread evenly through the volume: read from 32 slices, or
    from whole chunks, fixed but spread at random, of a chunked volume (a reader with
    ``chunks``; see :data:`SAMPLE_CHUNKS`)."""
    chunks = getattr(reader, "chunks", None)
    if chunks is not None:
        return _chunk_sample(reader, chunks, count)
    nz, ny, nx = reader.info.shape
    slices = np.unique(np.linspace(0, nz - 1, min(nz, 32)).astype(int))
    stride = max(1, int(np.sqrt(ny * nx * len(slices) / count)))
    parts = [reader.read_block((z, 0, 0), (z + 1, ny, nx))[0, ::stride, ::stride] for z in slices]
    return np.concatenate([p.ravel() for p in parts])


def _chunk_sample(reader: VolumeReader, chunks, count: int) -> np.ndarray:
    shape = reader.info.shape
    grid = [math.ceil(n / c) for n, c in zip(shape, chunks)]
    total, voxels = math.prod(grid), math.prod(chunks)
    wanted = min(total, max(SAMPLE_CHUNKS, math.ceil(count / voxels)))
    step = max(1, voxels * wanted // count)  # each chunk thinned as it is read
    parts = []
    for index in sorted(random.Random(0).sample(range(total), wanted)):
        start = []
        for edge in reversed(grid):  # the chunk's place in the grid, x fastest
            index, place = divmod(index, edge)
            start.insert(0, place)
        start = [i * c for i, c in zip(start, chunks)]
        stop = [min(a + c, n) for a, c, n in zip(start, chunks, shape)]
        parts.append(reader.read_block(tuple(start), tuple(stop)).ravel()[::step].copy())
    return np.concatenate(parts)


def tomogram_statistics(reader: VolumeReader) -> dict:
    """A tomogram's intensity statistics for each normalisation, estimated from
    :func:`spread_sample` (32 slices, not the whole file), as extraction records them:
    ``{"robust_z": [centre, scale], "zscore": [mean, deviation], "sample_voxels": n}``.

    ``segment`` takes the robust ones from the same sample; for ``zscore`` it reads every
    voxel, as MemBrain-seg does, which the sample's estimate matches to a small fraction
    of a standard deviation."""
    sample = spread_sample(reader)
    return {
        NORMALISATION: list(robust_statistics(sample)),
        ZSCORE: list(zscore_statistics(sample)),
        "sample_voxels": int(sample.size),
    }


def normalise(
    image: np.ndarray,
    statistics: tuple[float, float] | None = None,
    in_place: bool = False,
    clip: bool = True,
) -> np.ndarray:
    """Z-score as float32: ``(image - centre) / scale``, clipped to ±10 with ``clip``.

    ``statistics`` default to the robust ones of ``image``; NaN becomes 0 (the centre).
    With ``in_place``, a float32 ``image`` is overwritten instead of copied.
    """
    centre, scale = statistics or robust_statistics(image)
    if in_place and image.dtype == np.float32:
        out = np.subtract(image, centre, out=image)
    else:
        out = np.subtract(image, centre, dtype=np.float32)
    out /= scale
    out[np.isnan(out)] = 0  # infinities are clipped below, or left for the caller to see
    return np.clip(out, -10, 10, out=out) if clip else out


def volume_statistics(reader: VolumeReader) -> tuple[float, float]:
    """Mean and standard deviation of every finite voxel, read slab by slab in float64."""
    nz, ny, nx = reader.info.shape
    count, total, squares = 0, 0.0, 0.0
    step = max(1, 2**24 // max(ny * nx, 1))
    for z0 in range(0, nz, step):
        block = reader.read_block((z0, 0, 0), (min(z0 + step, nz), ny, nx)).astype(np.float64)
        finite = block[np.isfinite(block)]
        count += finite.size
        total += float(finite.sum())
        squares += float(np.square(finite).sum())
    if not count:
        return 0.0, 1.0
    mean = total / count
    deviation = math.sqrt(max(squares / count - mean**2, 0.0))
    return mean, deviation if deviation > 0 else 1.0


def normalised_reader(reader: VolumeReader, normalisation: str):
    """``read_block(start, stop)`` of ``reader``'s volume normalised as a network trained
    with ``normalisation`` expects it, float32 ``(z, y, x)``: MemBrain-seg's networks learnt
    the whole tomogram's mean and deviation (:func:`volume_statistics`, unclipped), ours
    the robust statistics of a sample (clipped). NaN and infinities, warned about, are
    read as the mean."""
    sample = spread_sample(reader)
    if sample.dtype.kind == "f" and not np.isfinite(sample).all():
        warn(f"{reader.info.path}: holds NaN or infinite values; they are read as the mean")
    zscore = normalisation == ZSCORE
    statistics = volume_statistics(reader) if zscore else robust_statistics(sample)

    def read_block(start, stop) -> np.ndarray:
        block = reader.read_block(start, stop)  # a fresh array
        return normalise(block, statistics, in_place=True, clip=not zscore)

    return read_block
