"""What writing one slab of `segment`'s outputs costs the writing thread, on the host.

    python benchmarks/slab_writes.py [--yx 928 928] [--slabs 20] [--scratch DIR]

Each slab is 8 z slices (what the sliding window hands on at a time) of a Y x X tomogram:
its float16 probabilities and int8 segmentation written with ``MrcSlabWriter.write``
(positioned writes plus the header's running statistics), the probabilities also with
the float16 minimum and maximum as NumPy computes them (what the writer did before it
ordered float16 through an int16 key). On a GPU node the last row of windows (20 slabs at
the default 160³ windows) is written after the GPU is done, so these times are the tail
of a run. Medians of ``--slabs`` slabs, in ms; the cases take turns slab by slab. The
files go to memory (``/dev/shm``) where there is one, so that the disk's moods do not
blur what the CPU spends; ``--scratch`` puts them on a disk.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from patch_corrections.inference.finishing import finished
from patch_corrections.io import mrc_writer
from patch_corrections.io.geometry import Geometry
from patch_corrections.io.mrc_writer import MrcSlabWriter


def _median_ms(run, count: int) -> float:
    times = []
    for k in range(count):
        started = time.perf_counter()
        run(k)
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times)


def measure(yx: tuple[int, int], slabs: int, scratch: Path) -> dict[str, float]:
    """Median ms per slab of each step (see the module's description)."""
    probabilities = np.random.default_rng(0).random((8, *yx), dtype=np.float32)
    slab = finished(0, probabilities, None, 0.5)
    scores, labels, _ = slab.on_host()
    shape, unit = (8 * slabs, *yx), Geometry((1.0,) * 3)
    result = {
        "outputs made from float32 (NumPy)": _median_ms(
            lambda k: finished(0, probabilities, None, 0.5), slabs
        )
    }

    def numpy_extremes(values: np.ndarray) -> tuple[float, float]:
        return float(values.min()), float(values.max())

    cases = (
        ("probabilities", scores, mrc_writer._extremes),
        ("probabilities, NumPy's min and max (before)", scores, numpy_extremes),
        ("segmentation", labels, mrc_writer._extremes),
    )
    extremes = mrc_writer._extremes
    times: dict[str, list[float]] = {f"write {name} ({v.dtype})": [] for name, v, _ in cases}
    with ExitStack() as stack:
        writers = [
            stack.enter_context(MrcSlabWriter(scratch / f"{k}.mrc", shape, v.dtype, unit))
            for k, (_, v, _) in enumerate(cases)
        ]
        for z in range(slabs):  # the cases take turns, so the disk's moods hit each alike
            for writer, (label, (_, values, how)) in zip(writers, zip(times, cases)):
                mrc_writer._extremes = how
                try:
                    started = time.perf_counter()
                    writer.write(8 * z, values)
                    times[label].append(time.perf_counter() - started)
                finally:
                    mrc_writer._extremes = extremes
    result |= {label: 1e3 * statistics.median(t) for label, t in times.items()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--yx", type=int, nargs=2, default=[928, 928], metavar=("Y", "X"))
    parser.add_argument("--slabs", type=int, default=20)
    parser.add_argument(
        "--scratch",
        type=Path,
        default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,
        help="where the files go (default: memory, /dev/shm, where there is one)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        result = measure(tuple(args.yx), args.slabs, Path(scratch))
    print(f"| one slab of 8 x {args.yx[0]} x {args.yx[1]} | ms (median of {args.slabs}) |")
    print("|---|---|")
    for name, ms in result.items():
        print(f"| {name} | {ms:.1f} |")


if __name__ == "__main__":
    main()
