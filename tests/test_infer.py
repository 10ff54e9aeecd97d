"""Sliding-window inference: exact blending, batch-size invariance, TTA, and `segment`."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
import torch
from conftest import save_tiny_checkpoint, write_mrc

from patch_corrections.inference.probabilities import sliding_window
from patch_corrections.inference.sliding_window import blended_logits, to_host, window_starts
from patch_corrections.network.unet import PRESETS, UNet


def _reader(volume):
    def read(start, stop):
        return volume[tuple(slice(a, b) for a, b in zip(start, stop))].copy()

    return read


def _run(volume, predict, window, overlap=0.5, batch_size=1, tta=False):
    read = _reader(volume)
    pieces = list(sliding_window(read, volume.shape, predict, window, overlap, batch_size, tta))
    starts = [z0 for z0, _ in pieces]
    assert starts == sorted(starts) and starts[0] == 0
    out = np.concatenate([slab for _, slab in pieces])
    assert out.shape == volume.shape
    return out


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


@pytest.mark.parametrize("shape", [(20, 23, 17), (8, 8, 8), (5, 30, 3)])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
def test_blending_is_exact_for_pointwise_networks(shape, overlap):
    volume = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    for predict, expected in (
        (lambda w: w, _sigmoid(volume)),
        (lambda w: 2 * w - 1, _sigmoid(2 * volume - 1)),
    ):
        result = _run(volume, predict, 8, overlap, batch_size=3)
        np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)


def test_windows_cover_the_volume():
    assert window_starts(10, 8, 0.5) == [0, 2]
    assert window_starts(20, 8, 0.5) == [0, 4, 8, 12]
    assert window_starts(5, 8, 0.5) == [0]


def test_batch_size_does_not_change_the_result():
    torch.manual_seed(0)
    network = UNet(PRESETS["tiny"]).eval()

    def predict(windows):
        with torch.no_grad():
            return network(torch.from_numpy(windows)[:, None])[:, 0].numpy()

    volume = np.random.default_rng(1).normal(size=(20, 28, 24)).astype(np.float32)
    one = _run(volume, predict, 16, 0.5, batch_size=1)
    many = _run(volume, predict, 16, 0.5, batch_size=5)
    np.testing.assert_allclose(one, many, rtol=1e-5, atol=1e-6)
    assert one.std() > 0


@pytest.mark.parametrize("tta", [False, True])
def test_logits_returned_as_tensors_are_blended_where_they_are(tta):
    # A predict that keeps its logits on the device (a torch tensor) gets the same
    # blending as one that returns NumPy, and the pass never reads a value back to the
    # host per window: only finished slices come back, once per row. The sigmoid is then
    # torch's tanh, not NumPy's: the same within a few units in the last place.
    from test_sync import host_reads

    volume = np.random.default_rng(5).normal(size=(20, 23, 17)).astype(np.float32)
    on_host = _run(volume, lambda w: w * 2 - 0.25, 8, 0.5, 3, tta)
    calls = []

    def on_device(windows):
        calls.append(len(windows))
        return torch.from_numpy(windows) * 2 - 0.25

    with host_reads() as reads:
        as_tensors = _run(volume, on_device, 8, 0.5, 3, tta)
    assert calls and reads == []
    np.testing.assert_allclose(as_tensors, on_host, rtol=0, atol=2e-7)
    # The blended logits themselves are the same bit for bit.
    flip = (0, 2) if tta else ()
    host_pass, device_pass = (
        np.concatenate([to_host(s) for _, s in sorted(blended_logits(*run, 8, 0.5, 3, flip))])
        for run in (
            (_reader(volume), volume.shape, lambda w: w * 2 - 0.25),
            (_reader(volume), volume.shape, on_device),
        )
    )
    np.testing.assert_array_equal(device_pass, host_pass)


def test_tta_equals_plain_for_a_flip_equivariant_network():
    # TTA flips the whole volume, so the window grid follows the flip: only a network
    # that commutes with flips and does not see window borders gives the plain result.
    def pointwise(windows):
        return np.tanh(2 * windows) - 0.5

    volume = np.random.default_rng(2).normal(size=(12, 18, 14)).astype(np.float32)
    plain = _run(volume, pointwise, 8, 0.5, batch_size=2)
    flipped = _run(volume, pointwise, 8, 0.5, batch_size=2, tta=True)
    np.testing.assert_allclose(plain, flipped, rtol=1e-5, atol=1e-6)

    def shifted(windows):  # not flip-equivariant: TTA must then change something
        return np.roll(windows, 1, axis=3)

    assert not np.allclose(_run(volume, shifted, 8), _run(volume, shifted, 8, tta=True))


@pytest.fixture
def tiny_checkpoint(tmp_path):
    return save_tiny_checkpoint(tmp_path / "tiny.pt")


def test_segment_writes_scoremap_and_segmentation(tmp_path, run_cli, tiny_checkpoint):
    volume = np.random.default_rng(3).normal(size=(12, 20, 18)).astype(np.float32)
    write_mrc(tmp_path / "tomo.mrc", volume, voxel_size=(2.0, 3.0, 4.0), origin=(5.0, 6.0, 7.0))
    args = [
        "segment",
        "-t",
        tmp_path / "tomo.mrc",
        "--checkpoint",
        tiny_checkpoint,
        "-o",
        tmp_path / "out",
        "--window",
        16,
        "--threshold",
        0.5,
    ]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    with (
        mrcfile.open(tmp_path / "out" / "tomo_probabilities.mrc") as scores,
        mrcfile.open(tmp_path / "out" / "tomo_segmented.mrc") as labels,
    ):
        assert scores.data.shape == labels.data.shape == volume.shape
        assert scores.data.dtype == np.float16 and labels.data.dtype == np.int8
        # Labels come from the float32 probabilities: they may differ from the stored
        # float16 ones only where those round to the threshold itself.
        stored = scores.data.astype(np.float32)
        assert ((labels.data != 0) == (stored > 0.5))[stored != 0.5].all()
        for mrc in (scores, labels):
            data = mrc.data.astype(np.float64)
            assert mrc.header.dmin == pytest.approx(data.min(), abs=1e-3)
            assert mrc.header.dmax == pytest.approx(data.max(), abs=1e-3)
            assert mrc.header.dmean == pytest.approx(data.mean(), abs=1e-3)
            assert (mrc.voxel_size.x, mrc.voxel_size.y, mrc.voxel_size.z) == (2, 3, 4)
            assert (mrc.header.origin.x, mrc.header.origin.y, mrc.header.origin.z) == (5, 6, 7)
    result = run_cli(*args)
    assert result.exit_code == 0 and "Skipped 1 tomogram(s) already segmented" in result.output
    result = run_cli(*args[:-4], "--window", 12, "--overwrite")
    assert result.exit_code == 1 and "--window 12: must be a multiple of 8" in result.output
    result = run_cli(*args[:-4], "--window", 0, "--overwrite")
    assert result.exit_code == 1 and "--window must be positive" in result.output
    (tmp_path / "bad.pt").write_bytes(b"nonsense")
    result = run_cli(
        "segment",
        "-t",
        tmp_path / "tomo.mrc",
        "--checkpoint",
        tmp_path / "bad.pt",
        "-o",
        tmp_path / "other",
    )
    assert result.exit_code == 1 and "not a readable PyTorch checkpoint" in result.output
    assert not (tmp_path / "other").exists()


def test_memory_stays_below_one_float32_copy_of_the_volume():
    import tracemalloc

    volume = np.random.default_rng(4).normal(size=(64, 256, 256)).astype(np.float32)
    tracemalloc.start()
    try:
        for _ in sliding_window(
            lambda start, stop: volume[tuple(map(slice, start, stop))].copy(),
            volume.shape,
            lambda w: w,
            16,
            0.5,
            4,
        ):
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < volume.nbytes, (peak, volume.nbytes)


def test_segment_with_a_membrain_checkpoint_on_an_int8_tomogram(tmp_path, run_cli):
    from pathlib import Path

    fixture = torch.load(
        Path(__file__).with_name("fixtures") / "dynunet_tiny.pt", weights_only=True
    )
    state = {f"_model.{k}": v for k, v in fixture["state_dict"].items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "membrain.ckpt")
    volume = (np.random.default_rng(5).normal(size=(10, 20, 30)) * 30).astype(np.int8)
    write_mrc(tmp_path / "tomo.mrc", volume, voxel_size=(14.0, 14.0, 14.0))
    result = run_cli(
        "segment",
        "-t",
        tmp_path / "tomo.mrc",
        "--checkpoint",
        tmp_path / "membrain.ckpt",
        "-o",
        tmp_path / "out",
        "--window",
        16,
        "--batch-size",
        3,
        "--tta",
    )
    assert result.exit_code == 0, result.output
    assert "8-flip TTA" in result.output
    scores = mrcfile.read(tmp_path / "out" / "tomo_probabilities.mrc")
    assert scores.shape == volume.shape and np.isfinite(scores).all()
    assert 0 <= scores.min() and scores.max() <= 1


def test_segment_warns_about_nan(tmp_path, run_cli, tiny_checkpoint):
    volume = np.random.default_rng(6).normal(size=(8, 16, 16)).astype(np.float32)
    volume[2, 3, 4] = np.nan
    with pytest.warns(RuntimeWarning, match="NaN"):  # mrcfile's, when writing the input
        write_mrc(tmp_path / "tomo.mrc", volume)
    result = run_cli(
        "segment",
        "-t",
        tmp_path / "tomo.mrc",
        "--checkpoint",
        tiny_checkpoint,
        "-o",
        tmp_path / "out",
        "--window",
        16,
    )
    assert result.exit_code == 0, result.output
    assert "NaN or infinite values" in result.output
    assert np.isfinite(mrcfile.read(tmp_path / "out" / "tomo_probabilities.mrc")).all()


def test_segment_warns_when_the_window_is_padded(tmp_path, tiny_checkpoint):
    # A tomogram thinner than the window: every window is padded with the normalised mean
    # along z, which moved fine-tuned networks' calls (benchmarks/RESULTS.md, "The window").
    from patch_corrections.network.unet import PRESETS
    from patch_corrections.workflows import SegmentSettings, segment

    divisor = PRESETS["tiny"].divisor
    depth = 2 * divisor + divisor // 2
    volume = np.random.default_rng(7).normal(size=(depth, 4 * divisor, 4 * divisor))
    write_mrc(tmp_path / "tomo.mrc", volume.astype(np.float32))
    padded = segment(
        tmp_path / "tomo.mrc",
        tiny_checkpoint,
        tmp_path / "padded",
        settings=SegmentSettings(window=4 * divisor, device="cpu"),
    )
    (line,) = [w for w in padded.warnings if "padded" in w]
    assert f"shorter than the {4 * divisor}³ window along z," in line
    assert line.endswith(f"give --window {2 * divisor} or less")
    fitting = segment(
        tmp_path / "tomo.mrc",
        tiny_checkpoint,
        tmp_path / "fitting",
        settings=SegmentSettings(window=2 * divisor, device="cpu"),
    )
    assert not [w for w in fitting.warnings if "padded" in w]


def test_windows_are_read_ahead_by_threads_and_a_read_error_stops_the_pass():
    import threading

    from patch_corrections.errors import InputError

    volume = np.random.default_rng(6).normal(size=(24, 40, 40)).astype(np.float32)
    readers, calls = set(), []

    def read(start, stop):
        readers.add(threading.current_thread().name)
        calls.append(start)
        if len(calls) == 30:
            raise InputError("tomo.mrc: short read")
        return volume[tuple(map(slice, start, stop))].copy()

    before = threading.active_count()
    with pytest.raises(InputError, match="short read"):
        for _ in sliding_window(read, volume.shape, lambda w: w, 8, 0.5, 2):
            pass
    assert threading.main_thread().name not in readers
    assert threading.active_count() == before  # the reading threads are gone


def test_mrc_blocks_read_from_several_threads_at_once(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from patch_corrections.io.volumes import closing_reader

    volume = np.random.default_rng(7).normal(size=(30, 50, 40)).astype(np.float32)
    write_mrc(tmp_path / "tomo.mrc", volume)
    blocks = [
        ((z, y, x), (z + 9, y + 17, x + 13))
        for z in range(0, 21, 3)
        for y in (0, 33)
        for x in (0, 27)
    ]
    with closing_reader(tmp_path / "tomo.mrc") as reader, ThreadPoolExecutor(4) as pool:
        read = list(pool.map(lambda b: reader.read_block(*b), blocks))
    for (start, stop), block in zip(blocks, read):
        np.testing.assert_array_equal(block, volume[tuple(map(slice, start, stop))])


def test_tta_sums_kept_as_torch_tensors_give_the_host_sums(monkeypatch):
    # On a GPU with room the TTA sums are torch tensors on it; the same code path runs here
    # with CPU tensors, and must give what the NumPy sums give.
    import torch

    from patch_corrections.inference import probabilities as infer

    volume = np.random.default_rng(7).normal(size=(13, 18, 21)).astype(np.float32)

    def read(start, stop):
        return volume[tuple(slice(a, b) for a, b in zip(start, stop))].copy()

    def predict(windows):  # not flip-equivariant, so the 8 passes differ
        return np.roll(3 * windows, 1, axis=3)

    def run(predict):
        pieces = list(infer.tta_with_variance(read, volume.shape, predict, 8, 0.5, 2))
        return [np.concatenate([piece[i] for piece in pieces]) for i in (1, 2)]

    host = run(predict)  # NumPy throughout
    kinds = []

    def torch_sums(logits, shape, count):
        kinds.append(type(logits))
        return [logits.new_zeros(shape) for _ in range(count)]

    monkeypatch.setattr(infer, "_tta_sums", torch_sums)
    kept = run(lambda windows: torch.from_numpy(predict(windows)))
    assert kinds == [torch.Tensor]
    # The same float32 sums and division; the sigmoid is torch's tanh, not NumPy's.
    np.testing.assert_allclose(kept[0], host[0], rtol=0, atol=2e-7)
    np.testing.assert_allclose(kept[1], host[1], atol=1e-6)  # torch's tanh, not NumPy's
    assert host[1].max() > 1e-3


@pytest.mark.parametrize("tta", [False, True], ids=["plain", "tta"])
def test_prepare_runs_in_the_reading_threads_and_feeds_predict(tta):
    # segment pins each batch in the reading threads, so the GPU copy never waits on them.
    import threading

    import torch

    volume = np.random.default_rng(8).normal(size=(20, 30, 26)).astype(np.float32)

    def read(start, stop):
        return volume[tuple(map(slice, start, stop))].copy()

    preparers, seen = set(), []

    def prepare(windows):
        preparers.add(threading.current_thread().name)
        return torch.from_numpy(windows)

    def predict(windows):
        seen.append(type(windows))
        return 2 * windows

    prepared = np.concatenate(
        [p for _, p in sliding_window(read, volume.shape, predict, 8, 0.5, 2, tta, None, prepare)]
    )
    calls = len(seen)
    plain = np.concatenate(
        [p for _, p in sliding_window(read, volume.shape, predict, 8, 0.5, 2, tta)]
    )
    np.testing.assert_allclose(prepared, plain, rtol=1e-6, atol=1e-7)
    assert set(seen[:calls]) == {torch.Tensor} and set(seen[calls:]) == {np.ndarray}
    assert len(seen) == 2 * calls
    assert preparers and threading.main_thread().name not in preparers
