"""Time and peak memory of extract_patches on a large tomogram.

Writes a 1024 x 1024 x 500 (x, y, z) float32 tomogram (2 GB) and an int8 segmentation
(0.5 GB) to a scratch folder, reads them once so they sit in the page cache, then runs the
command five times for five centres through ``/usr/bin/time -v`` and reports wall time and
peak RSS (mapped file pages included, as ``time`` counts them).

    python benchmarks/extract_speed.py [--scratch /tmp/pc_bench] [--repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path

import mrcfile
import numpy as np
from timing import run_timed

SHAPE = (500, 1024, 1024)  # z, y, x
CENTRES = "x,y,z\n512,512,250\n100,900,60\n1000,20,480\n300,300,300\n700,650,10\n"


def make_volumes(scratch: Path) -> tuple[Path, Path]:
    tomogram, segmentation = scratch / "big_tomo.mrc", scratch / "big_seg.mrc"
    if tomogram.exists() and segmentation.exists():
        return tomogram, segmentation
    scratch.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for path, dtype in ((tomogram, np.float32), (segmentation, np.int8)):
        with mrcfile.new_mmap(
            path, shape=SHAPE, mrc_mode=2 if dtype == np.float32 else 0, overwrite=True
        ) as mrc:
            for z0 in range(0, SHAPE[0], 50):
                block = rng.normal(size=(50, *SHAPE[1:])).astype(np.float32)
                mrc.data[z0 : z0 + 50] = block if dtype == np.float32 else (block > 1.5)
            mrc.voxel_size = 14.08
    return tomogram, segmentation


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def run_once(tomogram: Path, segmentation: Path, centres: Path, out: Path) -> tuple[float, int]:
    shutil.rmtree(out, ignore_errors=True)
    wall, rss_kb, _ = run_timed(
        [
            sys.executable,
            "-m",
            "patch_corrections",
            "extract_patches",
            "-t",
            str(tomogram),
            "-s",
            str(segmentation),
            "-c",
            str(centres),
            "-o",
            str(out),
        ]
    )
    return wall, rss_kb


NAIVE = """
import sys, mrcfile, numpy as np
tomo, seg = sys.argv[1], sys.argv[2]
with mrcfile.mmap(tomo, mode="r") as t, mrcfile.mmap(seg, mode="r") as s:
    for x, y, z in [(512, 512, 250), (100, 900, 60), (1000, 20, 480), (300, 300, 300),
                    (700, 650, 10)]:
        box = tuple(slice(max(c - 80, 0), c + 80) for c in (z, y, x))
        image, labels = np.array(t.data[box]), np.array(s.data[box])
"""


def run_naive(tomogram: Path, segmentation: Path) -> tuple[float, int]:
    """The same five blocks copied out of a plain ``mrcfile.mmap``, for comparison."""
    wall, rss_kb, _ = run_timed([sys.executable, "-c", NAIVE, str(tomogram), str(segmentation)])
    return wall, rss_kb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/pc_bench"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the 2.5 GB of volumes")
    args = parser.parse_args()
    tomogram, segmentation = make_volumes(args.scratch)
    centres = args.scratch / "centres.csv"
    centres.write_text(CENTRES)
    warm(tomogram)
    warm(segmentation)
    results = [
        run_once(tomogram, segmentation, centres, args.scratch / "out")
        for _ in range(args.repeats)
    ]
    walls = [w for w, _ in results]
    rss = [r for _, r in results]
    _, base_rss, _ = run_timed([sys.executable, "-c", "import numpy"])
    print(
        f"tomogram {SHAPE[2]}x{SHAPE[1]}x{SHAPE[0]} float32 + int8 segmentation, "
        f"5 centres, 160^3 NRRD patches, {args.repeats} runs"
    )
    print(
        f"wall s      median {statistics.median(walls):.3f}  min {min(walls):.3f}  "
        f"max {max(walls):.3f}"
    )
    print(
        f"peak RSS MB median {statistics.median(rss) / 1024:.0f}  max {max(rss) / 1024:.0f}"
        f"  (python + numpy alone: {base_rss / 1024:.0f})"
    )
    naive = [run_naive(tomogram, segmentation) for _ in range(args.repeats)]
    print(
        f"for comparison, the same blocks sliced from mrcfile.mmap (no writing): wall s "
        f"median {statistics.median(w for w, _ in naive):.3f}, peak RSS MB median "
        f"{statistics.median(r for _, r in naive) / 1024:.0f}"
    )
    if not args.keep:
        shutil.rmtree(args.scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
