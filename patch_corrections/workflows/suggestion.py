"""Suggestion: where in a tomogram a correction would teach the network most.

The network's membrane probabilities and the variance of its 8 flipped (test-time
augmentation) passes come from a segment pass with a checkpoint, or from the files an
earlier ``segment --tta --uncertainty`` wrote. Both are read one slab of z sections at a
time and reduced to sums over small cells (:mod:`patch_corrections.inference.box_scores`),
so memory holds a slab and a volume ``4³`` times smaller, besides what the segment pass
needs. Patch-sized boxes are scored from those sums, and the best that do not overlap each
other (or patches already extracted) are written as a centres file ``extract_patches``
reads, a napari points CSV and a PNG preview each.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..constants import BORDER_WIDTH, PATCH_SIZE
from ..errors import InputError, collect_warnings, warn
from ..inference.box_choice import choose, choose_spread
from ..inference.box_scores import MAX_OVERLAP, BoxScores, describe_box, score_maps
from ..io.centres import centres_tables
from ..io.geometry import Index3, as_xyz
from ..io.manifest import records_cut_from
from ..io.names import suggestion_preview, suggestion_previews, suggestion_tables
from ..io.readers import VolumeReader, orthogonal_planes
from ..io.staging import staged
from ..io.volumes import closing_reader, read_info, volume_stem
from ..labels.patches import check_fits, check_patch_size
from ..previews import suggestion_preview as preview_png
from ._common import check_out_dir, require_free, writing_into
from .events import SILENT, Listener, Progress
from .segmentation import SegmentSettings, load_predictor, output_paths, segment_one

PREVIEW_MARGIN = 0.25
"""Previews show the patch and this share of its edge around it on every side."""


@dataclass(frozen=True)
class SuggestSettings:
    """What to suggest and how.

    Attributes
    ----------
    count
        How many patch centres to suggest (fewer when fewer boxes fit without overlap).
    patch_size
        Edge of the patches ``extract_patches`` will cut, in voxels.
    border
        Width of the ignore band of those patches: only the part inside it is scored.
    max_overlap
        Largest share of a patch's volume that may lie inside another suggestion (or a
        patch of ``exclude_manifest``), of the smaller one.
    spread
        The most uncertain box of each kind of region (as many kinds as boxes, see
        :mod:`patch_corrections.inference.box_kinds`), so that the boxes represent the
        tomogram; otherwise the most uncertain boxes on membrane.
    allow_border
        Let patches cross the tomogram's border (their centre stays inside); by default
        every patch lies inside it, and a tomogram shorter than a patch along some axis is
        refused.
    threshold
        Probability above which a voxel is membrane.
    previews
        Write one PNG per suggestion (needs matplotlib).
    overwrite
        Replace earlier outputs for this tomogram in the output folder.
    network
        How the segment pass runs with a checkpoint (window, overlap, batch size,
        device…); it always runs with 8-flip TTA and its variance, at ``threshold``.
    """

    count: int = 5
    patch_size: int = PATCH_SIZE
    border: int = BORDER_WIDTH
    max_overlap: float = MAX_OVERLAP
    spread: bool = True
    allow_border: bool = False
    threshold: float = 0.5
    previews: bool = True
    overwrite: bool = False
    network: SegmentSettings = field(default_factory=SegmentSettings)

    @property
    def segment_pass(self) -> SegmentSettings:
        """How the network runs with a checkpoint: ``network``, always with 8-flip TTA and
        its variance, at ``threshold``, without components."""
        return replace(
            self.network,
            tta=True,
            uncertainty=True,
            components=False,
            threshold=self.threshold,
            overwrite=self.overwrite,
        )

    def __post_init__(self) -> None:
        if self.count < 1:
            raise InputError(f"--count must be at least 1, got {self.count}")
        check_patch_size(self.patch_size, self.border)
        if not 0 <= self.max_overlap < 1:
            raise InputError(f"--max-overlap must be in [0, 1), got {self.max_overlap}")
        if not 0 < self.threshold < 1:
            raise InputError(f"--threshold must be a probability in (0, 1), got {self.threshold}")


@dataclass(frozen=True)
class Suggestion:
    """One suggested patch.

    Attributes
    ----------
    rank
        1 for the best.
    centre_xyz
        Patch centre, 0-based voxel indices ``x, y, z``.
    score
        The rule's score (see :mod:`patch_corrections.inference.box_scores`).
    disagreement, near_threshold, membrane_share
        Means over the patch's scored part (inside its ignore band) of the per-voxel
        terms; the score is made of the first and the last (the near-threshold term is
        reported only, see :mod:`patch_corrections.inference.box_scores`).
    reason
        The same in words.
    preview
        The PNG, when written.
    """

    rank: int
    centre_xyz: tuple[int, int, int]
    score: float
    disagreement: float
    near_threshold: float
    membrane_share: float
    reason: str
    preview: Path | None


@dataclass(frozen=True)
class SuggestReport:
    """What a suggestion run found and wrote."""

    tomogram: Path
    out_dir: Path
    shape_xyz: tuple[int, int, int]
    suggestions: list[Suggestion]
    candidates: int
    """Candidate boxes scored."""
    excluded: int
    """Patches of ``exclude_manifest`` whose neighbourhood was left out."""
    centres: Path
    """``<stem>_suggestions.csv``: ``x,y,z,score,reason``, read by ``extract_patches``."""
    points: Path
    """``<stem>_suggestions_napari.csv``: napari's points CSV (``axis-0..2`` = z, y, x)."""
    probabilities: Path
    uncertainty: Path
    segmentation: Path | None
    """Written by the segment pass (``None`` when the maps were given)."""
    settings: SuggestSettings
    warnings: list[str]


