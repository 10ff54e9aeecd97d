"""A checkpoint's network on its device, turned into what the sliding window calls: the
membrane probabilities of a whole tomogram, slab by slab.

Windows are read and normalised as the network learnt (see
:func:`.intensity.normalised_reader`), resampled to the pixel size it was trained at with
``rescale`` (:mod:`.rescale`), and batched through the network under autocast; on a GPU
the logits stay there and are blended there, and what ``segment`` writes is made there
(:mod:`.finishing`). Arrays are ``(z, y, x)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, warn
from ..io.geometry import Geometry
from ..io.readers import VolumeReader
from ..network.checkpoints import LoadedCheckpoint, load_network
from ..network.devices import Precision, pick_device
from .finishing import FinishedSlab, finished
from .intensity import normalised_reader
from .probabilities import probability_slabs
from .rescale import grid_window, rescaled


@dataclass
class Predictor:
    """A network ready to segment tomograms with windows of ``window`` voxels.

    Attributes
    ----------
    checkpoint
        The checkpoint the network came from, and how it was trained.
    device, precision
        Where it computes, and the autocast it uses there.
    pixel_size
        The pixel size (Å) windows are resampled to (``rescale``), else ``None``.
    forward
        The network's ``forward_zyx``, compiled once for the run with ``compile``.
    """

    checkpoint: LoadedCheckpoint
    device: torch.device
    precision: Precision
    window: int
    batch_size: int
    pixel_size: float | None
    forward: Callable[[torch.Tensor], torch.Tensor]
    compiled: bool

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        window: int,
        batch_size: int = 1,
        device: str = "auto",
        trust: bool = False,
        rescale: bool = False,
        compile: bool = False,
    ) -> Predictor:
        """Load the network of the checkpoint at ``path`` onto ``device``; ``InputError``
        for a device this machine lacks, a checkpoint that cannot segment a tomogram, or
        a ``window`` the network cannot take."""
        try:
            chosen = pick_device(device)
        except ValueError as exc:
            raise InputError(f"--device {device}: {exc}") from None
        loaded = load_network(path, trust)
        config = loaded.network.config
        if config.in_channels != 1:
            raise InputError(
                f"{path}: the network takes {config.in_channels} input channels; a tomogram has 1"
            )
        config.check_edge(window, "--window")
        if rescale and loaded.pixel_size is None:
            raise InputError(
                f"{path}: records no pixel size it was trained at, so --rescale cannot "
                "resample to it"
            )
        network = loaded.network.to(chosen).eval()
        if chosen.type == "cuda":
            # Every window has the same shape: let cuDNN time its kernels once and keep
            # the fastest; channels-last is the layout its bf16 convolutions work in.
            torch.backends.cudnn.benchmark = True
            network.to(memory_format=torch.channels_last_3d)
        forward = torch.compile(network.forward_zyx) if compile else network.forward_zyx
        return cls(
            checkpoint=loaded,
            device=chosen,
            precision=Precision.for_device(chosen),
            window=window,
            batch_size=batch_size,
            pixel_size=loaded.pixel_size if rescale else None,
            forward=forward,
            compiled=compile,
        )

    def grid(
        self, geometry: Geometry | None, pixel_size: float | None, path: Path
    ) -> tuple[int, tuple[float, float] | None]:
        """The window's edge on a tomogram's own grid, and the tomogram's and network's
        pixel sizes when they differ (``rescale``). ``pixel_size`` overrides the one of the
        tomogram's header ``geometry``; ``path`` names it in the error without either."""
        if self.pixel_size is None:
            return self.window, None
        given = pixel_size or (geometry.voxel_size[2] if geometry is not None else None)
        if given is None:
            raise InputError(f"{path}: header has no voxel size; give it with --pixel-size")
        if given == self.pixel_size:
            return self.window, None
        return grid_window(self.window, given, self.pixel_size), (given, self.pixel_size)

    def warn_padding(self, path: Path, shape, grid: int, plain: bool) -> None:
        """Warn when an axis of the tomogram at ``path`` is shorter than the ``grid``
        window: the window is then padded with the normalised mean, which moves the
        network's normalisation inside it (``plain``: not rescaled, so a window that fits
        can be named)."""
        short = [name for name, n in zip("zyx", shape) if n < grid]
        if not short:
            return
        divisor = self.checkpoint.network.config.divisor
        fit = min(shape) // divisor * divisor
        advice = (
            f"--window {fit} or less" if plain and fit >= 2 * divisor else "a smaller --window"
        )
        warn(
            f"{path}: shorter than the {grid}³ window along {' and '.join(short)}, so each "
            "window is padded with the normalised mean; networks fine-tuned here lost most of "
            f'their precision that way (benchmarks/RESULTS.md, "The window"): give {advice}'
        )

    def _predict(self, grid: int) -> Callable:
        """The sliding window's ``predict`` for windows of ``grid`` voxels: logits of a
        batch, kept on the device."""
        forward = self.forward if grid == self.window else rescaled(self.forward, self.window)

        @torch.inference_mode()
        def predict(windows) -> torch.Tensor:
            if isinstance(windows, np.ndarray):
                windows = torch.from_numpy(windows)
            count = len(windows)
            if self.compiled and count < self.batch_size:
                # A row's last, smaller batch is padded: a new batch size would make the
                # compiled network compile again, for every shape.
                padding = windows.new_zeros((self.batch_size - count, *windows.shape[1:]))
                windows = torch.cat([windows, padding])
            x = windows[:, None].to(self.device, non_blocking=True)
            with self.precision.autocast():
                logits = forward(x)
            return logits[:count, 0].float()

        return predict

    def _prepare(self) -> Callable | None:
        if self.device.type != "cuda":
            return None

        def pin(windows: np.ndarray) -> torch.Tensor:
            # In the reading threads: a GPU copies from pinned memory without making the
            # host wait for the work queued before it.
            return torch.from_numpy(windows).pin_memory()

        return pin

    def slabs(
        self,
        reader: VolumeReader,
        grid: int,
        overlap: float,
        tta: bool,
        variance: bool,
        threshold: float,
        on_window: Callable[[int], None] | None = None,
    ) -> Iterator[FinishedSlab]:
        """What ``segment`` writes of ``reader``'s volume, slab by slab in z order: the
        membrane probabilities, the voxels above ``threshold`` and (with ``tta`` and
        ``variance``) the variance of the 8 flipped passes' probabilities, made on the
        network's device (see :mod:`.finishing`). The volume's intensity statistics are
        taken here, before the first slab is asked for."""
        read = normalised_reader(reader, self.checkpoint.normalisation)
        keep_chunks = getattr(reader, "keep_chunks", None)  # a chunked (Zarr) volume's
        if keep_chunks is not None:  # overlapping windows come back to the chunks they share
            keep_chunks()
        run = (read, reader.info.shape, self._predict(grid), grid, overlap, self.batch_size)
        slabs = probability_slabs(
            *run, tta, variance, on_window=on_window, prepare=self._prepare()
        )
        return (finished(z0, p, v, threshold) for z0, p, v in slabs)
