"""What ``segment`` writes, made where the probabilities were computed and written by a
thread of its own behind the window loop.

Each slab of probabilities becomes three arrays: the probabilities as float16, the
segmentation as int8 (the float32 probabilities above the threshold) and, with test-time
augmentation, the variance as float16. For a network on a GPU they are made there, so
the thread that launches the network never converts a slab, and copied back on a stream
of their own once the work that made them is done: that thread never waits for the GPU's
queue to empty (a plain copy back would wait for every window launched before it), and
the GPU goes on with the next row of windows while the last row is written. Slabs not yet
written wait in GPU memory (at most :data:`DEVICE_QUEUE_BYTES`, or a tenth of what is
free), not the host's.

:func:`write_in_order` hands the slabs to a writing thread; the caller waits only when
too many are waiting (:data:`HOST_QUEUE_BYTES` of host arrays). Arrays are ``(z, y, x)``.
"""

from __future__ import annotations

import functools
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

WRITE_BEHIND = True
"""Write in a thread of its own (benchmarks turn it off to measure what that saves)."""
HOST_QUEUE_BYTES = 64 << 20
"""Host arrays handed on but not yet written, at most (beyond one slab)."""
DEVICE_QUEUE_BYTES = 1 << 30
"""GPU arrays handed on but not yet written, at most (beyond one slab): at 928 x 928, the
finished slices of about five rows of 160³ windows (80 slices a row, 3 bytes a voxel)."""
DEVICE_QUEUE_SHARE = 0.1
"""Nor more than this share of the GPU memory free when the first slab is made: slabs
waiting must not push a GPU that the network just fits on out of memory."""

Write = Callable[[int, np.ndarray, np.ndarray, "np.ndarray | None"], None]
"""``write(z0, probabilities, segmentation, variance)``: stores one slab of each output
(``variance`` ``None`` when not asked for)."""


@dataclass(frozen=True)
class FinishedSlab:
    """One slab ``(n, y, x)`` of each output, from z slice ``z0`` on: float16
    probabilities, int8 segmentation and float16 variance (or ``None``); NumPy arrays, or
    torch tensors on a GPU that are complete once ``made`` (a CUDA event) has happened."""

    z0: int
    arrays: tuple[Any, Any, Any]
    made: Any = None

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.arrays if a is not None)

    def on_host(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The three arrays as NumPy arrays: GPU tensors are copied back on a stream of
        their own, after ``made``, so only the calling thread waits for them."""
        if self.made is None:
            return self.arrays
        import torch

        device = self.arrays[0].device
        stream = _copy_stream(device)
        with torch.cuda.device(device), torch.cuda.stream(stream):
            stream.wait_event(self.made)
            return tuple(None if a is None else _on_host(a) for a in self.arrays)


def finished(z0: int, probabilities, variance, threshold: float) -> FinishedSlab:
    """The outputs of one slab ``(n, y, x)`` of float32 ``probabilities`` (and
    ``variance``, or ``None``), NumPy arrays or torch tensors, made where they are.

    The segmentation thresholds the float32 probabilities, as MemBrain-seg thresholds its
    float32 logits: rounding to float16 first would turn every voxel within 2^-11 above the
    threshold (|logit| < 1e-3) into background."""
    if isinstance(probabilities, np.ndarray):
        return FinishedSlab(
            z0,
            (
                probabilities.astype(np.float16),
                (probabilities > threshold).astype(np.int8),
                None if variance is None else variance.astype(np.float16),
            ),
        )
    import torch

    arrays = (
        probabilities.half(),
        (probabilities > threshold).to(torch.int8),
        None if variance is None else variance.half(),
    )
    device = probabilities.device
    if device.type != "cuda":
        return FinishedSlab(z0, tuple(None if a is None else a.numpy() for a in arrays))
    made = torch.cuda.Event()
    made.record(torch.cuda.current_stream(device))
    return FinishedSlab(z0, arrays, made)


def write_in_order(slabs: Iterable[FinishedSlab], write: Write) -> None:
    """``write`` each of ``slabs`` in order, in one thread behind the caller's (with
    :data:`WRITE_BEHIND`), so that making the next slabs never waits for the disk.

    An error of ``write`` is raised here, at the next slab or at the end, and no slab
    after it is written. On an error here (or in ``slabs``), the slabs not yet started
    are dropped and the one being written is finished before this returns: the files
    ``write`` writes to can then be let go of safely."""
    if not WRITE_BEHIND:
        for slab in slabs:
            write(slab.z0, *slab.on_host())
        return
    stopped = threading.Event()  # a write failed, or the caller did: write no more

    def write_one(slab: FinishedSlab) -> None:
        if stopped.is_set():
            return
        try:
            write(slab.z0, *slab.on_host())
        except BaseException:
            stopped.set()
            raise

    pending: deque[tuple[Future, FinishedSlab]] = deque()
    budget = None  # of GPU memory, set by the first slab made there
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="write-slabs") as pool:
            try:
                for slab in slabs:
                    if budget is None and slab.made is not None:
                        budget = _device_budget(slab.arrays[0].device)
                    pending.append((pool.submit(write_one, slab), slab))
                    while pending and (pending[0][0].done() or _too_many(pending, budget)):
                        pending.popleft()[0].result()
                while pending:
                    pending.popleft()[0].result()
            finally:
                stopped.set()
    finally:
        pending.clear()  # an error's traceback keeps this frame: let the slabs go


def _too_many(pending: deque[tuple[Future, FinishedSlab]], device_budget: float | None) -> bool:
    """Whether the slabs waiting, the newest aside, hold more than their budget (of GPU
    memory: ``device_budget``; of host memory: :data:`HOST_QUEUE_BYTES`)."""
    waiting = [slab for _, slab in list(pending)[:-1]]
    on_device = sum(slab.nbytes for slab in waiting if slab.made is not None)
    on_host = sum(slab.nbytes for slab in waiting if slab.made is None)
    return on_device > (device_budget or 0) or on_host > HOST_QUEUE_BYTES


def _device_budget(device) -> float:
    """Bytes of finished slabs that may wait on ``device`` (see :data:`DEVICE_QUEUE_SHARE`)."""
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    return min(DEVICE_QUEUE_BYTES, DEVICE_QUEUE_SHARE * free)


def _on_host(tensor) -> np.ndarray:
    """``tensor`` copied to the host; running out of host memory is a ``MemoryError``
    (torch's allocator raises a ``RuntimeError`` that says so in words only)."""
    try:
        return tensor.cpu().numpy()
    except RuntimeError as exc:
        if "can't allocate memory" in str(exc):
            raise MemoryError(str(exc)) from None
        raise


@functools.cache
def _copy_stream(device) -> Any:
    """The CUDA stream that copies finished slabs of ``device`` back to the host."""
    import torch

    return torch.cuda.Stream(device)