def suggest(
    tomogram: Path,
    out_dir: Path,
    checkpoint: Path | None = None,
    *,
    probabilities: Path | None = None,
    uncertainty: Path | None = None,
    mask: Path | None = None,
    exclude_manifest: Path | None = None,
    settings: SuggestSettings = SuggestSettings(),
    listener: Listener = SILENT,
) -> SuggestReport:
    """Suggest where in ``tomogram`` to correct the segmentation, best first.

    Parameters
    ----------
    checkpoint
        Run the network (8-flip TTA with its variance) and write its
        ``<stem>_probabilities.mrc``, ``<stem>_segmented.mrc`` and
        ``<stem>_uncertainty.mrc`` into ``out_dir`` too, as ``segment`` does;
    probabilities, uncertainty
        or use these, written by ``segment --tta --uncertainty``, instead.
    mask
        Region of interest, the tomogram's shape: only voxels with a non-zero value count,
        and suggested centres lie in it.
    exclude_manifest
        An ``extract_patches`` output folder: patches already cut there from this
        tomogram are not suggested again (nor boxes overlapping them beyond
        ``settings.max_overlap``).
    """
    tomogram, out_dir = Path(tomogram), Path(out_dir)
    with collect_warnings() as warned:
        maps = (probabilities, uncertainty)
        shape, given = _check_inputs(tomogram, checkpoint, maps, mask)
        if not settings.allow_border:
            check_fits(tomogram, shape, settings.patch_size)
        excluded = []
        if exclude_manifest is not None:
            excluded = [
                (r.offset, r.size) for r in records_cut_from(exclude_manifest, tomogram, shape)
            ]
        check_out_dir(out_dir)
        stem = volume_stem(tomogram)
        tables = suggestion_tables(out_dir, stem)
        segmenting = settings.segment_pass
        segmented = output_paths(tomogram, out_dir, segmenting)
        earlier = suggestion_previews(out_dir, stem)
        outputs = [*tables, *(segmented.values() if checkpoint else ()), *earlier]
        require_free(outputs, settings.overwrite)
        predictor = load_predictor(Path(checkpoint), segmenting, listener) if checkpoint else None
        with writing_into(out_dir), staged(out_dir) as files:
            files.make_dirs(out_dir)
            if predictor is not None:  # the maps: its outputs, staged
                run = segment_one(tomogram, predictor, out_dir, segmenting, listener, files)
                for message in run.warnings:
                    warn(message)
                given = tuple(
                    files.temporary(segmented[k]) for k in ("probabilities", "uncertainty")
                )
            assert given is not None
            scores, suggestions = _rank(tomogram, given, mask, excluded, settings, listener)
            suggestions = _write(files, tables, suggestions, tomogram, given, settings, listener)
            files.remove(p for p in earlier if p not in {s.preview for s in suggestions})
    return SuggestReport(
        tomogram=tomogram,
        out_dir=out_dir,
        shape_xyz=tuple(as_xyz(shape)),  # type: ignore[arg-type]
        suggestions=suggestions,
        candidates=int(scores.score.size),
        excluded=len(excluded),
        centres=tables[0],
        points=tables[1],
        probabilities=segmented["probabilities"] if predictor else given[0],
        uncertainty=segmented["uncertainty"] if predictor else given[1],
        segmentation=segmented["segmented"] if predictor else None,
        settings=settings,
        warnings=warned,
    )


