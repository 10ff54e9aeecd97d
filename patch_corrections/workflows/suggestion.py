"""Suggestion: where in a tomogram a correction would teach the network most.

The network's membrane probabilities and the variance of its 8 flipped (test-time
augmentation) passes come from a segment pass with a checkpoint, or from the files an
earlier ``segment --tta --uncertainty`` wrote. Both are read one slab of z sections at a
time and reduced to sums over small cells (:mod:`patch_corrections.suggest`), so memory
holds a slab and a volume ``4³`` times smaller, besides what the segment pass needs.
Patch-sized boxes are scored from those sums, and the best that do not overlap each other
(or patches already extracted) are written as a centres file ``extract_patches`` reads,
a napari points CSV and a PNG preview each.
"""

from __future__ import annotations

import math
import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..constants import BORDER_WIDTH, PATCH_SIZE
from ..errors import InputError
from ..io.files import StagedFiles
from ..io.manifest import as_xyz, load_manifest, manifest_path
from ..io.volumes import VolumeInfo, VolumeReader, closing_reader, read_info, volume_stem
from ..patches import check_patch_size
from ..suggest import (
    MAX_OVERLAP,
    MEMBRANE_SATURATION,
    BoxScores,
    CellSums,
    axis_candidates,
    box_scores,
    cell_size,
    choose,
    voxel_terms,
)
from ._common import check_out_dir, collect_warnings, require_free, warn, writing_into
from .events import SILENT, Listener, Progress
from .segmentation import SegmentSettings

SLAB_VOXELS = 1 << 22
"""Voxels of each map read at once (whole z sections, at least one)."""
PREVIEWS_SUBDIR = "previews"
PREVIEW_MARGIN = 0.25
"""Previews show the patch and this share of its edge around it on every side."""
VARIANCE_LIMIT = 0.25 + 1e-3
"""The variance of values in [0, 1] is at most 1/4 (float16 storage rounds a little)."""
_PROBABILITY_SLACK = 1e-3


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
    allow_border
        Let patches cross the tomogram's border (their centre stays inside); by default
        every patch lies inside it (along an axis shorter than a patch, centred).
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
    allow_border: bool = False
    threshold: float = 0.5
    previews: bool = True
    overwrite: bool = False
    network: SegmentSettings = field(default_factory=SegmentSettings)

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
        The rule's score (see :mod:`patch_corrections.suggest`).
    disagreement, near_threshold, membrane_share
        Means over the patch's scored part (inside its ignore band) of the per-voxel
        terms; the score is made of the first and the last (the near-threshold term is
        reported only, see :mod:`patch_corrections.suggest`).
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
        _check_sources(checkpoint, probabilities, uncertainty)
        info = read_info(tomogram)
        shape = info.shape
        if probabilities is not None and uncertainty is not None:
            maps = (Path(probabilities), Path(uncertainty))
            for path in maps:
                _same_shape(path, read_info(path), tomogram, shape)
        if mask is not None:
            _same_shape(Path(mask), read_info(Path(mask)), tomogram, shape)
        excluded = (
            _excluded_boxes(Path(exclude_manifest), tomogram, shape) if exclude_manifest else []
        )
        check_out_dir(out_dir)
        stem = volume_stem(tomogram)
        outputs = _outputs(out_dir, stem)
        network_outputs = [
            out_dir / f"{stem}_{n}.mrc" for n in ("probabilities", "segmented", "uncertainty")
        ]
        earlier = sorted((out_dir / PREVIEWS_SUBDIR).glob(f"{stem}_suggestion[0-9]*.png"))
        require_free(
            outputs + (network_outputs if checkpoint is not None else []) + earlier,
            settings.overwrite,
        )
        loaded = None
        network = replace(
            settings.network,
            tta=True,
            uncertainty=True,
            components=False,
            threshold=settings.threshold,
            overwrite=settings.overwrite,
        )
        if checkpoint is not None:
            from ._inference import LoadedNetwork

            loaded = LoadedNetwork.load(Path(checkpoint), network)
        with writing_into(out_dir):
            staged = StagedFiles()
            scratch: list[Path] = []
            try:
                staged.make_dirs(out_dir)
                if loaded is not None:
                    maps = _segment_pass(
                        tomogram, loaded, out_dir, network_outputs, network, staged, scratch,
                        listener,
                    )  # fmt: skip
                scores, allowed = _score(maps, shape, mask, settings, listener)
                chosen = choose(
                    scores,
                    settings.patch_size,
                    settings.count,
                    settings.max_overlap,
                    [box for box, _ in excluded],
                    allowed,
                )
                if len(chosen) < settings.count:
                    warn(
                        f"{tomogram}: {len(chosen)} of the {settings.count} suggestions asked "
                        "for; no other box holds uncertain membrane"
                        + ("" if settings.allow_border else " inside the tomogram")
                        + f" without overlapping more than {settings.max_overlap:.0%} of "
                        "another"
                    )
                suggestions = _suggestions(scores, chosen, stem, out_dir)
                _write_tables(staged, outputs, suggestions)
                written = settings.previews and _write_previews(
                    tomogram, maps, suggestions, settings, staged, listener
                )
                if not written:
                    suggestions = [replace(s, preview=None) for s in suggestions]
                stale = [p for p in earlier if p not in {s.preview for s in suggestions}]
            except BaseException:
                staged.discard()
                for path in scratch:
                    path.unlink(missing_ok=True)
                raise
            staged.commit(out_dir, remove=stale)
    return SuggestReport(
        tomogram=tomogram,
        out_dir=out_dir,
        shape_xyz=tuple(as_xyz(shape)),  # type: ignore[arg-type]
        suggestions=suggestions,
        candidates=int(scores.score.size),
        excluded=len(excluded),
        centres=outputs[0],
        points=outputs[1],
        probabilities=network_outputs[0] if loaded is not None else maps[0],
        uncertainty=network_outputs[2] if loaded is not None else maps[1],
        segmentation=network_outputs[1] if loaded is not None else None,
        settings=settings,
        warnings=warned,
    )


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
    if checkpoint is None and uncertainty is None:
        raise InputError(
            "--probabilities needs --uncertainty: the variance of the 8 flipped passes "
            "that segment --tta --uncertainty writes as <stem>_uncertainty.mrc"
        )
    if checkpoint is None and probabilities is None:
        raise InputError(
            "--uncertainty needs --probabilities: the <stem>_probabilities.mrc that "
            "segment --tta --uncertainty writes beside it"
        )


