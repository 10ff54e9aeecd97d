"""Context boxes: places of the corrected patches' tomograms that nobody corrected, cut
at training time with the labels of the segmentation the patches were cut from.

A handful of corrected patches is not the tomogram: patches chosen where the network is
most wrong hold several times the tomogram's share of membrane, so a network fine-tuned on
them alone learns that membrane is common and calls it in plain background elsewhere.
Context boxes train beside the corrected patches on what the network already called
(learning without forgetting, with the segmentation as the teacher), and a few more,
never trained on, are the *probes*: each metrics row says how many of their voxels the
network now calls otherwise (see :func:`patch_corrections.training.validation.moved`).

Where they lie comes from ``merge_corrections``'s summary: each row's ``cut_from`` names
the tomogram and segmentation its patch was cut from, the patch's box, and the threshold
that binarised the segmentation. Boxes are the patches' size, inside the tomogram, at
least half on voxels no patch or probe covers (what a patch covers is ignore in them;
boxes that train may overlap each other), drawn with the run's seed. Arrays are ``(z, y, x)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..constants import IGNORE, NORMALISATION
from ..errors import warn
from ..io.geometry import PatchBox, from_xyz
from ..io.summary import summary_path, summary_rows
from ..io.volumes import closing_reader, read_info, volume_exists
from ..labels.patches import Binarisation, image_patch, label_patch
from .data import TrainingPatch

_TRIES = 400  # random places tried per box before the tomogram counts as full


@dataclass(frozen=True)
class _Source:
    """One tomogram the patches came from: its files, their shape, the patches' boxes in
    it and what a context box cut from it needs (size, band, threshold, statistics)."""

    tomogram: Path
    segmentation: Path
    shape: tuple[int, int, int]
    boxes: tuple[tuple[tuple[int, int, int], tuple[int, int, int]], ...]
    size: tuple[int, int, int]
    border: int
    threshold: float
    statistics: dict | None


@dataclass(frozen=True)
class Context:
    """The context boxes of a run: those it trains on and the probes."""

    train: list[TrainingPatch]
    probes: list[TrainingPatch]


def sources_of(train_dir: Path, pixel_size: float | None = None) -> list[_Source]:
    """The tomograms ``train_dir``'s patches were cut from, as its merge summary records
    them; a warning names those that cannot serve: files not here (moved, another
    machine), another shape than recorded, or another voxel size than ``pixel_size``
    (the network's, Å; context boxes are not resampled).

    Patches of one tomogram cut from several segmentations (a second round, cut from
    the segmentation of the network the first round made) give one source: the boxes of
    all of them, and the labels of the newest of those segmentations (by file time)."""
    rows = summary_rows(summary_path(train_dir), "no context boxes are cut")
    groups: dict[str, list[dict]] = {}
    for row in rows.values():
        source = row.get("cut_from")
        if isinstance(source, dict) and source.get("tomogram") and source.get("segmentation"):
            groups.setdefault(source["tomogram"], []).append(row)
    sources = []
    for tomogram, group in groups.items():
        segmentation = _newest({r["cut_from"]["segmentation"] for r in group})
        group = sorted(group, key=lambda r: r["cut_from"]["segmentation"] == segmentation)
        missing = [p for p in (tomogram, segmentation) if not volume_exists(p)]
        if missing:
            warn(
                f"{missing[0]} (recorded in {train_dir}'s merge summary) is not here: no "
                "context box is cut from it"
            )
            continue
        source = _source(Path(tomogram), Path(segmentation), group)
        reason = _unfit(source, pixel_size)
        if reason:
            warn(f"{tomogram}: {reason}: no context box is cut from it")
            continue
        sources.append(source)
    return sources


def _newest(paths: set[str]) -> str:
    """The most recently written of ``paths`` that exists (any, if none does)."""
    present = [p for p in sorted(paths) if volume_exists(p)]
    return max(present, key=lambda p: Path(p).stat().st_mtime) if present else min(paths)


def _unfit(source: _Source, pixel_size: float | None) -> str | None:
    """Why ``source``'s files cannot give context boxes, if they cannot."""
    infos = [read_info(path) for path in (source.tomogram, source.segmentation)]
    for path, info in zip((source.tomogram, source.segmentation), infos):
        if tuple(info.shape) != source.shape:
            shape = "x".join(map(str, info.shape[::-1]))
            return f"{path.name} is {shape} voxels (x,y,z), not as recorded"
    geometry = infos[0].geometry
    size = geometry.voxel_size[2] if geometry else None
    if pixel_size and size and abs(size / pixel_size - 1) > 0.01:
        return f"voxel size {size:g} Å, not the network's {pixel_size:g} Å"
    return None


def _source(tomogram: Path, segmentation: Path, rows: list[dict]) -> _Source:
    last = rows[-1]["cut_from"]
    threshold = last.get("label_threshold")
    return _Source(
        tomogram,
        segmentation,
        from_xyz(last["tomogram_shape_xyz"]),
        tuple(
            (from_xyz(r["cut_from"]["offset_xyz"]), from_xyz(r["cut_from"]["size_xyz"]))
            for r in rows
        ),
        from_xyz(last["size_xyz"]),
        int(rows[-1].get("border") or 0),
        0.5 if threshold is None else float(threshold),
        rows[-1].get("intensity_statistics"),
    )


def _spread(total: int, parts: int) -> list[int]:
    """``total`` split over ``parts`` as evenly as can be, the first ones taking more."""
    return [total // parts + (i < total % parts) for i in range(parts)]


_GRID = 4  # voxels per cell of the map of what boxes already cover


class _Placer:
    """Random boxes in one tomogram, each at least half on voxels no patch and no probe
    covers (on a grid of :data:`_GRID` voxels); boxes that train may overlap each other."""

    def __init__(self, source: _Source, rng: np.random.Generator):
        self.source, self.rng = source, rng
        self.size = tuple(min(s, n) for s, n in zip(source.size, source.shape))
        self.covered = np.zeros([-(-n // _GRID) for n in source.shape], bool)
        for offset, size in source.boxes:
            self._cover(offset, size)

    def _cells(self, offset, size) -> tuple[slice, ...]:
        return tuple(
            slice(max(o, 0) // _GRID, -(-min(o + s, n) // _GRID))
            for o, s, n in zip(offset, size, self.source.shape)
        )

    def _cover(self, offset, size) -> None:
        self.covered[self._cells(offset, size)] = True

    def place(self, probe: bool) -> tuple[int, int, int] | None:
        """A new box's first voxel (a probe's covers its place for the boxes after it),
        or ``None`` where none fits in :data:`_TRIES` draws."""
        room = [n - s for n, s in zip(self.source.shape, self.size)]
        for _ in range(_TRIES):
            offset = tuple(int(self.rng.integers(0, r + 1)) for r in room)
            if self.covered[self._cells(offset, self.size)].mean() <= 0.5:
                if probe:
                    self._cover(offset, self.size)
                return offset
        return None


def _outside(labels: np.ndarray, offset, boxes) -> np.ndarray:
    """``labels`` (a box at ``offset``) with every voxel inside ``boxes`` made ignore."""
    for other, extent in boxes:
        window = tuple(
            slice(max(b - o, 0), max(min(b + e - o, n), 0))
            for o, b, e, n in zip(offset, other, extent, labels.shape)
        )
        labels[window] = IGNORE
    return labels


def _cut(source: _Source, offset, size, name: str, normalisation: str, hidden) -> TrainingPatch:
    """The box of ``size`` at ``offset``, cut as ``extract_patches`` cuts a patch (its
    image, and the segmentation's calls as labels with the border band), with what lies in
    the ``hidden`` boxes ignore."""
    box = PatchBox(offset, size)
    start, stop = box.inside(source.shape)
    with closing_reader(source.tomogram) as reader:
        block = reader.read_block(start, stop).astype(np.float32)
    image, _, _ = image_patch(block, box, source.shape)
    with closing_reader(source.segmentation) as reader:
        block = reader.read_block(start, stop)
    binarisation = Binarisation(source.threshold, "recorded")
    labels = label_patch(block, box, source.shape, source.border, binarisation)
    _outside(labels, offset, hidden)
    statistics = (source.statistics or {}).get(normalisation)
    statistics = tuple(statistics) if statistics else None
    return TrainingPatch.from_arrays(name, image, labels, normalisation, statistics)


def context_boxes(
    train_dir: Path,
    count: int,
    probes: int,
    seed: int,
    normalisation: str = NORMALISATION,
    pixel_size: float | None = None,
) -> Context:
    """``probes`` probes and ``count`` context boxes to train on, spread over the
    tomogram(s) ``train_dir``'s patches came from, none where nothing is recorded.

    Each box is the patches' size (at most the tomogram's), at least half outside the
    patches and probes; what lies inside a patch is ignore in every box (the
    corrections teach there), and what lies inside a probe is ignore in the boxes that
    train, so probes measure where nothing trained. Fewer boxes, with a warning, where a
    tomogram has no more room."""
    if not count + probes:
        return Context([], [])
    sources = sources_of(train_dir, pixel_size)
    if not sources:
        return Context([], [])
    rng = np.random.default_rng([seed, 7103])
    wanted, probes, train, missing = probes, [], [], 0
    for source, n_probes, n_train in zip(
        sources, _spread(wanted, len(sources)), _spread(count, len(sources))
    ):
        placer = _Placer(source, rng)
        size, patches = placer.size, list(source.boxes)
        places = [placer.place(k < n_probes) for k in range(n_probes + n_train)]
        missing += places.count(None)
        shown = [p for p in places[:n_probes] if p is not None]
        probes += [
            _cut(source, p, size, f"probe{len(probes) + k:03d}", normalisation, patches)
            for k, p in enumerate(shown)
        ]
        hidden = patches + [(p, size) for p in shown]
        trained = [p for p in places[n_probes:] if p is not None]
        train += [
            _cut(source, p, size, f"context{len(train) + k:03d}", normalisation, hidden)
            for k, p in enumerate(trained)
        ]
    if missing:
        warn(
            f"the tomogram(s) of {train_dir}'s patches had room for {len(train)} context "
            f"box(es) and {len(probes)} probe(s) apart from the patches, not {count} and "
            f"{wanted}"
        )
    return Context(train, probes)