def _check_inputs(
    tomogram: Path, checkpoint, maps: tuple, mask: Path | None
) -> tuple[Index3, tuple[Path, Path] | None]:
    """The tomogram's shape and the maps given, once both their source (a checkpoint, or
    both map files) and their shapes and the mask's are checked."""
    _check_sources(checkpoint, *maps)
    shape = read_info(tomogram).shape
    given = (Path(maps[0]), Path(maps[1])) if None not in maps else None
    for path in (*(given or ()), *([Path(mask)] if mask is not None else [])):
        if (other := read_info(path).shape) != shape:
            raise InputError(
                f"{path}: shape x,y,z={tuple(as_xyz(other))} differs from the tomogram "
                f"{tomogram}: x,y,z={tuple(as_xyz(shape))}"
            )
    return shape, given


def _check_sources(checkpoint, probabilities, uncertainty) -> None:
    """One source of the maps: a checkpoint, or both map files."""
    maps = (probabilities, uncertainty)
    if checkpoint is not None and maps != (None, None):
        raise InputError(
            "give --checkpoint (to run the network) or --probabilities and --uncertainty, not both"
        )
    if checkpoint is None and maps == (None, None):
        raise InputError(
            "give either --checkpoint (to run the network) or --probabilities and "
            "--uncertainty (written by segment --tta --uncertainty)"
        )
    if checkpoint is None and None in maps:
        raise InputError(
            "--probabilities needs --uncertainty: the variance of the 8 flipped passes "
            "that segment --tta --uncertainty writes as <stem>_uncertainty.mrc"
            if uncertainty is None
            else "--uncertainty needs --probabilities: the <stem>_probabilities.mrc that "
            "segment --tta --uncertainty writes beside it"
        )


def _rank(
    tomogram: Path,
    maps: tuple[Path, Path],
    mask: Path | None,
    excluded: list[tuple[Index3, Index3]],
    settings: SuggestSettings,
    listener: Listener,
) -> tuple[BoxScores, list[Suggestion]]:
    """Score every box over the maps (and mask) and choose the best that do not overlap."""
    with (
        closing_reader(maps[0]) as probabilities,
        closing_reader(maps[1]) as variance,
        closing_reader(mask) if mask is not None else nullcontext() as region,
        closing_reader(tomogram) if settings.spread else nullcontext() as image,
    ):
        scores, allowed, image_sums = score_maps(
            probabilities,
            variance,
            settings.patch_size,
            border=settings.border,
            threshold=settings.threshold,
            allow_border=settings.allow_border,
            mask=region,
            image=image,
            progress=lambda done, total: listener.progress(Progress("Scoring", done, total)),
        )
    size, count, overlap = settings.patch_size, settings.count, settings.max_overlap
    shares = None
    if image_sums is None:
        chosen = choose(scores, size, count, overlap, excluded, allowed)
    else:
        chosen, shares = choose_spread(scores, image_sums, size, count, overlap, excluded, allowed)
    if len(chosen) < count:
        warn(
            f"{tomogram}: {len(chosen)} of the {count} suggestions asked for; no other box "
            + ("holds uncertain voxels" if settings.spread else "holds uncertain membrane")
            + ("" if settings.allow_border else " inside the tomogram")
            + f" without overlapping more than {settings.max_overlap:.0%} of another"
        )
    return scores, _suggestions(scores, chosen, shares)


