"""Segmentation: a whole tomogram through the network, window by window."""

from __future__ import annotations

import errno
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..constants import PATCH_SIZE
from ..errors import InputError
from ..io.files import lock_file, new_folder
from ..io.volumes import (
    is_volume_file,
    volume_stem,
)
from ._common import check_out_dir, collect_warnings, require_free, warn
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
    Outputs that exist are an error unless ``settings.overwrite``, and so is another run
    segmenting the same tomogram into ``out_dir`` at the same time.
    """
    tomogram, out_dir = Path(tomogram), Path(out_dir)
    with collect_warnings() as warned:
        check_out_dir(out_dir)
        outputs = _outputs(tomogram, out_dir, settings)
        require_free(outputs, settings.overwrite)
        network = LoadedNetwork.load(Path(checkpoint), settings)
        with _claimed(tomogram, out_dir) as claimed:
            if not claimed:
                raise InputError(
                    f"{tomogram}: another segment run is writing its outputs into {out_dir} "
                    "now; wait for it to finish"
                )
            require_free(outputs, settings.overwrite)  # that run may have just finished
            fields = segment_one(tomogram, network, outputs, settings, listener)
    fields["warnings"] = fields["warnings"] + warned
    return SegmentReport(**fields, settings=settings)


@dataclass(frozen=True)
class BatchSegmentReport:
    """What a run over several tomograms (or over its part of them) did."""

    done: list[SegmentReport]
    """One report per tomogram segmented."""
    skipped: list[Path]
    """Tomograms whose outputs were all in the output folder already."""
    failed: list[tuple[Path, str]] = field(default_factory=list)
    """Tomograms that could not be segmented, each with the one-line reason; their earlier
    outputs, if any, are untouched and nothing of theirs was left behind."""
    busy: list[Path] = field(default_factory=list)
    """Tomograms left alone because another run was segmenting them into the same folder."""
    total: int = 0
    """Tomograms given, in all parts together."""
    warnings: list[str] = field(default_factory=list)


def segment_many(
    tomograms: Sequence[Path],
    checkpoint: Path,
    out_dir: Path,
    *,
    settings: SegmentSettings = SegmentSettings(),
    part: int = 0,
    parts: int = 1,
    listener: Listener = SILENT,
) -> BatchSegmentReport:
    """Segment several tomograms (files, or folders of them) with one loaded network.

    A tomogram whose outputs are all in ``out_dir`` already is skipped, unless
    ``settings.overwrite``; so a run that stopped can be started again as it was.

    A tomogram that cannot be read or segmented (an ``InputError``, or an ``OSError`` other
    than a full or read-only output disk) is recorded in ``failed`` with its reason, leaves
    no file behind, and the run goes on with the others. Errors that concern every
    tomogram (the checkpoint, the settings, the output folder) stop the run at once.

    ``part`` of ``parts`` (counted from 0, as nnU-Net's ``-part_id`` of ``-num_parts``)
    takes every ``parts``-th tomogram, from the ``part``-th on, of all those given sorted
    by name: the split depends only on which tomograms are given, not on the order of the
    folders, so running every part, at once or one by one, segments each tomogram once.

    Several runs may write into ``out_dir`` at the same time (one per GPU, or the tasks of
    a job array): each holds a lock on the tomogram it is segmenting, so two runs never
    work on the same one; a run that finds a tomogram locked leaves it to the other
    (``busy``). Every output is written under a temporary name and renamed into place
    once complete, so readers never see a partial file.
    """
    out_dir = Path(out_dir)
    if parts < 1:
        raise InputError(f"--parts must be at least 1, got {parts}")
    if parts == 1 and part != 0:
        raise InputError(
            f"--part {part}: give --parts too, the number of parts the tomograms are split "
            "into (parts are counted from 0)"
        )
    if not 0 <= part < parts:
        raise InputError(
            f"--part {part}: must be 0 … {parts - 1} for --parts {parts} (parts are counted "
            "from 0: pass $SLURM_ARRAY_TASK_ID of --array=0-"
            f"{parts - 1})"
        )
    with collect_warnings() as warned:
        files = _tomogram_files(tomograms)
        check_out_dir(out_dir)
        mine = files[part::parts]
        if parts > 1 and mine:
            listener.message(
                f"Part {part} of {parts} (counted from 0): {len(mine)} of the {len(files)} "
                "tomograms"
            )
        todo = [f for f in mine if settings.overwrite or not _finished(f, out_dir, settings)]
        skipped = [f for f in mine if f not in todo]
        network = LoadedNetwork.load(Path(checkpoint), settings) if todo else None
        done: list[SegmentReport] = []
        failed: list[tuple[Path, str]] = []
        busy: list[Path] = []
        for number, tomogram in enumerate(todo, start=1):
            listener.message(f"[{number}/{len(todo)}] {tomogram}")
            outputs = _outputs(tomogram, out_dir, settings)
            with _claimed(tomogram, out_dir) as claimed:
                if not claimed:
                    listener.message(f"{tomogram}: another run is segmenting it; left to it")
                    busy.append(tomogram)
                    continue
                if not settings.overwrite and _finished(tomogram, out_dir, settings):
                    skipped.append(tomogram)  # another run finished it since we looked
                    continue
                try:
                    fields = segment_one(tomogram, network, outputs, settings, listener)
                except (InputError, OSError) as exc:
                    if isinstance(exc, OSError) and exc.errno in _OUTPUT_DISK_ERRORS:
                        raise  # every other tomogram would fail the same way
                    reason = _reason(exc, tomogram)
                    listener.message(f"Failed: {reason}")
                    failed.append((tomogram, reason))
                    continue
            done.append(SegmentReport(**fields, settings=settings))
    return BatchSegmentReport(
        done=done,
        skipped=[f for f in mine if f in skipped],
        failed=failed,
        busy=busy,
        total=len(files),
        warnings=warned,
    )


_OUTPUT_DISK_ERRORS = {errno.ENOSPC, errno.EROFS, getattr(errno, "EDQUOT", errno.ENOSPC)}
"""Errors writing the outputs that no other tomogram would escape: a full disk, an
exhausted quota, a read-only file system."""


def _reason(exc: Exception, tomogram: Path) -> str:
    """One line saying why ``tomogram`` failed, naming it."""
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    text = " ".join(text.split())
    return text if str(tomogram) in text else f"{tomogram}: {text}"


def _finished(tomogram: Path, out_dir: Path, settings: SegmentSettings) -> bool:
    return all(p.exists() for p in _outputs(tomogram, out_dir, settings))


@contextmanager
def _claimed(tomogram: Path, out_dir: Path) -> Iterator[bool]:
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


def _tomogram_files(tomograms: Sequence[Path]) -> list[Path]:
    """The tomogram files given (files, or folders of them), each once, sorted by name."""
    files: dict[Path, Path] = {}  # the same file named twice (./a.mrc, /data/a.mrc) is one
    for given in map(Path, tomograms):
        if given.is_dir():
            found = sorted(p for p in given.iterdir() if is_volume_file(p))
            if not found:
                raise InputError(f"{given}: no tomogram (.mrc .rec .nrrd .nii.gz …) in it")
        else:
            found = [given]
        for path in found:
            files.setdefault(path.parent.resolve() / path.name, path)
    if not files:
        raise InputError("no tomogram given")
    stems: dict[str, Path] = {}
    for path in files.values():
        other = stems.setdefault(volume_stem(path), path)
        if other != path:
            raise InputError(
                f"{path} and {other}: the same name, so the same output files; segment "
                "them into different --out-dir folders"
            )
    # By output name, which is unique: every part sees the same order, whatever the order
    # of the folders given or of their listings.
    return sorted(files.values(), key=volume_stem)


def _outputs(tomogram: Path, out_dir: Path, settings: SegmentSettings) -> list[Path]:
    stem = volume_stem(tomogram)
    names = ["probabilities", "segmented"]
    names += ["uncertainty"] * settings.uncertainty + ["components"] * settings.components
    return [out_dir / f"{stem}_{name}.mrc" for name in names]
