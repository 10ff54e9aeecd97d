"""Running a loaded network over one tomogram: normalisation, rescaling, the sliding
window, and the output files written slab by slab. Used by :mod:`.segmentation`."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError
from ..io.files import StagedFiles, remove_leftovers_of
from ..io.manifest import as_xyz
from ..io.mrc import MrcSlabWriter
from ..io.volumes import Geometry, closing_reader, read_volume, write_volume
from ._common import collect_warnings, warn
from .events import Listener, Progress

if TYPE_CHECKING:
    from .segmentation import SegmentSettings


@dataclass
class LoadedNetwork:
    """A checkpoint's network on its device, with how it wants its input."""

    network: object
    target: object
    precision: object
    normalisation: str
    pixel_size: float | None
    """The pixel size (Å) to resample windows to, with ``rescale``."""
    forward_zyx: Callable
    """The network's ``forward_zyx``, compiled with ``settings.compile`` (once per run)."""

    @classmethod
    def load(cls, checkpoint: Path, settings: SegmentSettings) -> LoadedNetwork:
        from ..checkpoints import (
            network_from_checkpoint,
            normalisation_of,
            pixel_size_of,
            read_checkpoint,
        )
        from ..devices import Precision, pick_device
        from ..intensity import NORMALISATIONS

        try:
            target = pick_device(settings.device)
        except ValueError as exc:
            raise InputError(f"--device {settings.device}: {exc}") from None
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
        if settings.window % network.config.divisor:
            raise InputError(
                f"--window {settings.window}: must be a multiple of {network.config.divisor} "
                "for this network"
            )
        if settings.window < 2 * network.config.divisor:
            raise InputError(
                f"--window {settings.window}: at least {2 * network.config.divisor} for this "
                "network (its deepest level needs more than one voxel)"
            )
        pixel_size = pixel_size_of(content) if settings.rescale else None
        if settings.rescale and pixel_size is None:
            raise InputError(
                f"{checkpoint}: records no pixel size it was trained at, so --rescale "
                "cannot resample to it"
            )
        network.to(target).eval()
        if target.type == "cuda":
            import torch

            # Every window has the same shape: let cuDNN time its kernels once and keep
            # the fastest; channels-last is the layout its bf16 convolutions work in.
            torch.backends.cudnn.benchmark = True
            network.to(memory_format=torch.channels_last_3d)
        forward = network.forward_zyx
        if settings.compile:
            import torch

            forward = torch.compile(forward)
        return cls(
            network, target, Precision.for_device(target), normalisation, pixel_size, forward
        )


def segment_one(
    tomogram: Path,
    loaded: LoadedNetwork,
    outputs: list[Path],
    settings: SegmentSettings,
    listener: Listener,
) -> dict:
    """Segment one tomogram with a loaded network; the fields of its report (see
    :class:`.segmentation.SegmentReport`), warnings included.

    Running out of GPU or host memory is an ``InputError`` that names the tomogram and
    what to change, so a run over many tomograms goes on with the others."""
    import torch

    try:
        return _segment_one(tomogram, loaded, outputs, settings, listener)
    except (torch.cuda.OutOfMemoryError, MemoryError) as exc:
        where = "GPU" if isinstance(exc, torch.cuda.OutOfMemoryError) else "host"
        if where == "GPU":
            torch.cuda.empty_cache()
        extra = " or without --uncertainty" if settings.uncertainty else ""
        raise InputError(
            f"{tomogram}: out of {where} memory with {settings.window}³ windows, batch "
            f"{settings.batch_size}{', TTA' if settings.tta else ''}; try a smaller "
            f"--batch-size{extra}"
        ) from None