def _outputs(out_dir: Path, stem: str) -> list[Path]:
    return [out_dir / f"{stem}_suggestions.csv", out_dir / f"{stem}_suggestions_napari.csv"]


def _same_shape(path: Path, info: VolumeInfo, tomogram: Path, shape: tuple) -> None:
    if info.shape != shape:
        raise InputError(
            f"{path}: shape x,y,z={tuple(as_xyz(info.shape))} differs from the tomogram "
            f"{tomogram}: x,y,z={tuple(as_xyz(shape))}"
        )


def _excluded_boxes(folder: Path, tomogram: Path, shape: tuple) -> list[tuple[tuple, str]]:
    """The boxes ``(offset, size)`` ``(z, y, x)`` of the patches in ``folder``'s manifest
    that were cut from ``tomogram``, each with its name."""
    if not manifest_path(folder).is_file():
        raise InputError(
            f"--exclude-manifest {folder}: no {manifest_path(folder).name} in it; give an "
            "extract_patches output folder"
        )
    records = load_manifest(folder)
    boxes = []
    for record in records:
        if not _same_tomogram(record, tomogram, shape):
            continue
        try:
            offset = tuple(int(v) for v in record["offset_xyz"][::-1])
            size = tuple(int(v) for v in record["size_xyz"][::-1])
        except (TypeError, ValueError):
            raise InputError(
                f"{manifest_path(folder)}: patch {record['name']!r} has no valid offset_xyz "
                "and size_xyz"
            ) from None
        if len(offset) != 3 or len(size) != 3:
            raise InputError(
                f"{manifest_path(folder)}: patch {record['name']!r} has no valid offset_xyz "
                "and size_xyz"
            )
        boxes.append(((offset, size), record["name"]))
    if records and not boxes:
        warn(
            f"{manifest_path(folder)}: none of its {len(records)} patches was cut from "
            f"{tomogram}; nothing is excluded"
        )
    return boxes


