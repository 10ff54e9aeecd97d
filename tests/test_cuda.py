"""The GPU paths, on CUDA only (skipped elsewhere; ``pytest -m cuda`` selects them):
bf16 and fp16 training learn, channels-last does not change the loss, ``compile`` runs,
a GPU checkpoint resumes on the CPU, running out of GPU memory is a one-line error, and
``segment`` gives the CPU's result on CUDA. benchmarks/gpu_check.py runs them on a
borrowed GPU node together with the throughput benchmarks."""

from __future__ import annotations

import gc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from patch_corrections import (
    InputError,
    RetrainSettings,
    SegmentSettings,
    read_volume,
    retrain,
    segment,
    write_volume,
)
from patch_corrections.constants import IGNORE, MEMBRANE
from patch_corrections.io.volumes import Geometry
from patch_corrections.network.checkpoints import read_checkpoint
from patch_corrections.network.devices import Precision
from patch_corrections.network.unet import PRESETS, UNet
from patch_corrections.training.config import TrainConfig
from patch_corrections.training.data import TrainingPatch
from patch_corrections.training.loop import train

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    # mrcfile 1.5 reads headers in a way NumPy 2.5 deprecates; a GPU node may have that
    # pair, and the warning is theirs, not a fault of the GPU paths under test.
    pytest.mark.filterwarnings(
        "ignore:Setting the dtype on a NumPy array has been deprecated:DeprecationWarning"
    ),
]

CUDA = torch.device("cuda")

CONFIG = TrainConfig(
    iterations=60,
    batch_size=2,
    crop_size=64,
    optimizer="adamw",
    lr=3e-3,
    val_every=20,
    save_every=60,
    seed=3,
)


@pytest.fixture(autouse=True)
def _free_gpu_memory():
    yield
    gc.collect()
    torch.cuda.empty_cache()


def _learnable_arrays(seed: int, edge: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Image and labels ``(z, y, x)``: bright slabs are membrane, so a network can learn
    them in a few steps; a border band of ignore as in real patches."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((edge,) * 3, np.uint8)
    for z in rng.choice(np.arange(6, edge - 6), size=3, replace=False):
        labels[z : z + 2] = MEMBRANE
    image = 2.0 * (labels == MEMBRANE) + rng.normal(0, 0.5, labels.shape)
    labels[:4], labels[-4:] = IGNORE, IGNORE
    return image.astype(np.float32), labels


def _patches(count: int = 3) -> list[TrainingPatch]:
    return [TrainingPatch.from_arrays(f"p{i}", *_learnable_arrays(i)) for i in range(count)]


def _training_folder(root: Path, count: int = 4) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(count):
        image, labels = _learnable_arrays(i)
        write_volume(root / "imagesTr" / f"p{i}_0000.mrc", image, Geometry((1.0, 1.0, 1.0)))
        write_volume(root / "labelsTr" / f"p{i}.mrc", labels, Geometry((1.0, 1.0, 1.0)))
    return root


def _train(preset: str, config: TrainConfig, out_dir: Path):
    torch.manual_seed(0)
    network = UNet(PRESETS[preset])
    state = train(network, _patches(), [], config, out_dir, CUDA)
    return network, state


def test_bf16_training_of_the_full_network_lowers_the_loss(tmp_path):
    assert Precision.for_device(CUDA).dtype == torch.bfloat16  # Ampere or newer
    _, state = _train("full", CONFIG, tmp_path)
    losses = [row["train_loss"] for row in state.history]
    assert all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0], losses
    assert read_checkpoint(tmp_path / "last.pt")["grad_scaler"] is None


def test_fp16_with_a_grad_scaler_lowers_the_loss(tmp_path, monkeypatch):
    def fp16(cls, device):
        return cls(device, torch.float16, torch.amp.GradScaler("cuda"))

    monkeypatch.setattr(Precision, "for_device", classmethod(fp16))
    _, state = _train("full", CONFIG, tmp_path)
    losses = [row["train_loss"] for row in state.history]
    assert all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0], losses
    scaler = read_checkpoint(tmp_path / "last.pt")["grad_scaler"]
    assert scaler is not None and scaler["scale"] > 0


