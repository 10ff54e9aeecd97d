"""Decompressed chunks of a chunked volume kept for the reads that come back to them.

A read of a Zarr array decompresses every chunk it touches, however little of it the read
keeps. ``segment``'s windows overlap and are smaller than the CZ cryoET Data Portal's
256³ chunks, so without a cache each chunk of a tomogram is decompressed once per window
crossing it: for every 160³ window at ``segment``'s overlap (0.5) of a 1024 × 1024 × 500
float32 tomogram, 84 times the volume in 256³ chunks, 14 times in 64³ chunks
(benchmarks/zarr_windows.py, benchmarks/RESULTS.md). :class:`ChunkCache` keeps the chunks
last read, least recently used out first, within a byte budget, and reads the chunks a
block lacks in one read of the array (their bounding box): 4 and 2.5 times the volume.

Reads may come from several threads at once (``segment`` reads windows ahead of the
network in a few): a chunk being read by one thread is waited for by the others, not
read twice. A read larger than half the budget (a whole volume; every read with a budget
of 0) goes straight to the array and leaves the cache as it was.

Blocks are ``(z, y, x)``.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from .geometry import Index3

BUDGET_BYTES = 512 << 20
"""Decompressed chunks kept at most, in bytes, unless :data:`MIN_CHUNKS` chunks take more
(up to :data:`MAX_BUDGET_BYTES`)."""
MAX_BUDGET_BYTES = 2 << 30
"""Decompressed chunks kept at most whatever their size, in bytes."""
MIN_CHUNKS = 16
"""Chunks kept at least: those of two neighbouring 160³ windows (2 × 2 × 2 chunks of 256³
each) and more. With room for one window's chunks only, each window would decompress its
chunks again (benchmarks/zarr_windows.py, ``--budgets 512``, benchmarks/RESULTS.md)."""

Key = tuple[int, int, int]


def _bytes(chunks: Index3, dtype: np.dtype) -> int:
    """Bytes of one decompressed chunk."""
    return int(np.prod(chunks)) * np.dtype(dtype).itemsize


class ChunkCache:
    """Block reads of a volume of ``shape`` stored in ``chunks`` through ``read_region``
    (``read_region(start, stop)`` returns the block ``[start, stop)`` as a new array),
    keeping decompressed chunks for the reads that come back to them (at most ``budget``
    bytes; by default :data:`BUDGET_BYTES` or :data:`MIN_CHUNKS` chunks, whichever is
    more)."""

    def __init__(
        self,
        read_region: Callable[[Index3, Index3], np.ndarray],
        shape: Index3,
        chunks: Index3,
        dtype: np.dtype,
        budget: int | None = None,
    ):
        self._read_region, self.shape, self.chunks = read_region, shape, chunks
        self.dtype = np.dtype(dtype)
        self.budget = self.default_budget(chunks, dtype) if budget is None else budget
        self.decompressed = 0
        """Bytes of the whole chunks read from the array so far (each read decompresses
        every chunk it touches)."""
        self._blocks: OrderedDict[Key, np.ndarray] = OrderedDict()
        self._pending: dict[Key, threading.Event] = {}
        self._held = 0
        self._lock = threading.Lock()

    @staticmethod
    def default_budget(chunks: Index3, dtype: np.dtype) -> int:
        """:data:`BUDGET_BYTES`, or :data:`MIN_CHUNKS` chunks if they take more, but never
        more than :data:`MAX_BUDGET_BYTES` (chunks of a whole slab, or a whole volume)."""
        return min(max(BUDGET_BYTES, MIN_CHUNKS * _bytes(chunks, dtype)), MAX_BUDGET_BYTES)

    def read(self, start: Index3, stop: Index3) -> np.ndarray:
        """The block ``[start, stop)`` as a new array."""
        keys = list(itertools.product(*(range(*self._span(a, start, stop)) for a in range(3))))
        beyond = any(b > n for b, n in zip(stop, self.shape))  # as the array answers it
        if beyond or len(keys) * self._chunk_bytes() > self.budget // 2:
            return self._region(start, stop)
        blocks, waits, missing = self._claim(keys)
        if missing:
            self._fetch(missing, blocks)
        for key, event in waits:
            event.wait()
            with self._lock:
                found = self._blocks.get(key)
            blocks[key] = found if found is not None else self._region(*self._bounds(key))
        out = np.empty(tuple(b - a for a, b in zip(start, stop)), self.dtype)
        for key, block in blocks.items():
            low, high = self._bounds(key)
            inner = tuple(
                slice(max(a, s) - a, min(b, e) - a) for a, b, s, e in zip(low, high, start, stop)
            )
            place = tuple(
                slice(max(a, s) - s, min(b, e) - s) for a, b, s, e in zip(low, high, start, stop)
            )
            out[place] = block[inner]
        return out

    def _region(self, start: Index3, stop: Index3) -> np.ndarray:
        region = self._read_region(start, stop)
        touched = np.prod([np.subtract(*self._span(a, start, stop)[::-1]) for a in range(3)])
        self.decompressed += int(touched) * self._chunk_bytes()  # unlocked: about right
        return region

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()
            self._held = 0

    def _span(self, axis: int, start: Index3, stop: Index3) -> tuple[int, int]:
        size = self.chunks[axis]
        return start[axis] // size, -(-stop[axis] // size)

    def _bounds(self, key: Key) -> tuple[Index3, Index3]:
        low = tuple(k * c for k, c in zip(key, self.chunks))
        high = tuple(min(a + c, n) for a, c, n in zip(low, self.chunks, self.shape))
        return low, high  # type: ignore[return-value]

    def _chunk_bytes(self) -> int:
        return _bytes(self.chunks, self.dtype)

    def _claim(self, keys: list[Key]):
        """Chunks at hand, chunks another thread is reading (with its event) and chunks
        this read must fetch (marked as being read)."""
        blocks: dict[Key, np.ndarray] = {}
        waits: list[tuple[Key, threading.Event]] = []
        missing: list[Key] = []
        with self._lock:
            for key in keys:
                if key in self._blocks:
                    self._blocks.move_to_end(key)
                    blocks[key] = self._blocks[key]
                elif key in self._pending:
                    waits.append((key, self._pending[key]))
                else:
                    missing.append(key)
            event = threading.Event()
            for key in missing:
                self._pending[key] = event
        return blocks, waits, missing

    def _fetch(self, missing: list[Key], blocks: dict[Key, np.ndarray]) -> None:
        """Read the chunks ``missing`` in one read of their bounding box into ``blocks``
        and the cache; whatever happens, release the threads waiting for them."""
        event = self._pending[missing[0]]
        try:
            low = tuple(min(k[a] for k in missing) for a in range(3))
            high = tuple(max(k[a] for k in missing) for a in range(3))
            start, _ = self._bounds(low)  # type: ignore[arg-type]
            _, stop = self._bounds(high)  # type: ignore[arg-type]
            region = self._region(start, stop)
            for key in missing:
                a, b = self._bounds(key)
                inside = tuple(slice(p - s, q - s) for p, q, s in zip(a, b, start))
                # A copy, never a view: a view would keep the whole region alive.
                blocks[key] = region if len(missing) == 1 else region[inside].copy()
            with self._lock:
                for key in missing:
                    self._blocks[key] = blocks[key]
                    self._held += blocks[key].nbytes
                while self._held > self.budget and self._blocks:
                    self._held -= self._blocks.popitem(last=False)[1].nbytes
        finally:
            with self._lock:
                for key in missing:
                    self._pending.pop(key, None)
            event.set()
