"""Is this segmentation a density map? The check that refuses a tomogram (or a copy of it
in other units) given where a segmentation belongs, before anything is written.

Binary masks, probabilities and maps of few distinct values always pass; values beyond
[0, 1] with many levels are refused when most voxels would be membrane or when they follow
the tomogram's values closely. Blocks are read through readers' ``read_block``; arrays
are ``(z, y, x)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.geometry import Index3
from ..io.readers import VolumeReader
from ..io.volumes import closing_reader
from .patches import ValueRange

DENSITY_MIN_DISTINCT = 32
"""A segmentation with fewer distinct values than this in every patch (binary masks, a few
classes, a score map of few levels) is never taken for a tomogram."""
DENSITY_MEMBRANE_SHARE = 0.4
"""Share of the patches' voxels above 0 from which values beyond [0, 1] (read as label
values or scores) are taken for a density map: a segmentation marks far fewer voxels as
membrane, a tomogram's densities lie around their mean (about half above 0) or all above 0."""
DENSITY_CORRELATION = 0.9
"""Correlation with the tomogram's values in the patches from which the segmentation is
taken for the tomogram itself, or a copy of it in other units (a network's scores follow
the density far more loosely: -0.63 on the sample data)."""
_SAMPLE_VOXELS = 1 << 18
"""At most this many voxels of a patch are sampled to count distinct values and correlate."""


@dataclass(frozen=True)
class Survey:
    """What the segmentation's values in the patches say, before anything is written."""

    values: ValueRange
    finite: int
    """Finite voxels in the patches."""
    above_zero: int
    """Voxels in the patches with a value above 0."""
    distinct: int
    """Distinct values in the patch that has most (counted on a sample of its voxels)."""

    @classmethod
    def of(cls, reader: VolumeReader, blocks: list[tuple[Index3, Index3]]) -> Survey:
        values, finite, above, distinct = ValueRange(0.0, 0.0, True), 0, 0, 0
        for start, stop in blocks:
            block = reader.read_block(start, stop)
            values = values | ValueRange.of(block)
            finite += (
                int(np.count_nonzero(np.isfinite(block)))
                if block.dtype.kind == "f"
                else block.size
            )
            above += int(np.count_nonzero(block > 0))
            distinct = max(distinct, len(np.unique(_sample(block))))
        return cls(values, finite, above, distinct)


def _sample(block: np.ndarray) -> np.ndarray:
    """Evenly spaced voxels of ``block``, flattened: all of them, or about ``_SAMPLE_VOXELS``."""
    return block.reshape(-1)[:: max(1, block.size // _SAMPLE_VOXELS)]


def correlation(
    seg_reader: VolumeReader, image_reader: VolumeReader, blocks: list[tuple[Index3, Index3]]
) -> float:
    """Pearson correlation of the segmentation's and the tomogram's values over samples of
    the patches; 0 where either is constant."""
    n = sum_s = sum_t = sum_ss = sum_tt = sum_st = 0.0
    shift: tuple[float, float] | None = None
    for start, stop in blocks:
        s = _sample(seg_reader.read_block(start, stop)).astype(np.float64)
        t = _sample(image_reader.read_block(start, stop)).astype(np.float64)
        finite = np.isfinite(s) & np.isfinite(t)
        s, t = s[finite], t[finite]
        if s.size == 0:
            continue
        if shift is None:  # raw densities lie far from 0: keep the sums of squares exact
            shift = (float(s.mean()), float(t.mean()))
        s, t = s - shift[0], t - shift[1]
        n += s.size
        sum_s, sum_t = sum_s + s.sum(), sum_t + t.sum()
        sum_ss, sum_tt, sum_st = sum_ss + s @ s, sum_tt + t @ t, sum_st + s @ t
    if n == 0:
        return 0.0
    var_s, var_t = sum_ss - sum_s**2 / n, sum_tt - sum_t**2 / n
    if var_s <= 0 or var_t <= 0:
        return 0.0
    return float((sum_st - sum_s * sum_t / n) / np.sqrt(var_s * var_t))


THRESHOLD_ADVICE = (
    "Give the network's segmentation or scoremap (segment writes both), or pass "
    "--threshold to binarise these values anyway"
)


def refuse_density(
    segmentation: Path,
    survey: Survey,
    correlation: Callable[[], float],
    advice: str = THRESHOLD_ADVICE,
) -> None:
    """Refuse a segmentation whose values look like a tomogram's densities: an
    ``InputError`` naming what gave it away, and how to go on (``advice``).

    Binary masks and probabilities (values within [0, 1]) and maps of few distinct values
    (label classes) always pass; ``correlation()`` is only computed for the rest.
    """
    values = survey.values
    if (values.low >= 0 and values.high <= 1) or survey.distinct < DENSITY_MIN_DISTINCT:
        return
    share = survey.above_zero / max(survey.finite, 1)
    if share >= DENSITY_MEMBRANE_SHARE:
        clue = f"{share:.0%} of the patches' voxels would be membrane (values above 0)"
    else:
        r = correlation()
        if abs(r) < DENSITY_CORRELATION:
            return
        clue = f"its values follow the tomogram's (correlation {r:.2f})"
    raise InputError(
        f"{segmentation}: looks like a tomogram (density values), not a segmentation: "
        f"at least {survey.distinct} distinct values, and {clue}. {advice}"
    )


def refuse_density_of(
    reader: VolumeReader, blocks: list[tuple[Index3, Index3]], tomograms: set[str], advice: str
) -> None:
    """:func:`refuse_density` for the segmentation ``reader`` reads, over ``blocks``,
    correlated with the first of ``tomograms`` (paths) that can be read here and has its
    shape (none: the share of voxels above 0 decides alone)."""
    survey = Survey.of(reader, blocks)

    def against_tomogram() -> float:
        for source in sorted(tomograms):
            try:
                with closing_reader(Path(source)) as image:
                    if image.info.shape == reader.info.shape:
                        return correlation(reader, image, blocks)
            except (InputError, OSError):
                continue
        return 0.0

    refuse_density(reader.info.path, survey, against_tomogram, advice)
