"""Segmentation: a whole tomogram through the network, window by window."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..constants import PATCH_SIZE
from ..errors import InputError
from ..io.files import StagedFiles
from ..io.manifest import as_xyz
from ..io.mrc import MrcSlabWriter
from ..io.volumes import (
    Geometry,
    VolumeReader,
    closing_reader,
    read_volume,
    volume_stem,
    write_volume,
)
from ._common import check_out_dir, collect_warnings, require_free, warn
from .events import SILENT, Listener, Progress

NORMALISATION_SAMPLE = 2_000_000
"""Voxels sampled (evenly spread) to normalise a tomogram, instead of reading it twice."""


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
        Average over the 8 flips of every window (8x slower).
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
    scores: Path
    """Float16 membrane probabilities, MRC."""
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

    Writes ``<stem>_scores.mrc`` (probabilities) and ``<stem>_segmented.mrc`` (0/1,
    thresholded from the stored scores so both agree) into ``out_dir``, with the
    tomogram's voxel size and origin. Only one slab of windows is held in memory.
    """
    import torch

    from ..checkpoints import (
        network_from_checkpoint,
        normalisation_of,
        pixel_size_of,
        read_checkpoint,
    )
    from ..components import connected_components, smallest_label_dtype
    from ..data import NORMALISATIONS, ZSCORE, normalise, robust_statistics
    from ..devices import Precision, pick_device
    from ..infer import FLIPS, sliding_window, tta_with_variance, windows_count
    from ..rescale import grid_window, rescaled

    tomogram, checkpoint, out_dir = Path(tomogram), Path(checkpoint), Path(out_dir)
    window, threshold = settings.window, settings.threshold
    with collect_warnings() as warned:
        try:
            target = pick_device(settings.device)
        except ValueError as exc:
            raise InputError(f"--device {settings.device}: {exc}") from None
        check_out_dir(out_dir)
        stem = volume_stem(tomogram)
        scores_path = out_dir / f"{stem}_scores.mrc"
        labels_path = out_dir / f"{stem}_segmented.mrc"
        extra_path = {
            "uncertainty": out_dir / f"{stem}_uncertainty.mrc" if settings.uncertainty else None,
            "components": out_dir / f"{stem}_components.mrc" if settings.components else None,
        }
        outputs = [scores_path, labels_path, *(p for p in extra_path.values() if p)]
        require_free(outputs, settings.overwrite)
        content = read_checkpoint(checkpoint, settings.trust_checkpoint)
        network, _ = network_from_checkpoint(content, checkpoint)
        normalisation = normalisation_of(content)
        if normalisation not in NORMALISATIONS:
            raise InputError(f"{checkpoint}: unknown intensity normalisation {normalisation!r}")
        if network.config.in_channels != 1:
            raise InputError(
                f"{checkpoint}: the network takes {network.config.in_channels} input channels; "
                "a tomogram has 1"
            )
        if window % network.config.divisor:
            raise InputError(
                f"--window {window}: must be a multiple of {network.config.divisor} for "
                "this network"
            )
        network.to(target).eval()
        precision = Precision.for_device(target)
        network_pixel_size = pixel_size_of(content) if settings.rescale else None
        if settings.rescale and network_pixel_size is None:
            raise InputError(
                f"{checkpoint}: records no pixel size it was trained at, so --rescale "
                "cannot resample to it"
            )

        with closing_reader(tomogram) as reader:
            shape = reader.info.shape
            geometry = reader.info.geometry or Geometry((1.0, 1.0, 1.0))
            if reader.info.geometry is None:
                warn(f"{tomogram}: header has no voxel size; outputs are written with 1 Å")
            pixel_sizes, grid = None, window
            if network_pixel_size is not None:
                pixel_size = settings.pixel_size or (
                    reader.info.geometry.voxel_size[2] if reader.info.geometry else None
                )
                if pixel_size is None:
                    raise InputError(
                        f"{tomogram}: header has no voxel size; give it with --pixel-size"
                    )
                if pixel_size != network_pixel_size:
                    pixel_sizes = (pixel_size, network_pixel_size)
                    grid = grid_window(window, pixel_size, network_pixel_size)
            forward = (
                network.forward_zyx if grid == window else rescaled(network.forward_zyx, window)
            )

            @torch.inference_mode()
            def predict(windows: np.ndarray) -> np.ndarray:
                x = torch.from_numpy(windows)[:, None].to(target)
                with precision.autocast():
                    logits = forward(x)
                return logits[:, 0].float().cpu().numpy()

            sample = _spread_sample(reader, NORMALISATION_SAMPLE)
            if sample.dtype.kind == "f" and not np.isfinite(sample).all():
                warn(f"{tomogram}: holds NaN or infinite values; they are read as the mean")
            zscore = normalisation == ZSCORE
            # MemBrain-seg's networks learnt the whole tomogram's mean and deviation, ours
            # the robust statistics of a sample.
            statistics = _volume_statistics(reader) if zscore else robust_statistics(sample)

            def read_block(start, stop) -> np.ndarray:
                block = reader.read_block(start, stop)  # a fresh array
                return normalise(block, statistics, in_place=True, clip=not zscore)

            windows = windows_count(shape, grid, settings.overlap)
            total = windows * (len(FLIPS) if settings.tta else 1)
            staged = StagedFiles()
            try:
                staged.make_dirs(out_dir)
                scores = MrcSlabWriter(
                    staged.stage(scores_path, ".mrc"), shape, np.float16, geometry
                )
                labels_staged = staged.stage(labels_path, ".mrc")
                labels = MrcSlabWriter(labels_staged, shape, np.int8, geometry)
                spread = None
                if extra_path["uncertainty"] is not None:
                    spread = MrcSlabWriter(
                        staged.stage(extra_path["uncertainty"], ".mrc"),
                        shape,
                        np.float16,
                        geometry,
                    )
                done = 0
                listener.progress(Progress("Segmenting", done, total))

                def advance(count: int) -> None:
                    nonlocal done
                    done += count
                    listener.progress(Progress("Segmenting", done, total))

                run = (read_block, shape, predict, grid, settings.overlap, settings.batch_size)
                if spread is not None:
                    slabs = tta_with_variance(*run, on_window=advance)
                else:
                    slabs = (
                        (z0, slab, None)
                        for z0, slab in sliding_window(*run, settings.tta, on_window=advance)
                    )
                for z0, slab, variance in slabs:
                    # Threshold what is stored, so both files agree voxel for voxel.
                    stored = slab.astype(np.float16)
                    scores.write(z0, stored)
                    labels.write(z0, (stored > threshold).astype(np.int8))
                    if spread is not None:
                        spread.write(z0, variance.astype(np.float16))
                membrane = labels.mean
                for writer in (scores, labels, spread):
                    if writer is not None:
                        writer.close()
                component_count = None
                if extra_path["components"] is not None:
                    found = connected_components(
                        read_volume(labels_staged)[0], settings.min_component_size
                    )
                    component_count = int(found.max()) if found.size else 0
                    write_volume(
                        staged.stage(extra_path["components"], ".mrc"),
                        found.astype(smallest_label_dtype(found)),
                        geometry,
                    )
            except BaseException:
                staged.discard()
                raise
            staged.commit()
        peak = torch.cuda.max_memory_allocated(target) / 2**30 if target.type == "cuda" else None
    return SegmentReport(
        tomogram,
        tuple(as_xyz(shape)),  # type: ignore[arg-type]
        windows,
        grid,
        pixel_sizes,
        str(target),
        membrane,
        peak,
        scores_path,
        labels_path,
        extra_path["uncertainty"],
        extra_path["components"],
        component_count,
        settings,
        warned,
    )


def _spread_sample(reader: VolumeReader, count: int) -> np.ndarray:
    """About ``count`` voxels spread evenly through the volume, read slice by slice."""
    nz, ny, nx = reader.info.shape
    slices = np.unique(np.linspace(0, nz - 1, min(nz, 32)).astype(int))
    stride = max(1, int(np.sqrt(ny * nx * len(slices) / count)))
    parts = [reader.read_block((z, 0, 0), (z + 1, ny, nx))[0, ::stride, ::stride] for z in slices]
    return np.concatenate([p.ravel() for p in parts])


def _volume_statistics(reader: VolumeReader) -> tuple[float, float]:
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
