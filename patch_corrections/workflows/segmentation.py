"""Segmentation: a whole tomogram through the network, window by window, its outputs
written slab by slab (several tomograms: :mod:`.batch_segmentation`)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..constants import NORMALISATION, PATCH_SIZE, ZSCORE
from ..errors import InputError, collect_warnings, warn
from ..io.geometry import as_xyz, geometry_or_unit
from ..io.locks import lock_file, new_folder
from ..io.names import SEGMENT_FORMATS, segment_output
from ..io.staging import StagedFiles, remove_leftovers_of, staged
from ..io.volumes import (
    closing_reader,
    read_volume,
    slab_writer,
    volume_stem,
    volume_suffix,
    write_volume,
)
from ._common import check_out_dir, require_free
from .events import SILENT, Listener, Progress


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
    format
        ``mrc`` or ``zarr`` (OME-Zarr): what the outputs are written as.
    compile
        ``torch.compile`` the network (fuses its norms and activations): a slow first
        window, faster ones after; for large tomograms, TTA or many tomograms per run.
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
    compile: bool = False
    format: str = "mrc"

    def __post_init__(self) -> None:
        if self.format not in SEGMENT_FORMATS:
            raise InputError(
                f"--format {self.format}: expected one of {', '.join(SEGMENT_FORMATS)}"
            )
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
    """Float16 membrane probabilities (``<stem>_probabilities.mrc`` or ``.zarr``)."""
    segmentation: Path
    """Int8 binary segmentation."""
    uncertainty: Path | None
    """Float16 variance of the 8 flipped passes' probabilities, when asked for."""
    components: Path | None
    """Labels of the connected membrane components, when asked for."""
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
    (0/1: the float32 probabilities above the threshold, as MemBrain-seg thresholds its
    float32 logits) into ``out_dir``, with the tomogram's voxel size and origin. Only one
    slab of windows is held in memory.
    Outputs that exist are an error unless ``settings.overwrite``, and so is another run
    segmenting the same tomogram into ``out_dir`` at the same time.
    """
    tomogram, out_dir = Path(tomogram), Path(out_dir)
    with collect_warnings() as warned:
        check_out_dir(out_dir)
        outputs = output_paths(tomogram, out_dir, settings).values()
        require_free(outputs, settings.overwrite)
        predictor = load_predictor(Path(checkpoint), settings, listener)
        with claimed(tomogram, out_dir) as held:
            if not held:
                raise InputError(
                    f"{tomogram}: another segment run is writing its outputs into {out_dir} "
                    "now; wait for it to finish"
                )
            require_free(outputs, settings.overwrite)  # that run may have just finished
            report = segment_one(tomogram, predictor, out_dir, settings, listener)
    return replace(report, warnings=report.warnings + warned)


def load_predictor(checkpoint: Path, settings: SegmentSettings, listener: Listener = SILENT):
    """The network of ``checkpoint`` on the settings' device, for the settings' windows;
    ``listener`` is told what network it is and how it is fed."""
    from ..inference.predictor import Predictor

    predictor = Predictor.load(
        checkpoint,
        window=settings.window,
        batch_size=settings.batch_size,
        device=settings.device,
        trust=settings.trust_checkpoint,
        rescale=settings.rescale,
        compile=settings.compile,
    )
    listener.message(describe_network(predictor.checkpoint))
    return predictor


_FED = {
    NORMALISATION: "each tomogram's robust z-score (median, scaled MAD, clipped to ±10)",
    ZSCORE: "each tomogram's mean and standard deviation (z-score)",
}


def describe_network(loaded) -> str:
    """One line: whose checkpoint ``loaded`` (a ``LoadedCheckpoint``) is, and how its
    network is fed: normalisation, axis order, the pixel size it was trained at."""
    from ..network.checkpoints import FORMAT

    ours = loaded.content.get("format") == FORMAT
    whose = "trained with patch_corrections" if ours else "recognised as MemBrain-seg's"
    config = loaded.network.config
    axes = ",".join(config.axis_order)
    size = f"{loaded.pixel_size:g} Å" if loaded.pixel_size else "an unrecorded pixel size"
    fed = _FED.get(loaded.normalisation, loaded.normalisation)
    return (
        f"Network: {loaded.path.name}, {whose} (filters {config.filters[0]}…"
        f"{config.filters[-1]}); fed {fed}, axes {axes}, trained at {size}."
    )


def output_paths(tomogram: Path, out_dir: Path, settings: SegmentSettings) -> dict[str, Path]:
    """What segmenting ``tomogram`` with ``settings`` writes into ``out_dir``, by kind:
    ``probabilities``, ``segmented``, and ``uncertainty`` and ``components`` when asked."""
    kinds = ["probabilities", "segmented"]
    kinds += ["uncertainty"] * settings.uncertainty + ["components"] * settings.components
    stem = volume_stem(tomogram)
    return {kind: segment_output(out_dir, stem, kind, settings.format) for kind in kinds}


def segment_one(
    tomogram: Path,
    predictor,
    out_dir: Path,
    settings: SegmentSettings,
    listener: Listener,
    files: StagedFiles | None = None,
) -> SegmentReport:
    """Segment one tomogram with a loaded network into ``out_dir``; its report, warnings
    included. With ``files``, the outputs are staged there for the caller to commit;
    without, they are committed here.

    Running out of GPU or host memory is an ``InputError`` that names the tomogram and
    what to change, so a run over many tomograms goes on with the others."""
    import torch

    try:
        with collect_warnings() as warned:
            if files is not None:
                report = _segment_one(tomogram, predictor, out_dir, settings, listener, files)
            else:
                with staged() as files:
                    report = _segment_one(tomogram, predictor, out_dir, settings, listener, files)
    except (torch.cuda.OutOfMemoryError, MemoryError) as exc:
        where = "GPU" if isinstance(exc, torch.cuda.OutOfMemoryError) else "host"
        if where == "GPU":
            torch.cuda.empty_cache()
        smaller = "--batch-size" if settings.batch_size > 1 else "--window"
        extra = " or without --uncertainty" if settings.uncertainty else ""
        raise InputError(
            f"{tomogram}: out of {where} memory with {settings.window}³ windows, batch "
            f"{settings.batch_size}{', TTA' if settings.tta else ''}; try a smaller "
            f"{smaller}{extra}"
        ) from None
    return replace(report, warnings=warned)


def _segment_one(
    tomogram: Path,
    predictor,
    out_dir: Path,
    settings: SegmentSettings,
    listener: Listener,
    files: StagedFiles,
) -> SegmentReport:
    import torch

    from ..inference.probabilities import FLIPS
    from ..inference.sliding_window import windows_count

    outputs = output_paths(tomogram, out_dir, settings)
    with closing_reader(tomogram) as reader:
        shape = reader.info.shape
        geometry = geometry_or_unit(reader.info.geometry, tomogram, "outputs are written")
        grid, pixel_sizes = predictor.grid(reader.info.geometry, settings.pixel_size, tomogram)
        windows = windows_count(shape, grid, settings.overlap)
        predictor.warn_padding(tomogram, shape, grid, plain=pixel_sizes is None)
        progress = _Counter(listener, windows * (len(FLIPS) if settings.tta else 1))
        run = (settings.overlap, settings.tta, settings.uncertainty, settings.threshold)
        slabs = predictor.slabs(reader, grid, *run, progress.add)
        if remove_leftovers_of(outputs.values()):
            warn(f"{tomogram}: removed the temporary outputs an interrupted run left")
        files.make_dirs(out_dir)
        membrane = _write_slabs(slabs, outputs, files, (shape, geometry), settings, progress)
    count = None
    if settings.components:
        count = _write_components(outputs, files, geometry, settings.min_component_size)
    device = predictor.device
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return SegmentReport(
        tomogram=tomogram,
        shape_xyz=tuple(as_xyz(shape)),  # type: ignore[arg-type]
        windows=windows,
        grid_window=grid,
        pixel_sizes=pixel_sizes,
        device=str(device),
        membrane_share=membrane,
        peak_gpu_gib=peak,
        probabilities=outputs["probabilities"],
        segmentation=outputs["segmented"],
        uncertainty=outputs.get("uncertainty"),
        components=outputs.get("components"),
        component_count=count,
        settings=settings,
        warnings=[],
    )


class _Counter:
    """Tells the listener how many windows of all passes are done, from :meth:`start` on."""

    def __init__(self, listener: Listener, total: int) -> None:
        self.listener, self.total, self.done = listener, total, 0

    def start(self) -> None:
        self.listener.progress(Progress("Segmenting", 0, self.total))

    def add(self, count: int) -> None:
        self.done += count
        self.listener.progress(Progress("Segmenting", self.done, self.total))


def _write_slabs(slabs, outputs: dict, files: StagedFiles, volume, settings, progress) -> float:
    """Write the probabilities, the segmentation and (when asked) the variance slab by
    slab into staged files of a volume's ``(shape, geometry)``; the share of voxels above
    the settings' threshold. The slabs are written in a thread of their own, behind the
    window loop (:func:`.finishing.write_in_order`)."""
    from ..inference.finishing import write_in_order

    shape, geometry = volume
    # Writers close on success and let go of their files unfinished on an error, before
    # the staged files are discarded: a batch goes on to the next tomogram.
    with ExitStack() as stack:

        def writer(kind: str, dtype):
            path = files.stage(outputs[kind], volume_suffix(outputs[kind]))
            return stack.enter_context(slab_writer(path, shape, dtype, geometry))

        scores = writer("probabilities", np.float16)
        labels = writer("segmented", np.int8)
        spread = writer("uncertainty", np.float16) if "uncertainty" in outputs else None

        def write(z0: int, probabilities, segmentation, variance) -> None:
            scores.write(z0, probabilities)
            labels.write(z0, segmentation)
            if spread is not None:
                spread.write(z0, variance)

        progress.start()
        write_in_order(slabs, write)
        return labels.mean


def _write_components(outputs: dict, files: StagedFiles, geometry, min_size: int) -> int:
    """Label the segmentation's connected membranes into the staged components file; how
    many there are."""
    from ..inference.components import connected_components, smallest_label_dtype

    segmentation, _ = read_volume(files.temporary(outputs["segmented"]))
    found = connected_components(segmentation, min_size)
    path = files.stage(outputs["components"], volume_suffix(outputs["components"]))
    write_volume(path, found.astype(smallest_label_dtype(found)), geometry)
    return int(found.max()) if found.size else 0


@contextmanager
def claimed(tomogram: Path, out_dir: Path) -> Iterator[bool]:
    """Hold the lock on ``tomogram``'s outputs in ``out_dir`` for the block; yields whether
    this run got it (``False``: another run, in this process or another, holds it).

    ``segment`` does not lock its whole folder, so that one run per GPU or the tasks of a
    job array can share it; this lock keeps two runs off the same tomogram, whose
    temporary files each would otherwise remove as an interrupted run's (see
    ``remove_leftovers_of``). The operating system releases it when its holder dies; the
    lock file is removed when the block ends (not on Windows), and ``out_dir`` too if this
    block created it and nothing was written.
    """
    with new_folder(out_dir) as created:
        with lock_file(out_dir / f".{volume_stem(tomogram)}.segment.lock") as held:
            if held is False:
                created.clear()  # the other run's folder
            elif held is None:
                # With --part, runs never share a tomogram anyway.
                warn(
                    f"{out_dir}: its file system cannot lock files; runs sharing this "
                    "folder must split the tomograms with --part/--parts"
                )
            yield held is not False
