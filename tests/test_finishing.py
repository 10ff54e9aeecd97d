"""What segment writes is made where the probabilities are, and written by a thread of its
own behind the window loop: in order, never lost, and an error reaches the caller."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from patch_corrections.inference import finishing
from patch_corrections.inference.finishing import finished, write_in_order

ON_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _cuda(test):
    """A test of a GPU path: skipped without one, selected by ``pytest -m cuda`` (what the
    GPU check runs)."""
    return pytest.mark.cuda(ON_CUDA(test))


def _probabilities() -> np.ndarray:
    # 0.5 + 2^-12 rounds to 0.5 in float16 but is above the threshold in float32.
    values = np.array([0.5, 0.5 + 2**-12, 0.2, 0.9, 0.0, 1.0], np.float32)
    return values.reshape(1, 2, 3)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_outputs_threshold_the_float32_probabilities(kind):
    probabilities, variance = _probabilities(), np.full((1, 2, 3), 0.01, np.float32)
    if kind == "torch":
        probabilities, variance = torch.from_numpy(probabilities), torch.from_numpy(variance)
    slab = finished(4, probabilities, variance, 0.5)
    scores, labels, spread = slab.on_host()
    assert slab.z0 == 4 and slab.made is None
    assert scores.dtype == np.float16 and labels.dtype == np.int8 and spread.dtype == np.float16
    np.testing.assert_array_equal(scores, _probabilities().astype(np.float16))
    np.testing.assert_array_equal(labels.ravel(), [0, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(spread, np.float16(0.01))
    assert finished(0, probabilities, None, 0.5).on_host()[2] is None
    assert slab.nbytes == 6 * (2 + 1 + 2)


def _slabs(count: int, made: list[int], on_yield=None):
    for z0 in range(count):
        made.append(z0)
        if on_yield is not None:
            on_yield(z0)
        yield finished(z0, np.full((1, 4, 4), z0 / count, np.float32), None, 0.5)


def test_slabs_are_written_in_order_by_one_thread_behind_the_caller():
    # The first write waits until the caller has made the third slab: were the writes
    # done in the caller's thread, it would never get there.
    third_made, written, threads = threading.Event(), [], set()

    def write(z0, probabilities, segmentation, variance):
        if z0 == 0:
            assert third_made.wait(10)
        threads.add(threading.current_thread().name)
        written.append((z0, float(probabilities.max()), int(segmentation.max()), variance))

    made: list[int] = []
    write_in_order(_slabs(6, made, lambda z0: z0 == 2 and third_made.set()), write)
    assert [w[0] for w in written] == list(range(6)) == made
    assert [w[1] for w in written] == pytest.approx([z / 6 for z in range(6)], abs=1e-3)
    assert [w[2] for w in written] == [0, 0, 0, 0, 1, 1] and written[0][3] is None  # 3/6 = 0.5
    assert len(threads) == 1 and threading.current_thread().name not in threads


def test_without_write_behind_the_caller_writes(monkeypatch):
    monkeypatch.setattr(finishing, "WRITE_BEHIND", False)
    threads = []
    write_in_order(_slabs(3, []), lambda *slab: threads.append(threading.current_thread().name))
    assert threads == [threading.current_thread().name] * 3


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("DefaultCPUAllocator: can't allocate memory: you tried", MemoryError),
        ("some other failure", RuntimeError),
    ],
)
def test_running_out_of_host_memory_for_a_gpu_slab_is_a_memory_error(message, error):
    # torch's host allocator fails with a RuntimeError; segment turns a MemoryError into
    # its one-line "out of host memory" error. Other errors pass as they are.
    class Refusing(torch.Tensor):
        def cpu(self, *args, **kwargs):
            raise RuntimeError(message)

    with pytest.raises(error, match=message[:20]):
        finishing._on_host(torch.zeros(2).as_subclass(Refusing))
    np.testing.assert_array_equal(finishing._on_host(torch.ones(2)), [1, 1])


def test_a_failed_write_reaches_the_caller_and_nothing_after_it_is_written():
    written = []

    def write(z0, *arrays):
        if z0 == 1:
            raise OSError(28, "No space left on device")
        written.append(z0)

    with pytest.raises(OSError, match="No space left"):
        write_in_order(_slabs(50, []), write)
    assert written == [0]


def test_a_failure_while_making_slabs_lets_the_write_under_way_finish_first():
    # The caller lets go of the files only after write_in_order returns: a write still
    # running then would write into a released file.
    started, finished_writes = threading.Event(), []

    def write(z0, *arrays):
        started.set()
        time.sleep(0.2)
        finished_writes.append(z0)

    def failing():
        yield from _slabs(1, [])
        assert started.wait(10)
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        write_in_order(failing(), write)
    assert finished_writes == [0]


def test_a_failure_while_making_slabs_drops_the_slabs_still_waiting():
    # Ctrl-C or running out of GPU memory must not first write what is queued.
    release, raised, written = threading.Event(), threading.Event(), []

    def write(z0, *arrays):
        assert release.wait(10)
        written.append(z0)

    def failing():
        yield from _slabs(5, [])
        raised.set()
        raise KeyboardInterrupt

    def release_after_the_failure():
        assert raised.wait(10)
        time.sleep(0.1)
        release.set()

    releaser = threading.Thread(target=release_after_the_failure)
    releaser.start()
    with pytest.raises(KeyboardInterrupt):
        write_in_order(failing(), write)
    releaser.join()
    assert written == [0]


def test_the_caller_waits_when_the_slabs_waiting_hold_too_much(monkeypatch):
    # Budget: two slabs of host arrays beyond the newest. The writer is held, so the
    # caller makes slab 0 (being written), 1 and 2 (waiting), then 3 and stops there.
    probe = finished(0, np.zeros((1, 4, 4), np.float32), None, 0.5)
    monkeypatch.setattr(finishing, "HOST_QUEUE_BYTES", 2 * probe.nbytes)
    release, made = threading.Event(), []

    def write(z0, *arrays):
        assert release.wait(10)

    def watch():
        deadline = time.monotonic() + 10
        while len(made) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # the caller would make more by now if it could
        seen.append(list(made))
        release.set()

    seen: list[list[int]] = []
    watcher = threading.Thread(target=watch)
    watcher.start()
    write_in_order(_slabs(8, made), write)
    watcher.join()
    assert seen == [[0, 1, 2, 3]] and made == list(range(8))


@_cuda
def test_gpu_slabs_come_back_on_their_own_stream_after_the_work_that_made_them():
    # The GPU is kept busy before the slab is made: a copy that did not wait for the
    # event would read the outputs before they exist. The last GPU, so that one other
    # than the first is tried where there are several.
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    with torch.cuda.device(device):
        probabilities = torch.sigmoid(torch.randn((1, 256, 256), device=device))
        torch.cuda._sleep(10**9)  # about half a second of GPU time, queued
        slab = finished(8, probabilities, probabilities * 0, 0.5)
    assert slab.made is not None and slab.arrays[0].device == device
    got = []
    reader = threading.Thread(target=lambda: got.append(slab.on_host()))
    reader.start()
    reader.join()
    expected = probabilities.cpu().numpy()
    scores, labels, spread = got[0]
    np.testing.assert_array_equal(scores, expected.astype(np.float16))
    np.testing.assert_array_equal(labels, (expected > 0.5).astype(np.int8))
    assert not spread.any()
    # Written behind the caller, in order, each as it was made on the GPU.
    written = []
    with torch.cuda.device(device):
        slabs = [finished(z0, probabilities * 0 + z0 / 10, None, 0.5) for z0 in range(10)]
    write_in_order(slabs, lambda z0, p, s, v: written.append((z0, float(p.max()), s.max())))
    assert [(z0, round(p, 3), s) for z0, p, s in written] == [
        (z0, z0 / 10, int(z0 > 5)) for z0 in range(10)
    ]
