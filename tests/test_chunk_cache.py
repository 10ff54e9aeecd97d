"""The chunk cache of Zarr reads: the same blocks as the array, each chunk decompressed once
while it is kept, reads from several threads at once, failures that reach every reader."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from patch_corrections.inference.sliding_window import window_starts
from patch_corrections.io.chunk_cache import ChunkCache

CHUNKS = (8, 8, 8)
CHUNK_BYTES = 8**3 * 4


class Array:
    """A volume read region by region, counting how often each chunk was read."""

    def __init__(self, shape=(24, 40, 48), fail_at=None):
        self.data = np.random.default_rng(0).normal(size=shape).astype(np.float32)
        self.reads: Counter = Counter()
        self.fail_at, self.lock = fail_at, threading.Lock()

    def region(self, start, stop):
        spans = [range(a // c, -(-b // c)) for a, b, c in zip(start, stop, CHUNKS)]
        with self.lock:
            for key in np.ndindex(*(len(s) for s in spans)):
                self.reads[tuple(s[k] for s, k in zip(spans, key))] += 1
        if self.fail_at is not None and all(
            a <= f < b for a, b, f in zip(start, stop, self.fail_at)
        ):
            raise OSError("damaged chunk")
        return self.data[tuple(slice(a, b) for a, b in zip(start, stop))].copy()


def cache_of(array: Array, budget: int) -> ChunkCache:
    return ChunkCache(array.region, array.data.shape, CHUNKS, array.data.dtype, budget)


def windows(shape, window=16, overlap=0.5):
    starts = [window_starts(n, window, overlap) for n in shape]
    return [
        ((z, y, x), (z + window, y + window, x + window))
        for z in starts[0]
        for y in starts[1]
        for x in starts[2]
    ]


def test_blocks_equal_the_arrays_and_overlapping_windows_read_each_chunk_once():
    array = Array()
    cache = cache_of(array, budget=array.data.nbytes)
    for start, stop in windows(array.data.shape):
        expected = array.data[tuple(slice(a, b) for a, b in zip(start, stop))]
        np.testing.assert_array_equal(cache.read(start, stop), expected)
    assert set(array.reads.values()) == {1}  # every chunk decompressed once
    assert cache.decompressed == array.data.nbytes
    # Each kept chunk owns its memory: no view keeps a larger read alive.
    assert all(block.base is None for block in cache._blocks.values())
    assert cache._held == sum(block.nbytes for block in cache._blocks.values())

    uncached = Array()
    for start, stop in windows(uncached.data.shape):
        uncached.region(start, stop)
    assert max(uncached.reads.values()) == 8  # what a plain read of each window costs


def test_a_small_budget_still_reads_right_and_reuses_neighbouring_windows():
    array = Array()
    rng = np.random.default_rng(2)
    cache = cache_of(array, budget=16 * CHUNK_BYTES)
    for _ in range(200):
        start = tuple(int(rng.integers(0, n)) for n in array.data.shape)
        stop = tuple(
            int(rng.integers(a + 1, min(a + 16, n) + 1)) for a, n in zip(start, array.data.shape)
        )
        expected = array.data[tuple(slice(a, b) for a, b in zip(start, stop))]
        np.testing.assert_array_equal(cache.read(start, stop), expected)
    assert cache._held <= cache.budget

    array = Array()
    cache = cache_of(array, budget=16 * CHUNK_BYTES)
    for start, stop in windows(array.data.shape):
        cache.read(start, stop)
    plain = Array()
    for start, stop in windows(plain.data.shape):
        plain.region(start, stop)
    # Each window after the first of its row along x reads only the 4 chunks it does
    # not share with the one before: 8 + 4 × 4 of 5 × 8 chunks per row.
    assert sum(array.reads.values()) == 0.6 * sum(plain.reads.values())


def test_a_read_larger_than_half_the_budget_goes_to_the_array_and_keeps_the_cache():
    array = Array()
    cache = cache_of(array, budget=16 * CHUNK_BYTES)
    cache.read((0, 0, 0), (8, 8, 8))
    whole = cache.read((0, 0, 0), array.data.shape)
    np.testing.assert_array_equal(whole, array.data)
    assert list(cache._blocks) == [(0, 0, 0)]


def test_threads_reading_the_same_chunks_read_each_once():
    array = Array()
    cache = cache_of(array, budget=array.data.nbytes)
    blocks = windows(array.data.shape) * 3
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda w: cache.read(*w), blocks))
    for (start, stop), got in zip(blocks, results):
        np.testing.assert_array_equal(
            got, array.data[tuple(slice(a, b) for a, b in zip(start, stop))]
        )
    assert set(array.reads.values()) == {1}


def test_a_failed_read_reaches_every_reader_and_none_waits_forever():
    array = Array(fail_at=(20, 36, 44))
    cache = cache_of(array, budget=array.data.nbytes)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(cache.read, (16, 32, 40), (24, 40, 48)) for _ in range(4)]
        for future in futures:
            with pytest.raises(OSError, match="damaged chunk"):
                future.result(timeout=10)
    np.testing.assert_array_equal(cache.read((0, 0, 0), (8, 8, 8)), array.data[:8, :8, :8])
    assert not cache._pending


def test_reads_beyond_the_volume_are_the_arrays_and_a_closed_cache_keeps_nothing():
    array = Array()
    cache = cache_of(array, budget=array.data.nbytes)
    np.testing.assert_array_equal(
        cache.read((16, 32, 40), (30, 50, 60)), array.data[16:, 32:, 40:]
    )
    assert not cache._blocks
    cache.read((0, 0, 0), (8, 8, 8))
    cache.budget = 0  # as a reader's close() leaves it: reads still running keep nothing
    cache.clear()
    cache.read((0, 0, 0), (16, 16, 16))
    assert not cache._blocks and cache._held == 0