def _same_tomogram(record: dict, tomogram: Path, shape: tuple) -> bool:
    """Whether a manifest record's patch was cut from ``tomogram``: the file it names is
    this one, or (moved since) has its name, and the recorded shape is this one's."""
    recorded_shape = record.get("tomogram_shape_xyz")
    if recorded_shape is not None and list(recorded_shape) != as_xyz(shape):
        return False
    source = record.get("tomogram")
    if not isinstance(source, str):
        return recorded_shape is not None
    path = Path(source)
    try:
        return os.path.samefile(path, tomogram)
    except OSError:  # moved or on another machine
        return path.name == tomogram.name


def _segment_pass(
    tomogram: Path,
    loaded,
    out_dir: Path,
    finals: list[Path],
    network: SegmentSettings,
    staged: StagedFiles,
    scratch: list[Path],
    listener: Listener,
) -> tuple[Path, Path]:
    """Run the network over ``tomogram`` (as ``segment --tta --uncertainty``); its outputs
    are staged for ``finals``. Returns the staged probabilities and uncertainty."""
    from ._inference import segment_one

    # segment_one commits its outputs under the names it is given: temporary names in the
    # locked folder (removed as leftovers if this run dies), moved onto staged names next.
    token = secrets.token_hex(4)
    names = [f.with_name(f".{f.name}.partial-suggest-{token}.mrc") for f in finals]
    scratch.extend(names)
    fields = segment_one(tomogram, loaded, names, network, listener)
    for message in fields["warnings"]:
        warn(message)
    moved = []
    for name, final in zip(names, finals):
        target = staged.stage(final, ".mrc")
        os.replace(name, target)
        moved.append(target)
    return moved[0], moved[2]