def test_channels_last_gives_the_same_losses(tmp_path):
    # A metrics row every step: each row's loss is that step's own.
    config = replace(CONFIG, iterations=4, val_every=1, save_every=4)
    runs = []
    for channels_last in (True, False):
        _, state = _train("full", replace(config, channels_last=channels_last), tmp_path)
        runs.append([row["train_loss"] for row in state.history])
    # Other cuDNN kernels in bf16: close, not bit-equal; the first step sees equal weights.
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-2)
    np.testing.assert_allclose(runs[0], runs[1], rtol=5e-2)


# Compiling imports parts of torch that warn about their own deprecated decorators.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compiled_training_runs_and_saves_plain_weights(tmp_path):
    config = replace(CONFIG, iterations=3, val_every=3, save_every=3, compile=True)
    network, state = _train("tiny", config, tmp_path)
    assert state.step == 3 and np.isfinite(state.history[-1]["train_loss"])
    saved = read_checkpoint(tmp_path / "last.pt")["model"]
    assert saved.keys() == network.state_dict().keys()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_instance_norm_on_cuda_matches_the_cpu(dtype):
    # The model's InstanceNorm takes its own path on CUDA (float32 statistics, channels-last
    # kept); under bf16 autocast it must stay as close to float32 as torch's own kernel.
    from patch_corrections.network.unet import InstanceNorm

    torch.manual_seed(0)
    norm = InstanceNorm(16, affine=True)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 16, 24, 20, 18) * 2 + 3
    expected = norm(x)
    grad = torch.randn_like(x)
    (expected_grad,) = torch.autograd.grad(norm(x.requires_grad_()), x, grad)
    gpu = norm.to(CUDA)
    saved = []

    def keep(tensor):
        saved.append(tensor)
        return tensor

    for layout in (torch.contiguous_format, torch.channels_last_3d):
        x_gpu = x.detach().to(CUDA).contiguous(memory_format=layout).requires_grad_()
        saved.clear()
        with (
            torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16),
            torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor),
        ):
            out = gpu(x_gpu.to(dtype))
        # For the backward pass only the input itself is kept (no float32 copy of it).
        large = {t.untyped_storage().data_ptr() for t in saved if t.numel() == x.numel()}
        assert len(large) == 1 and all(t.dtype == dtype for t in saved if t.numel() == x.numel())
        (out_grad,) = torch.autograd.grad(out, x_gpu, grad.to(CUDA, dtype))
        tolerance = {"rtol": 0.02, "atol": 0.05} if dtype == torch.bfloat16 else {}
        assert out.dtype == dtype
        torch.testing.assert_close(out.float().cpu(), expected, **tolerance)
        torch.testing.assert_close(out_grad.float().cpu(), expected_grad, **tolerance)


def test_a_gpu_checkpoint_resumes_on_the_cpu(tmp_path):
    folder = _training_folder(tmp_path / "train")
    common = {"preset": "tiny", "crop_size": 32, "val_every": 2}
    first = retrain(
        folder, tmp_path / "run", settings=RetrainSettings(iterations=4, device="cuda", **common)
    )
    assert first.step == 4 and first.last.exists()
    resumed = retrain(
        folder,
        tmp_path / "run",
        settings=RetrainSettings(iterations=6, resume=True, device="cpu", **common),
    )
    assert resumed.step == 6 and np.isfinite(resumed.final["train_loss"])
    content = read_checkpoint(resumed.last)
    assert all(t.device.type == "cpu" for t in content["model"].values())