def _segment_one(
    tomogram: Path,
    loaded: LoadedNetwork,
    outputs: list[Path],
    settings: SegmentSettings,
    listener: Listener,
) -> dict:
    import torch

    from ..components import connected_components, smallest_label_dtype
    from ..infer import FLIPS, sliding_window, tta_with_variance, windows_count
    from ..intensity import (
        ZSCORE,
        normalise,
        robust_statistics,
        spread_sample,
        volume_statistics,
    )
    from ..rescale import grid_window, rescaled

    target, precision = loaded.target, loaded.precision
    window, threshold = settings.window, settings.threshold
    with collect_warnings() as warned:
        probabilities_path, labels_path, *extra = outputs
        out_dir = probabilities_path.parent
        extra_path = {
            "uncertainty": extra.pop(0) if settings.uncertainty else None,
            "components": extra.pop(0) if settings.components else None,
        }
        with closing_reader(tomogram) as reader:
            shape = reader.info.shape
            geometry = reader.info.geometry or Geometry((1.0, 1.0, 1.0))
            if reader.info.geometry is None:
                warn(f"{tomogram}: header has no voxel size; outputs are written with 1 Å")
            pixel_sizes, grid = None, window
            if loaded.pixel_size is not None:
                network_pixel_size = loaded.pixel_size
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
                loaded.forward_zyx if grid == window else rescaled(loaded.forward_zyx, window)
            )
            prepare = None
            if target.type == "cuda":

                def prepare(windows: np.ndarray) -> torch.Tensor:
                    # In the reading threads: a GPU copies from pinned memory without
                    # making the host wait for the work queued before it.
                    return torch.from_numpy(windows).pin_memory()

            @torch.inference_mode()
            def predict(windows) -> torch.Tensor:
                # The logits stay on the device: the sliding window blends them there.
                if isinstance(windows, np.ndarray):
                    windows = torch.from_numpy(windows)
                count = len(windows)
                if settings.compile and count < settings.batch_size:
                    # A row's last, smaller batch is padded: a new batch size would make
                    # the compiled network compile again, for every shape.
                    padding = windows.new_zeros((settings.batch_size - count, *windows.shape[1:]))
                    windows = torch.cat([windows, padding])
                x = windows[:, None].to(target, non_blocking=True)
                with precision.autocast():
                    logits = forward(x)
                return logits[:count, 0].float()

            sample = spread_sample(reader)
            if sample.dtype.kind == "f" and not np.isfinite(sample).all():
                warn(f"{tomogram}: holds NaN or infinite values; they are read as the mean")
            zscore = loaded.normalisation == ZSCORE
            # MemBrain-seg's networks learnt the whole tomogram's mean and deviation, ours
            # the robust statistics of a sample.
            statistics = volume_statistics(reader) if zscore else robust_statistics(sample)

            def read_block(start, stop) -> np.ndarray:
                block = reader.read_block(start, stop)  # a fresh array
                return normalise(block, statistics, in_place=True, clip=not zscore)

            windows = windows_count(shape, grid, settings.overlap)
            total = windows * (len(FLIPS) if settings.tta else 1)
            if remove_leftovers_of(outputs):
                warn(f"{tomogram}: removed the temporary outputs an interrupted run left")
            staged = StagedFiles()
            try:
                staged.make_dirs(out_dir)
                # Writers close on success and let go of their files unfinished on an
                # error, before discard removes them: a batch goes on to the next tomogram.
                with ExitStack() as writers:
                    scores = writers.enter_context(
                        MrcSlabWriter(
                            staged.stage(probabilities_path, ".mrc"), shape, np.float16, geometry
                        )
                    )
                    labels_staged = staged.stage(labels_path, ".mrc")
                    labels = writers.enter_context(
                        MrcSlabWriter(labels_staged, shape, np.int8, geometry)
                    )
                    spread = None
                    if extra_path["uncertainty"] is not None:
                        spread = writers.enter_context(
                            MrcSlabWriter(
                                staged.stage(extra_path["uncertainty"], ".mrc"),
                                shape,
                                np.float16,
                                geometry,
                            )
                        )
                    done = 0
                    listener.progress(Progress("Segmenting", done, total))

                    def advance(count: int) -> None:
                        nonlocal done
                        done += count
                        listener.progress(Progress("Segmenting", done, total))

                    run = (read_block, shape, predict, grid, settings.overlap, settings.batch_size)
                    if spread is not None:
                        slabs = tta_with_variance(*run, on_window=advance, prepare=prepare)
                    else:
                        slabs = (
                            (z0, slab, None)
                            for z0, slab in sliding_window(
                                *run, settings.tta, on_window=advance, prepare=prepare
                            )
                        )
                    for z0, slab, variance in slabs:
                        # Threshold the float32 probabilities, as MemBrain-seg thresholds its
                        # float32 logits: rounding to float16 first would turn every voxel
                        # within 2^-11 above the threshold (|logit| < 1e-3) into background.
                        scores.write(z0, slab.astype(np.float16))
                        labels.write(z0, (slab > threshold).astype(np.int8))
                        if spread is not None:
                            spread.write(z0, variance.astype(np.float16))
                    membrane = labels.mean
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
    return {
        "tomogram": tomogram,
        "shape_xyz": tuple(as_xyz(shape)),
        "windows": windows,
        "grid_window": grid,
        "pixel_sizes": pixel_sizes,
        "device": str(target),
        "membrane_share": membrane,
        "peak_gpu_gib": peak,
        "probabilities": probabilities_path,
        "segmentation": labels_path,
        "uncertainty": extra_path["uncertainty"],
        "components": extra_path["components"],
        "component_count": component_count,
        "warnings": warned,
    }
