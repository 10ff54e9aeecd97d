"""Segmentation: a whole tomogram through the network, window by window."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..constants import PATCH_SIZE
from ..errors import InputError
from ..io.volumes import (
    is_volume_file,
    volume_stem,
)
from ._common import check_out_dir, collect_warnings, require_free
from ._inference import LoadedNetwork, segment_one
from .events import SILENT, Listener


@dataclass(frozen=True)
class SegmentSettings:
    """How a tomogram is segmented.

    Attributes
    ----------
    window
        Edge of the sliding windows, in voxels.
    overlap
        Fraction by which neighbouring windows overlap.
    tta
        Average the logits of 8 passes over the flipped tomogram (8x slower).
    batch_size
        Windows per forward pass.
    threshold
        Probability above which a voxel is membrane.
    device
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    trust_checkpoint
        Allow a checkpoint that pickles objects beyond weights.
    rescale
        Resample each window to the pixel size the network was trained at (MemBrain-seg's
        ``--rescale-patches``); outputs stay on the tomogram's grid.
    pixel_size
        The tomogram's pixel size in Å for ``rescale``; default: its header's.
    uncertainty
        With ``tta``, also write the variance of the 8 flipped passes' probabilities.
    components
        Also write the 26-connected membrane components, labelled ``1 … N``.
    min_component_size
        With ``components``, drop components of fewer voxels.
    overwrite
        Replace earlier outputs.
    """

    window: int = PATCH_SIZE
    overlap: float = 0.5
    tta: bool = False
    batch_size: int = 1
    threshold: float = 0.5
    device: str = "auto"
    trust_checkpoint: bool = False
    rescale: bool = False
    pixel_size: float | None = None
    uncertainty: bool = False
    components: bool = False
    min_component_size: int = 1
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.pixel_size is not None and not (
            math.isfinite(self.pixel_size) and self.pixel_size > 0
        ):
            raise InputError(f"--pixel-size must be a positive number of Å, got {self.pixel_size}")
        if self.uncertainty and not self.tta:
            raise InputError("--uncertainty is the spread of the 8 --tta passes; add --tta")
        if self.min_component_size < 1:
            raise InputError(
                f"--min-component-size must be at least 1, got {self.min_component_size}"
            )
        if self.min_component_size > 1 and not self.components:
            raise InputError("--min-component-size filters --components; add --components")
        if self.pixel_size is not None and not self.rescale:
            raise InputError("--pixel-size is the tomogram's pixel size for --rescale; add it")
        if not 0 <= self.overlap < 1:
            raise InputError(f"--overlap must be in [0, 1), got {self.overlap}")
        if self.window < 1:
            raise InputError(f"--window must be positive, got {self.window}")
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not 0 < self.threshold < 1:
            raise InputError(f"--threshold must be a probability in (0, 1), got {self.threshold}")


@dataclass(frozen=True)
class SegmentReport:
    """What a segmentation wrote."""

    tomogram: Path
    shape_xyz: tuple[int, int, int]
    windows: int
    grid_window: int
    """Edge of the windows on the tomogram's grid (the network's window unless rescaled)."""
    pixel_sizes: tuple[float, float] | None
    """With rescaling: the tomogram's pixel size and the network's, in Å."""
    device: str
    membrane_share: float
    """Share of voxels above the threshold."""
    peak_gpu_gib: float | None
    probabilities: Path
    """Float16 membrane probabilities, MRC (``<stem>_probabilities.mrc``)."""
    segmentation: Path
    """Int8 binary segmentation, MRC."""
    uncertainty: Path | None
    """Float16 variance of the 8 flipped passes' probabilities, MRC, when asked for."""
    components: Path | None
    """Labels of the connected membrane components, MRC, when asked for."""
    component_count: int | None
    settings: SegmentSettings
    warnings: list[str]


def segment(
    tomogram: Path,
    checkpoint: Path,
    out_dir: Path,
    *,
    settings: SegmentSettings = SegmentSettings(),
    listener: Listener = SILENT,
) -> SegmentReport:
    """Segment ``tomogram`` with the network of ``checkpoint`` (ours or MemBrain-seg's).

    Writes ``<stem>_probabilities.mrc`` (float16 membrane probabilities; MemBrain-seg's
    ``<stem>_scores.mrc`` holds logits, hence another name) and ``<stem>_segmented.mrc``
    (0/1, thresholded from the stored probabilities so both agree) into ``out_dir``, with the
    tomogram's voxel size and origin. Only one slab of windows is held in memory.
    Outputs that exist are an error unless ``settings.overwrite``.
    """
    with collect_warnings() as warned:
        check_out_dir(Path(out_dir))
        require_free(_outputs(Path(tomogram), Path(out_dir), settings), settings.overwrite)
        network = LoadedNetwork.load(Path(checkpoint), settings)
        outputs = _outputs(Path(tomogram), Path(out_dir), settings)
        fields = segment_one(Path(tomogram), network, outputs, settings, listener)
    fields["warnings"] = fields["warnings"] + warned
    return SegmentReport(**fields, settings=settings)


@dataclass(frozen=True)
class BatchSegmentReport:
    """What a run over several tomograms did: one report per tomogram segmented, and the
    tomograms skipped because their outputs were there already."""

    done: list[SegmentReport]
    skipped: list[Path]
    warnings: list[str]


def segment_many(
    tomograms: Sequence[Path],
    checkpoint: Path,
    out_dir: Path,
    *,
    settings: SegmentSettings = SegmentSettings(),
    listener: Listener = SILENT,
) -> BatchSegmentReport:
    """Segment several tomograms (files, or folders of them) with one loaded network.

    A tomogram whose outputs are all in ``out_dir`` already is skipped, unless
    ``settings.overwrite``; so a run that stopped can be started again as it was.
    """
    out_dir = Path(out_dir)
    with collect_warnings() as warned:
        files = _tomogram_files(tomograms)
        check_out_dir(out_dir)
        todo = [
            f
            for f in files
            if settings.overwrite or not all(p.exists() for p in _outputs(f, out_dir, settings))
        ]
        skipped = [f for f in files if f not in todo]
        network = LoadedNetwork.load(Path(checkpoint), settings) if todo else None
        done = []
        for number, tomogram in enumerate(todo, start=1):
            listener.message(f"[{number}/{len(todo)}] {tomogram}")
            outputs = _outputs(tomogram, out_dir, settings)
            fields = segment_one(tomogram, network, outputs, settings, listener)
            done.append(SegmentReport(**fields, settings=settings))
    return BatchSegmentReport(done, skipped, warned)


def _tomogram_files(tomograms: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for given in map(Path, tomograms):
        if given.is_dir():
            found = sorted(p for p in given.iterdir() if is_volume_file(p))
            if not found:
                raise InputError(f"{given}: no tomogram (.mrc .rec .nrrd .nii.gz …) in it")
            files += found
        else:
            files.append(given)
    stems: dict[str, Path] = {}
    for path in files:
        other = stems.setdefault(volume_stem(path), path)
        if other != path:
            raise InputError(
                f"{path} and {other}: the same name, so the same output files; segment "
                "them into different --out-dir folders"
            )
    if not files:
        raise InputError("no tomogram given")
    return files


def _outputs(tomogram: Path, out_dir: Path, settings: SegmentSettings) -> list[Path]:
    stem = volume_stem(tomogram)
    names = ["probabilities", "segmented"]
    names += ["uncertainty"] * settings.uncertainty + ["components"] * settings.components
    return [out_dir / f"{stem}_{name}.mrc" for name in names]
