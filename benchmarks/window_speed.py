"""How fast one network runs a batch of windows, each way of running it on its own.

    python benchmarks/window_speed.py [--preset full] [--window 160] [--steps 10]
                                      [--variants eager_b2 compile_b2 ...]

``segment`` spends its time in the network's forward pass over fixed-size windows. This
times that pass alone (random weights, a random batch already on the device, the logits
made float32 as ``segment`` makes them), one variant at a time, so the gain of each change
is known before it goes into ``segment``:

* ``eager_b1`` / ``eager_b2`` / ``eager_b4``: what ``segment`` does now (autocast bf16 on
  CUDA, channels-last, cuDNN autotuning), at batch 1, 2 and 4;
* ``eager_b2_contiguous``: the same without channels-last;
* ``bf16_b2``: the network's weights and input in bf16, no autocast;
* ``compile_b2`` / ``compile_b4``: ``torch.compile`` of the forward (what ``segment
  --compile`` does);
* ``graphs_b2``: ``torch.compile(mode="reduce-overhead")``: the compiled forward replayed
  as one CUDA graph (CUDA only).

Each row: milliseconds per window, TFLOP/s of the convolutions and MFU against the dense
bf16 peak of an H100 / H200 (989 TFLOP/s), peak GPU memory, and for compiled variants the
seconds of the first call (compilation). ``measure`` returns the rows (used by
``gpu_check.py``); a variant that fails is recorded with its error.
"""

from __future__ import annotations

import argparse
import time

import torch

from patch_corrections.network.unet import PRESETS, UNet

PEAK_BF16 = 989e12
"""Dense bf16 FLOP/s of an H100 / H200 SXM."""
VARIANTS = (
    "eager_b1",
    "eager_b2",
    "eager_b4",
    "eager_b2_contiguous",
    "bf16_b2",
    "compile_b2",
    "compile_b4",
    "graphs_b2",
)


def forward_flops(network: UNet, window: int, device: torch.device) -> float:
    """Convolution FLOPs (2 x multiply-adds) of one window's forward pass."""
    from train_speed import conv_flops

    return conv_flops(network, window, 1, device) / 3


def _build(variant: str, preset: str, device: torch.device):
    """The network's forward and the dtype of its input, set up as ``variant`` says."""
    torch.manual_seed(0)
    network = UNet(PRESETS[preset]).to(device).eval()
    gpu = device.type == "cuda"
    if gpu and "contiguous" not in variant:
        network.to(memory_format=torch.channels_last_3d)
    dtype = torch.float32
    autocast = gpu
    if variant.startswith("bf16"):
        network.to(torch.bfloat16)
        dtype, autocast = torch.bfloat16, False
    forward = network.forward_zyx
    if variant.startswith("compile"):
        forward = torch.compile(forward)
    elif variant.startswith("graphs"):
        if not gpu:
            raise RuntimeError("CUDA graphs need a GPU")
        forward = torch.compile(forward, mode="reduce-overhead")
    return forward, dtype, autocast


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_variant(
    variant: str, preset: str, window: int, steps: int, warmup: int, device: torch.device
) -> dict:
    """One variant's row (see the module's description)."""
    batch = int(variant.split("_b")[1].split("_")[0])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    forward, dtype, autocast = _build(variant, preset, device)
    x = torch.randn(batch, 1, window, window, window, device=device, dtype=dtype)

    def run() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            return forward(x)[:, 0].float()

    with torch.inference_mode():
        started = time.perf_counter()
        run()
        _sync(device)
        first = time.perf_counter() - started
        for _ in range(warmup):
            run()
        _sync(device)
        started = time.perf_counter()
        for _ in range(steps):
            run()
        _sync(device)
        seconds = time.perf_counter() - started
    gpu = device.type == "cuda"
    return {
        "variant": variant,
        "batch": batch,
        "first_call_s": first,
        "ms_per_window": 1000 * seconds / (steps * batch),
        "peak_gpu_gib": torch.cuda.max_memory_allocated(device) / 2**30 if gpu else None,
    }


def measure(
    preset: str = "full",
    window: int = 160,
    steps: int = 10,
    warmup: int = 3,
    variants: tuple[str, ...] = VARIANTS,
    device: str = "auto",
    deadline: float | None = None,
    partial=None,
) -> dict:
    """Every variant's row; one that fails is recorded with its error and the next still
    runs. Variants left when ``deadline`` (``time.perf_counter()``) has passed are skipped;
    ``partial`` is given the result so far after each row."""
    from patch_corrections.network.devices import pick_device

    target = pick_device(device)
    flops = forward_flops(UNet(PRESETS[preset]).to(target), window, target)
    gpu = target.type == "cuda"
    result = {
        "preset": preset,
        "window": window,
        "steps": steps,
        "warmup": warmup,
        "tflop_per_window": flops / 1e12,
        "rows": [],
    }
    for variant in variants:
        if deadline is not None and time.perf_counter() > deadline:
            result["rows"].append({"variant": variant, "error": "skipped: out of time"})
            continue
        try:
            row = time_variant(variant, preset, window, steps, warmup, target)
            per_second = flops / (row["ms_per_window"] / 1000)
            row["tflop_per_s"] = per_second / 1e12
            row["mfu"] = per_second / PEAK_BF16 if gpu else None
        except Exception as exc:  # recorded: the other variants still run
            row = {"variant": variant, "error": f"{type(exc).__name__}: {exc}"[:400]}
        result["rows"].append(row)
        if partial is not None:
            partial(result)
        torch._dynamo.reset()
    return result


def row_line(row: dict) -> str:
    if "error" in row:
        return f"{row['variant']:22s} {row['error']}"
    mfu = "" if row["mfu"] is None else f", MFU {100 * row['mfu']:.1f} %"
    memory = "" if row["peak_gpu_gib"] is None else f", peak GPU {row['peak_gpu_gib']:.1f} GiB"
    return (
        f"{row['variant']:22s} {row['ms_per_window']:8.2f} ms/window, "
        f"{row['tflop_per_s']:7.1f} TFLOP/s{mfu}{memory}, first call {row['first_call_s']:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="full", choices=sorted(PRESETS))
    parser.add_argument("--window", type=int, default=160)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    args = parser.parse_args()
    result = measure(
        args.preset, args.window, args.steps, args.warmup, tuple(args.variants), args.device
    )
    print(
        f"preset {args.preset}, window {args.window}³, {result['tflop_per_window']:.2f} TFLOP "
        "of convolutions per window"
    )
    for row in result["rows"]:
        print(row_line(row))


if __name__ == "__main__":
    main()