def _score(
    maps: tuple[Path, Path],
    shape: tuple[int, int, int],
    mask: Path | None,
    settings: SuggestSettings,
    listener: Listener,
) -> tuple[BoxScores, np.ndarray | None]:
    """Stream the maps (and mask) slab by slab into cell sums; score every box. Returns
    the scores and, with a mask, which candidates have their centre inside it."""
    size = settings.patch_size
    cell = cell_size(size)
    sums = CellSums(shape, cell)
    axes = [axis_candidates(n, size, cell, settings.allow_border) for n in shape]
    centre_rows = {int(z): k for k, z in enumerate(axes[0].centres)}
    allowed = np.ones([len(a.centres) for a in axes], bool) if mask is not None else None
    depth = max(1, SLAB_VOXELS // max(1, shape[1] * shape[2]))
    total = math.ceil(shape[0] / depth)
    nonfinite = 0
    listener.progress(Progress("Scoring", 0, total))
    with (
        closing_reader(maps[0]) as p_reader,
        closing_reader(maps[1]) as v_reader,
        _maybe_reader(mask) as m_reader,
    ):
        for done, z0 in enumerate(range(0, shape[0], depth), start=1):
            z1 = min(z0 + depth, shape[0])
            start, stop = (z0, 0, 0), (z1, shape[1], shape[2])
            p = p_reader.read_block(start, stop).astype(np.float32, copy=False)
            v = v_reader.read_block(start, stop).astype(np.float32, copy=False)
            nonfinite += _check_maps(p, v, maps)
            inside = None
            if m_reader is not None:
                inside = m_reader.read_block(start, stop) != 0
                for z in range(z0, z1):
                    if z in centre_rows:
                        allowed[centre_rows[z]] = inside[z - z0][
                            np.ix_(axes[1].centres, axes[2].centres)
                        ]
            sums.add(z0, voxel_terms(p, v, settings.threshold, inside))
            listener.progress(Progress("Scoring", done, total))
    if nonfinite:
        warn(f"{maps[0]}, {maps[1]}: {nonfinite} NaN or infinite voxel(s), read as 0")
    scores = box_scores(sums, size, settings.border, settings.allow_border, MEMBRANE_SATURATION)
    return scores, allowed


class _NoReader:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


def _maybe_reader(path: Path | None):
    return closing_reader(path) if path is not None else _NoReader()


def _check_maps(p: np.ndarray, v: np.ndarray, maps: tuple[Path, Path]) -> int:
    """``InputError`` for maps that are no probabilities or variance; the count of
    non-finite voxels."""
    bad = ~np.isfinite(p)
    bad |= ~np.isfinite(v)
    nonfinite = int(np.count_nonzero(bad))
    low, high = float(np.nanmin(p, initial=0)), float(np.nanmax(p, initial=0))
    if low < -_PROBABILITY_SLACK or high > 1 + _PROBABILITY_SLACK:
        raise InputError(
            f"{maps[0]}: values from {low:g} to {high:g} are not probabilities (logits, a "
            "MemBrain-seg _scores.mrc?); give segment's <stem>_probabilities.mrc"
        )
    low, high = float(np.nanmin(v, initial=0)), float(np.nanmax(v, initial=0))
    if low < 0 or high > VARIANCE_LIMIT:
        raise InputError(
            f"{maps[1]}: values from {low:g} to {high:g} are not a variance of probabilities; "
            "give the <stem>_uncertainty.mrc of segment --tta --uncertainty"
        )
    return nonfinite


def _reason(disagreement: float, near: float, membrane: float) -> str:
    """The score's terms in words (no commas: it is a CSV column)."""
    where = "little membrane" if membrane < MEMBRANE_SATURATION else "on membrane"
    return (
        f"TTA passes disagree ({disagreement:.3f}) {where} ({membrane:.1%}); "
        f"near threshold {near:.3f}"
    )


def _suggestions(scores: BoxScores, chosen: list, stem: str, out_dir: Path) -> list[Suggestion]:
    found = []
    for rank, index in enumerate(chosen, start=1):
        disagreement = float(scores.disagreement[index])
        near = float(scores.near_threshold[index])
        membrane = float(scores.membrane[index])
        found.append(
            Suggestion(
                rank=rank,
                centre_xyz=tuple(as_xyz(scores.centre(index))),  # type: ignore[arg-type]
                score=float(scores.score[index]),
                disagreement=disagreement,
                near_threshold=near,
                membrane_share=membrane,
                reason=_reason(disagreement, near, membrane),
                preview=out_dir / PREVIEWS_SUBDIR / f"{stem}_suggestion{rank:02d}.png",
            )
        )
    return found


def _write_tables(staged: StagedFiles, outputs: list[Path], suggestions: list[Suggestion]) -> None:
    centres = ["x,y,z,score,reason"]
    points = ["index,axis-0,axis-1,axis-2,score"]
    for s in suggestions:
        x, y, z = s.centre_xyz
        centres.append(f"{x},{y},{z},{s.score:.5g},{s.reason}")
        points.append(f"{s.rank - 1},{z},{y},{x},{s.score:.5g}")
    for path, lines in zip(outputs, (centres, points)):
        staged.stage(path, ".csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_previews(
    tomogram: Path,
    maps: tuple[Path, Path],
    suggestions: list[Suggestion],
    settings: SuggestSettings,
    staged: StagedFiles,
    listener: Listener,
) -> bool:
    """One PNG per suggestion, staged; whether they were written (not without matplotlib)."""
    if not suggestions:
        return False
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        warn("matplotlib is not installed: no previews (pip install matplotlib)")
        return False
    staged.make_dirs(suggestions[0].preview.parent)  # type: ignore[union-attr]
    listener.progress(Progress("Writing previews", 0, len(suggestions)))
    with (
        closing_reader(tomogram) as image,
        closing_reader(maps[0]) as probabilities,
        closing_reader(maps[1]) as variance,
    ):
        for done, s in enumerate(suggestions, start=1):
            assert s.preview is not None
            _preview(
                staged.stage(s.preview, ".png"), s, (image, probabilities, variance), settings
            )
            listener.progress(Progress("Writing previews", done, len(suggestions)))
    return True


def _planes(reader: VolumeReader, centre: tuple, low: tuple, high: tuple) -> list[np.ndarray]:
    """The x-y, x-z and y-z planes through ``centre`` ``(z, y, x)``, within ``[low,
    high)``: ``(y, x)``, ``(z, x)``, ``(z, y)``."""
    cz, cy, cx = centre
    (z0, y0, x0), (z1, y1, x1) = low, high
    return [
        reader.read_block((cz, y0, x0), (cz + 1, y1, x1))[0],
        reader.read_block((z0, cy, x0), (z1, cy + 1, x1))[:, 0],
        reader.read_block((z0, y0, cx), (z1, y1, cx + 1))[:, :, 0],
    ]


def _preview(path: Path, s: Suggestion, readers, settings: SuggestSettings) -> None:
    """Three orthogonal slices through the suggestion's centre: the tomogram, the
    segmentation (cyan) and the uncertainty (TTA standard deviation, warm colours), the
    patch drawn as a box and its scored part (inside the ignore band) dashed."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    image, probabilities, variance = readers
    shape = image.info.shape
    x, y, z = s.centre_xyz
    centre = (z, y, x)
    size, half = settings.patch_size, settings.patch_size // 2
    margin = int(PREVIEW_MARGIN * size)
    low = tuple(max(0, c - half - margin) for c in centre)
    high = tuple(min(n, c - half + size + margin) for c, n in zip(centre, shape))
    tomo = _planes(image, centre, low, high)
    prob = _planes(probabilities, centre, low, high)
    spread = _planes(variance, centre, low, high)
    views = (("x", "y", 2, 1), ("x", "z", 2, 0), ("y", "z", 1, 0))
    figure = Figure(figsize=(13, 4.6), layout="constrained")
    axes = figure.subplots(1, 3)
    for ax, (across, down, a, b), t, p, v in zip(axes, views, tomo, prob, spread):
        extent = (low[a] - 0.5, high[a] - 0.5, high[b] - 0.5, low[b] - 0.5)
        values = t.astype(np.float32)
        finite = values[np.isfinite(values)]
        lo, hi = np.percentile(finite, (1, 99)) if finite.size else (0.0, 1.0)
        ax.imshow(values, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, extent=extent)
        membrane = np.nan_to_num(p.astype(np.float32)) > settings.threshold
        overlay = np.zeros((*membrane.shape, 4), np.float32)
        overlay[membrane] = (0.0, 0.9, 1.0, 0.35)
        ax.imshow(overlay, extent=extent, interpolation="nearest")
        deviation = np.sqrt(np.clip(np.nan_to_num(v.astype(np.float32)), 0, None))
        warm = np.zeros((*deviation.shape, 4), np.float32)
        warm[..., 0], warm[..., 1] = 1.0, 0.35
        warm[..., 3] = np.clip(deviation / 0.25, 0, 1) * 0.8
        ax.imshow(warm, extent=extent, interpolation="nearest")
        start = (centre[a] - half, centre[b] - half)
        ax.add_patch(
            Rectangle(
                (start[0] - 0.5, start[1] - 0.5), size, size, fill=False, color="yellow", lw=1.5
            )
        )
        inner = size - 2 * settings.border
        ax.add_patch(
            Rectangle(
                (start[0] + settings.border - 0.5, start[1] + settings.border - 0.5),
                inner,
                inner,
                fill=False,
                color="yellow",
                lw=0.8,
                ls="--",
            )
        )
        ax.plot([centre[a]], [centre[b]], "+", color="yellow", ms=10)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        level = {"x": x, "y": y, "z": z}[({"x", "y", "z"} - {across, down}).pop()]
        plane = ({"x", "y", "z"} - {across, down}).pop()
        ax.set_title(f"{across}-{down} plane at {plane} = {level}", fontsize=10)
        ax.set_xlabel(across)
        ax.set_ylabel(down)
    figure.suptitle(
        f"#{s.rank}  centre x={x} y={y} z={z}  score {s.score:.4f}\n{s.reason}\n"
        "cyan: segmentation  orange: TTA disagreement (standard deviation)  "
        "yellow: patch, dashed: its part outside the ignore band (scored)",
        fontsize=9,
    )
    figure.savefig(path, format="png", dpi=80, bbox_inches="tight")