def test_running_out_of_gpu_memory_is_a_one_line_input_error(tmp_path):
    folder = _training_folder(tmp_path / "train", count=2)
    # Patches 384 long in z, so that 384³ crops are not refused as larger than every patch.
    for i in range(2):
        image, labels = _learnable_arrays(i)
        tall_image, tall_labels = np.tile(image, (6, 1, 1)), np.tile(labels, (6, 1, 1))
        for path, data in (
            (folder / "imagesTr" / f"p{i}_0000.mrc", tall_image),
            (folder / "labelsTr" / f"p{i}.mrc", tall_labels),
        ):
            path.unlink()
            write_volume(path, data, Geometry((1.0, 1.0, 1.0)))
    # 8 crops of 384³ through the full network: the first level's activations alone need
    # far more than the 80-141 GB of one H100 or H200, while each sample stays below
    # 2^31 elements per tensor (cuDNN's limit, which would be another error).
    settings = RetrainSettings(
        iterations=2, batch_size=8, crop_size=384, val_fraction=0.5, device="cuda"
    )
    with pytest.raises(InputError) as raised:
        retrain(folder, tmp_path / "run", settings=settings)
    message = str(raised.value)
    assert message.startswith("out of GPU memory with --batch-size 8 and --crop-size 384")
    assert "\n" not in message
    del raised


@pytest.fixture(scope="module")
def tomogram_and_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("segment")
    rng = np.random.default_rng(5)
    volume = rng.normal(size=(48, 64, 64)).astype(np.float32)
    volume[:, 20:23] += 3  # a slab, so the scores are not all alike
    tomogram = folder / "tomo.mrc"
    write_volume(tomogram, volume, Geometry((10.0, 10.0, 10.0)))
    torch.manual_seed(0)
    config = TrainConfig(iterations=2, crop_size=32, val_every=2, save_every=2)
    train(UNet(PRESETS["tiny"]), _patches(), [], config, folder, torch.device("cpu"))
    checkpoint = folder / "last.pt"
    return tomogram, checkpoint


@pytest.mark.parametrize(
    ("tta", "uncertainty"),
    [(False, False), (True, False), (True, True)],
    ids=["plain", "tta", "tta-uncertainty"],
)
def test_segment_on_cuda_equals_segment_on_the_cpu(
    tmp_path, tomogram_and_checkpoint, tta, uncertainty
):
    # With TTA on CUDA the sums of the 8 passes stay in GPU memory.
    tomogram, checkpoint = tomogram_and_checkpoint
    scores, spreads = {}, {}
    for device in ("cpu", "cuda"):
        settings = SegmentSettings(
            window=32, batch_size=2, tta=tta, uncertainty=uncertainty, device=device
        )
        report = segment(tomogram, checkpoint, tmp_path / device, settings=settings)
        assert report.device.startswith(device) and report.windows == 18
        assert (report.peak_gpu_gib is None) == (device == "cpu")
        scores[device] = read_volume(report.probabilities)[0].astype(np.float32)
        # The segmentation is made where the probabilities are (on the GPU for CUDA),
        # from float32: it disagrees with the stored float16 only where a probability
        # just above the threshold was rounded down to it.
        labels = read_volume(report.segmentation)[0]
        assert labels.dtype == np.int8 and set(np.unique(labels)) <= {0, 1}
        disagree = labels != (scores[device] > 0.5)
        assert (scores[device][disagree] == 0.5).all() and labels[disagree].all()
        if uncertainty:
            spreads[device] = read_volume(report.uncertainty)[0].astype(np.float32)
    # bf16 autocast on CUDA, fp32 on the CPU; both stored as float16.
    difference = np.abs(scores["cuda"] - scores["cpu"])
    assert difference.max() < 0.03 and difference.mean() < 0.005, difference.max()
    assert scores["cpu"].std() > 1e-3  # the comparison says something
    if uncertainty:
        assert np.abs(spreads["cuda"] - spreads["cpu"]).max() < 0.02  # CPU: up to 0.045
        assert spreads["cpu"].max() > 1e-4


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_segment_compiled_on_cuda_equals_segment_uncompiled(tmp_path, tomogram_and_checkpoint):
    tomogram, checkpoint = tomogram_and_checkpoint
    scores = []
    for compiled in (False, True):
        settings = SegmentSettings(window=32, batch_size=2, device="cuda", compile=compiled)
        report = segment(tomogram, checkpoint, tmp_path / str(compiled), settings=settings)
        scores.append(read_volume(report.probabilities)[0].astype(np.float32))
    assert np.abs(scores[1] - scores[0]).max() < 0.02
