"""Training throughput of the U-Net: ours against the same network run the MemBrain-seg way.

    python benchmarks/train_speed.py [--preset full] [--crop 160] [--batch 2] [--steps N]
                                     [--device auto] [--compile] [--losses bce+dice rrw]

Both runs train the same network on the same synthetic patches, one after the other, in
one process:

- ``ours``: ``patch_corrections.training.loop.train`` as ``retrain`` runs it: bf16 autocast on
  CUDA, channels-last 3D, cuDNN autotuning, augmentation on the GPU, crops cut by a
  background thread while the previous step trains;
- ``membrain-style``: fp16 autocast with a grad scaler, augmentation on the CPU before the
  batch is moved to the device, no channels-last, crops cut synchronously (what
  MemBrain-seg's Lightning + MONAI pipeline does, minus its worker processes).

Reported per run: iterations/s, voxels/s (crop voxels x batch per second), the share of
step time spent waiting for data, peak GPU memory, and model FLOP utilisation (convolution
FLOPs of forward + backward per step / step time / the GPU's dense bf16 peak). On a CPU only
``ours`` runs (autocast does not apply there). The first steps (warm-up, autotuning,
compilation) are not timed. :func:`measure` returns the numbers as a dict (used by
``gpu_check.py``).

With ``--losses``, ``ours`` runs once per training loss (e.g. ``bce+dice rrw``) and prints
each one's step time relative to the first: the cost of the region-wise loss's distance
maps, computed on the training device every step.
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import replace

import numpy as np
import torch

from patch_corrections.network.devices import pick_device, sync
from patch_corrections.network.unet import PRESETS, UNet
from patch_corrections.training.augment import AugmentConfig, augment
from patch_corrections.training.config import TrainConfig, make_optimizer
from patch_corrections.training.data import TrainingPatch, batch_for_step
from patch_corrections.training.loop import train
from patch_corrections.training.losses import (
    deep_supervision_loss,
    downsample_labels,
    region_wise_maps,
)

DENSE_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}


def synthetic_patches(count: int, edge: int, seed: int = 0) -> list[TrainingPatch]:
    rng = np.random.default_rng(seed)
    patches = []
    for i in range(count):
        labels = (rng.random((edge,) * 3) < 0.1).astype(np.uint8)
        labels[:16], labels[-16:] = 2, 2
        patches.append(TrainingPatch.from_arrays(f"p{i}", rng.normal(size=labels.shape), labels))
    return patches


def conv_flops(network: UNet, crop: int, batch: int, device: torch.device) -> float:
    """Forward convolution FLOPs (2 x multiply-adds) of one batch, times 3 for training."""
    total = 0.0

    def count(module, inputs, output):
        nonlocal total
        weight = module.weight
        kernel = weight[0, 0].numel()
        if isinstance(module, torch.nn.ConvTranspose3d):
            positions = inputs[0].shape[2:].numel()
            total += 2 * weight.shape[0] * weight.shape[1] * kernel * positions * batch
        else:
            positions = output.shape[2:].numel()
            total += 2 * weight.shape[0] * weight.shape[1] * kernel * positions * batch

    hooks = [
        m.register_forward_hook(count)
        for m in network.modules()
        if isinstance(m, torch.nn.Conv3d | torch.nn.ConvTranspose3d)
    ]
    with torch.no_grad():
        network.forward_heads(torch.zeros(1, 1, crop, crop, crop, device=device))
    for hook in hooks:
        hook.remove()
    return 3 * total


def run_ours(
    patches, config: TrainConfig, preset: str, device, warmup: int, steps: int, tmp
) -> dict:
    torch.manual_seed(0)
    network = UNet(PRESETS[preset])
    quiet = {"val_every": 10**9, "save_every": 10**9}
    train(network, patches, [], replace(config, iterations=warmup, **quiet), tmp, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    started = time.perf_counter()
    state = train(network, patches, [], replace(config, iterations=steps, **quiet), tmp, device)
    sync(device)
    # The run ends by writing last.pt; that is not training time.
    elapsed = time.perf_counter() - started - state.io_seconds
    return {"seconds": elapsed, "data_wait": state.data_wait, "steps": steps}


def run_membrain_style(
    patches, config: TrainConfig, preset: str, device, warmup: int, steps: int
) -> dict:
    """On a CPU autocast and the grad scaler are off (fp32): the pipeline still runs."""
    torch.manual_seed(0)
    network = UNet(PRESETS[preset]).to(device)
    network.train()
    optimizer = make_optimizer(network, config)
    gpu = device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=gpu)
    generator = torch.Generator()
    augment_config = AugmentConfig()
    if gpu:
        torch.cuda.reset_peak_memory_stats(device)
    data_wait, started = 0.0, time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            sync(device)
            data_wait, started = 0.0, time.perf_counter()
        fetch = time.perf_counter()
        image, labels = batch_for_step(patches, step, config)
        generator.manual_seed(step)
        x, y = augment(
            torch.from_numpy(image), torch.from_numpy(labels), generator, augment_config
        )
        x, y = x.to(device), y.to(device)
        data_wait += time.perf_counter() - fetch
        with torch.autocast(device.type, dtype=torch.float16, enabled=gpu):
            outputs = network.forward_heads(x)
        loss = deep_supervision_loss([o.float() for o in outputs], y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(network.parameters(), config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        del outputs, loss, x, y
    sync(device)
    return {"seconds": time.perf_counter() - started, "data_wait": data_wait, "steps": steps}


def time_region_wise_maps(
    patches, config: TrainConfig, preset: str, device, repeats: int = 10
) -> float:
    """Seconds per step spent building the region-wise maps of one batch's labels at every
    deep-supervision head's size: what ``--loss rrw`` adds to a step besides a few
    elementwise operations."""
    _, labels = batch_for_step(patches, 0, config)
    target = torch.from_numpy(labels).to(device)
    heads = PRESETS[preset].heads + 1  # the full-resolution output and each head
    targets = [downsample_labels(target, 2**i) for i in range(heads)]
    for t in targets:  # warm-up
        region_wise_maps(t)
    sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        for t in targets:
            region_wise_maps(t)
    sync(device)
    return (time.perf_counter() - started) / repeats


def summarise(
    name: str, result: dict, flops: float, crop: int, batch: int, device: torch.device
) -> dict:
    """One run's row: it/s, voxels/s, data-wait share, and on CUDA peak memory and MFU."""
    rate = result["steps"] / result["seconds"]
    row = {
        "name": name,
        "steps": result["steps"],
        "seconds": result["seconds"],
        "it_per_s": rate,
        "voxels_per_s": rate * batch * crop**3,
        "data_wait_share": result["data_wait"] / result["seconds"],
        "peak_gpu_gib": None,
        "mfu": None,
        "peak_tflops": None,
    }
    if device.type == "cuda":
        row["peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        name_gpu = torch.cuda.get_device_name(device)
        peak = next((v for k, v in DENSE_BF16_TFLOPS.items() if k in name_gpu), None)
        if peak:
            row["mfu"], row["peak_tflops"] = flops * rate / (peak * 1e12), peak
    return row


def row_line(row: dict) -> str:
    line = (
        f"{row['name']:15s} {row['it_per_s']:8.3f} it/s  {row['voxels_per_s'] / 1e6:9.2f} "
        f"Mvoxel/s  data wait {100 * row['data_wait_share']:5.1f} %"
    )
    if row["peak_gpu_gib"] is not None:
        line += f"  peak GPU memory {row['peak_gpu_gib']:6.1f} GiB"
    if row["mfu"] is not None:
        line += f"  MFU {100 * row['mfu']:5.1f} % (of {row['peak_tflops']:g} TFLOP/s)"
    return line


def measure(
    preset: str = "full",
    crop: int = 160,
    batch: int = 2,
    steps: int | None = None,
    warmup: int | None = None,
    device: str = "auto",
    compile: bool = False,
    losses: tuple[str, ...] = ("bce+dice",),
    membrain: bool | None = None,
    echo: bool = False,
) -> dict:
    """Time ``ours`` (once per loss) and, with ``membrain`` (default: on CUDA only), the
    MemBrain-seg way; a dict of the setting and one row per run (see :func:`summarise`).
    ``steps`` and ``warmup`` default to 20 and 5 on a GPU, 2 and 1 on a CPU. With ``echo``
    each line is printed as it is measured."""
    import tempfile
    from pathlib import Path

    target = pick_device(device)
    gpu = target.type == "cuda"
    steps = steps or (20 if gpu else 2)
    warmup = warmup if warmup is not None else (5 if gpu else 1)
    membrain = gpu if membrain is None else membrain
    if gpu:
        where = torch.cuda.get_device_name(target)
    else:
        threads = torch.get_num_threads()
        where = f"CPU ({platform.processor() or platform.machine()}, {threads} threads)"
    patches = synthetic_patches(4, max(crop, 64))
    config = TrainConfig(iterations=1, batch_size=batch, crop_size=crop, compile=compile)
    flops = conv_flops(UNet(PRESETS[preset]).to(target), crop, batch, target)
    result = {
        "device": where,
        "torch": torch.__version__,
        "preset": preset,
        "crop": crop,
        "batch": batch,
        "steps": steps,
        "warmup": warmup,
        "train_tflop_per_step": flops / 1e12,
        "rows": [],
        "region_wise_maps_s": None,
    }

    def say(line: str) -> None:
        if echo:
            print(line, flush=True)

    say(
        f"device: {where}; torch {torch.__version__}; preset {preset}, crop {crop}³, batch "
        f"{batch}, {steps} timed steps after {warmup} warm-up; {flops / 1e12:.2f} TFLOP of "
        "convolutions per training step"
    )
    first = None
    for loss in losses:
        with tempfile.TemporaryDirectory() as tmp:
            run = run_ours(
                patches, replace(config, loss=loss), preset, target, warmup, steps, Path(tmp)
            )
        name = "ours" if len(losses) == 1 else f"ours {loss}"
        row = summarise(name, run, flops, crop, batch, target)
        result["rows"].append(row)
        say(row_line(row))
        step = run["seconds"] / run["steps"]
        first = first or step
        if len(losses) > 1:
            say(f"{'':15s} step time {step:.4f} s, x{step / first:.3f} of {losses[0]}")
    if any("rrw" in loss for loss in losses):
        seconds = time_region_wise_maps(patches, config, preset, target)
        result["region_wise_maps_s"] = seconds
        say(
            f"region-wise maps alone: {1000 * seconds:.1f} ms per step (every deep-supervision "
            f"head, batch {batch}, {crop}³), on {target.type}"
        )
    if membrain:
        run = run_membrain_style(patches, config, preset, target, warmup, steps)
        row = summarise("membrain-style", run, flops, crop, batch, target)
        result["rows"].append(row)
        say(row_line(row))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="full", choices=sorted(PRESETS))
    parser.add_argument("--crop", type=int, default=160)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps (default 20 on a GPU, 2 on a CPU)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed steps first (default 5 on a GPU, 1 on a CPU)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument(
        "--losses", nargs="+", default=["bce+dice"], help="training losses to time, in turn"
    )
    args = parser.parse_args()
    measure(
        args.preset,
        args.crop,
        args.batch,
        args.steps,
        args.warmup,
        args.device,
        args.compile,
        tuple(args.losses),
        echo=True,
    )


if __name__ == "__main__":
    main()
