"""Data-parallel scaling of ``retrain``: one process against N under torchrun, same global
batch, on the CPU (gloo) or on GPUs (NCCL).

    python benchmarks/ddp_scaling.py [--processes 2] [--preset small] [--crop 48]
                                     [--batch 4] [--steps 30] [--device cpu]

Each run is the ``retrain`` workflow on the same synthetic training folder, in a fresh
process: first one process with the whole ``--batch``, then ``torchrun --nproc-per-node
N`` with ``--batch / N`` per process (the same crops, split over the ranks). torchrun sets
``OMP_NUM_THREADS=1`` per process, so on the CPU both runs share the machine's cores; the
single process keeps PyTorch's default thread count. The rate is taken between the first
and the last metrics row (``--steps / 3`` steps apart), so start-up, the first steps and
the final checkpoint are not timed. Prints steps/s, samples/s (crops/s) and the speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()


def _folder(root: Path, count: int = 4, edge: int = 64) -> Path:
    """Synthetic training pairs: noisy images with membrane planes, fully annotated."""
    from patch_corrections.io.volumes import Geometry, write_volume

    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(count):
        labels = np.zeros((edge,) * 3, np.uint8)
        for z in rng.integers(4, edge - 4, 4):
            labels[z : z + 2] = 1
        image = (rng.normal(size=labels.shape) + 2.0 * labels).astype(np.float32)
        geometry = Geometry((10.0, 10.0, 10.0))
        write_volume(root / "imagesTr" / f"p{i}_0000.nii.gz", image, geometry)
        write_volume(root / "labelsTr" / f"p{i}.nii.gz", labels, geometry)
    return root


def worker(args: argparse.Namespace) -> None:
    """One process of a run (under torchrun or not): train, and on rank 0 print the rate."""
    from patch_corrections.workflows.training import RetrainSettings, retrain

    every = max(1, args.steps // 3)
    settings = RetrainSettings(
        iterations=args.steps,
        batch_size=args.batch,
        crop_size=args.crop,
        preset=args.preset,
        val_fraction=0,
        val_every=every,
        save_every=args.steps,
        device=args.device,
    )
    report = retrain(Path(args.train), Path(args.out), settings=settings)
    if int(os.environ.get("RANK", "0")) == 0:
        rows = [
            [float(v) for v in line.split(",")[:6:5]]
            for line in report.metrics.read_text().splitlines()[1:]
        ]
        (first, t0), (last, t1) = rows[0], rows[-1]
        print("RESULT " + json.dumps({"steps_per_s": (last - first) / (t1 - t0)}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(processes: int, batch: int, args: argparse.Namespace, root: Path) -> float:
    command = [sys.executable]
    if processes > 1:
        command += ["-m", "torch.distributed.run", "--nproc-per-node", str(processes)]
        command += ["--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    command += [
        str(HERE),
        "--worker",
        "--train",
        str(root / "train"),
        "--out",
        str(root / f"model_{processes}"),
        "--batch",
        str(batch),
        "--preset",
        args.preset,
        "--crop",
        str(args.crop),
        "--steps",
        str(args.steps),
        "--device",
        args.device,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        sys.exit(result.stdout + result.stderr)
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))["steps_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--crop", type=int, default=48)
    parser.add_argument("--batch", type=int, default=4, help="global batch (all processes)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--train", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.batch % args.processes:
        sys.exit(f"--batch {args.batch} must be a multiple of --processes {args.processes}")
    import torch

    print(
        f"{platform.node()}: {os.cpu_count()} CPU(s), torch {torch.__version__}, "
        f"device {args.device}, preset {args.preset}, crop {args.crop}³, global batch "
        f"{args.batch}, {args.steps} steps"
    )
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        _folder(root / "train", edge=max(64, args.crop))
        base = None
        print(f"{'processes':>9}  {'batch/proc':>10}  {'steps/s':>8}  {'samples/s':>9}  speed-up")
        for processes in (1, args.processes):
            rate = _run(processes, args.batch // processes, args, root)
            base = base or rate
            print(
                f"{processes:>9}  {args.batch // processes:>10}  {rate:>8.3f}  "
                f"{rate * args.batch:>9.2f}  {rate / base:>7.2f}x"
            )


if __name__ == "__main__":
    main()
