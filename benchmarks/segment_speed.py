"""Throughput of `segment` on a synthetic tomogram, with and without 8-flip TTA.

    python benchmarks/segment_speed.py [--shape 464 928 928] [--tta-shape Z Y X]
                                       [--preset full] [--batch-size 2]

Writes a float32 tomogram (z, y, x shape as given) and a checkpoint of the chosen network
(random weights: speed does not depend on them) to a scratch folder, then runs the whole
command (`python -m patch_corrections segment …`: reading, normalising, inference,
blending, writing both MRC files) under `/usr/bin/time -v`, once without TTA on `--shape`
and once with `--tta` on `--tta-shape` (default: the same). Reports wall time, voxels/s and
peak RSS, and the peak GPU memory the command prints on CUDA. The defaults are the
4x-binned tomogram of the targets (928 x 928 x 464, overlap 0.5): under 15 s without TTA
and under 90 s with it on one H100.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

import mrcfile
import numpy as np
import torch
from timing import run_timed

from patch_corrections.checkpoints import save_checkpoint
from patch_corrections.model import PRESETS, UNet


def make_inputs(folder: Path, shape: tuple[int, int, int], preset: str) -> tuple[Path, Path]:
    tomogram = folder / f"tomo_{'x'.join(map(str, shape))}.mrc"
    if not tomogram.exists():
        rng = np.random.default_rng(0)
        with mrcfile.new_mmap(tomogram, shape=shape, mrc_mode=2, overwrite=True) as mrc:
            for z in range(shape[0]):
                mrc.data[z] = rng.normal(size=shape[1:]).astype(np.float32)
            mrc.voxel_size = 14.08
    checkpoint = folder / f"{preset}.pt"
    if not checkpoint.exists():
        torch.manual_seed(0)
        network = UNet(PRESETS[preset])
        save_checkpoint(
            checkpoint,
            {
                "model_config": network.config.to_dict(),
                "model": network.state_dict(),
                "normalisation": "robust_z",
            },
        )
    return tomogram, checkpoint


def run(tomogram: Path, checkpoint: Path, out: Path, extra: list[str]) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    wall, rss, stdout = run_timed(
        [
            sys.executable,
            "-m",
            "patch_corrections",
            "segment",
            "-t",
            str(tomogram),
            "--checkpoint",
            str(checkpoint),
            "-o",
            str(out),
            *extra,
        ]
    )
    gpu = re.search(r"Peak GPU memory: ([\d.]+) GiB", stdout)
    windows = re.search(r"(\d+) windows", stdout)[1]
    return {
        "wall": wall,
        "rss_gb": rss / 2**20,
        "gpu_gb": float(gpu[1]) if gpu else None,
        "windows": int(windows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shape", type=int, nargs=3, default=[464, 928, 928], metavar=("Z", "Y", "X")
    )
    parser.add_argument("--tta-shape", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"))
    parser.add_argument("--preset", default="full", choices=sorted(PRESETS))
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--scratch", type=Path, default=None)
    args = parser.parse_args()
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="segment_bench_"))
    scratch.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(
        f"device: {device}; torch {torch.__version__}; preset {args.preset}; "
        f"batch {args.batch_size}; overlap 0.5; window 160",
        flush=True,
    )
    for label, shape, extra in (
        ("no TTA", args.shape, []),
        ("8-flip TTA", args.tta_shape or args.shape, ["--tta"]),
    ):
        tomogram, checkpoint = make_inputs(scratch, tuple(shape), args.preset)
        result = run(
            tomogram, checkpoint, scratch / "out", ["--batch-size", str(args.batch_size), *extra]
        )
        voxels = int(np.prod(shape))
        line = (
            f"{label:10s} {shape[2]}x{shape[1]}x{shape[0]} (x,y,z), {result['windows']} "
            f"windows: {result['wall']:8.1f} s, {voxels / result['wall'] / 1e6:8.3f} "
            f"Mvoxel/s, peak RSS {result['rss_gb']:.1f} GiB"
        )
        if result["gpu_gb"] is not None:
            line += f", peak GPU memory {result['gpu_gb']:.1f} GiB"
        print(line, flush=True)
    if args.scratch is None:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