def _suggestions(scores: BoxScores, chosen: list, shares: list | None) -> list[Suggestion]:
    found = []
    for rank, index in enumerate(chosen, start=1):
        disagreement = float(scores.disagreement[index])
        near = float(scores.near_threshold[index])
        membrane = float(scores.membrane[index])
        reason = describe_box(disagreement, near, membrane)
        if shares is not None:
            reason = f"most uncertain of a kind holding {shares[rank - 1]:.0%} of boxes; {reason}"
        found.append(
            Suggestion(
                rank=rank,
                centre_xyz=tuple(as_xyz(scores.centre(index))),  # type: ignore[arg-type]
                score=float(scores.score[index]),
                disagreement=disagreement,
                near_threshold=near,
                membrane_share=membrane,
                reason=reason,
                preview=None,
            )
        )
    return found


def _write(files, tables, suggestions, tomogram, maps, settings, listener) -> list[Suggestion]:
    """Stage the centres and points tables and, when asked and matplotlib is there, one
    preview per suggestion; the suggestions with their previews."""
    rows = [(s.centre_xyz, s.score, s.reason) for s in suggestions]
    for path, text in zip(tables, centres_tables(rows)):
        files.stage(path, ".csv").write_text(text, encoding="utf-8")
    if not settings.previews or not suggestions:
        return suggestions
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        warn("matplotlib is not installed: no previews (pip install matplotlib)")
        return suggestions
    out_dir, stem = tables[0].parent, volume_stem(tomogram)
    suggestions = [
        replace(s, preview=suggestion_preview(out_dir, stem, s.rank)) for s in suggestions
    ]
    files.make_dirs(suggestions[0].preview.parent)  # type: ignore[union-attr]
    listener.progress(Progress("Writing previews", 0, len(suggestions)))
    with (
        closing_reader(tomogram) as image,
        closing_reader(maps[0]) as probabilities,
        closing_reader(maps[1]) as variance,
    ):
        for done, s in enumerate(suggestions, start=1):
            png = _preview(s, (image, probabilities, variance), settings)
            files.stage(s.preview, ".png").write_bytes(png)  # type: ignore[arg-type]
            listener.progress(Progress("Writing previews", done, len(suggestions)))
    return suggestions


def _preview(s: Suggestion, readers: tuple[VolumeReader, ...], settings: SuggestSettings) -> bytes:
    """The suggestion's preview: three orthogonal planes through its centre, of the
    tomogram and the maps, with the patch and a margin around it."""
    shape = readers[0].info.shape
    x, y, z = s.centre_xyz
    centre = (z, y, x)
    size, half = settings.patch_size, settings.patch_size // 2
    margin = int(PREVIEW_MARGIN * size)
    low = tuple(max(0, c - half - margin) for c in centre)
    high = tuple(min(n, c - half + size + margin) for c, n in zip(centre, shape))
    planes = tuple(orthogonal_planes(reader, centre, low, high) for reader in readers)
    title = f"#{s.rank}  centre x={x} y={y} z={z}  score {s.score:.4f}\n{s.reason}"
    return preview_png(
        planes,
        low,
        centre,
        size,
        settings.border,
        settings.threshold,
        title,  # type: ignore[arg-type]
    )
