"""The class prior a fine-tuning run trains toward: the tomogram's, not the patches'.

Patches are chosen where the network is wrong, and its errors are mostly missed membrane,
so corrected patches hold more membrane than the tomogram (a fifth to two fifths against
a tenth, ``benchmarks/RESULTS.md``). Trained on them as they are, the network learns that
membrane is common and calls it in plain background elsewhere. So the loss sees the
network's logits shifted by δ = logit(the patches' membrane share) − logit(the tomogram's
share) (logit adjustment): the network fits the patches' labels while its own logits keep
the tomogram's prior, and ``segment`` uses them unshifted.

The tomogram's share is not known; the corrections tell how far the segmentation the
patches were cut from is off: within the voxels that train, the membrane after the merge
over the membrane before it. That ratio times the segmentation's membrane share over the
whole tomogram (recorded by ``extract_patches``) estimates the tomogram's share; it equals
the segmentation's share × its precision / its recall inside the patches. Everything comes
from the merge summary (``membrane``, ``base_membrane``, ``annotated`` and
``segmentation_membrane_share`` of each row): nothing but what the user corrected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..io.summary import summary_path, summary_rows

CLASS_PRIORS = ("tomogram", "patches")
"""``tomogram``: train toward the tomogram's estimated membrane share; ``patches``: the
patches' own (no shift)."""
MAX_SHIFT = 2.0
"""The largest |δ| applied (a factor of 7.4 in the odds of membrane); a larger estimate
is clipped to it."""


@dataclass(frozen=True)
class PriorShift:
    """The shift a run's loss applies, and what it came from."""

    delta: float
    patch_share: float
    """Membrane share of the voxels that train."""
    tomogram_share: float
    """The tomograms' membrane share the corrections imply."""
    predicted_share: float
    """The segmentations' membrane share over the whole tomograms (annotated-weighted)."""

    def describe(self) -> str:
        return (
            f"training toward the tomograms' membrane share: {self.patch_share:.3f} of the "
            f"patches' trained voxels are membrane, the corrections imply "
            f"{self.tomogram_share:.3f} for the tomograms (their segmentation: "
            f"{self.predicted_share:.3f}), so the loss shifts the logits by {self.delta:+.2f} "
            "(--class-prior patches trains on the patches' own share)"
        )


def prior_shift(rows: list[dict]) -> PriorShift | str:
    """The shift toward the tomograms' membrane share, from the merge summary ``rows`` of
    the patches that train; or why there is none, as a phrase."""
    counts = [_counts(r) for r in rows]
    if not counts or None in counts:
        return (
            "the merge summary does not record the membrane of every patch and of its "
            "segmentation (patches extracted or merged by an older version, or simulated)"
        )
    annotated, membrane, base, weighted = (sum(values) for values in zip(*counts))
    if not membrane or not base or membrane == annotated:
        return "the patches' trained voxels hold no membrane, or no background, before or after"
    predicted = weighted / annotated
    patch_share = membrane / annotated
    tomogram_share = min(predicted * membrane / base, 1 - 1e-6)
    if tomogram_share <= 0:
        return "the segmentations the patches were cut from hold no membrane"
    delta = _logit(patch_share) - _logit(tomogram_share)
    return PriorShift(
        delta=max(-MAX_SHIFT, min(MAX_SHIFT, delta)),
        patch_share=patch_share,
        tomogram_share=tomogram_share,
        predicted_share=predicted,
    )


def summary_prior_shift(train_dir: Path, names: list[str]) -> PriorShift | str:
    """:func:`prior_shift` of the patches ``names`` from ``train_dir``'s merge summary."""
    rows = summary_rows(summary_path(train_dir), "the patches' own class prior is trained")
    return prior_shift([rows.get(name, {}) for name in names])


def _counts(row: dict) -> tuple[int, int, int, float] | None:
    """A row's annotated voxels, membrane after and before the merge, and annotated ×
    its segmentation's share; ``None`` where one is not recorded."""
    values = [row.get(k) for k in ("annotated", "membrane", "base_membrane")]
    share = row.get("segmentation_membrane_share")
    if not all(isinstance(v, int) and v >= 0 for v in values):
        return None
    if not isinstance(share, (int, float)) or not 0 <= share <= 1:
        return None
    annotated, membrane, base = values
    return annotated, membrane, base, annotated * float(share)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))
