"""segment's reads from a chunked OME-Zarr tomogram against the same tomogram as MRC: every
window of a pass, read and normalised as ``segment`` reads them, without the network.

Writes the 1024 x 1024 x 500 (x, y, z) float32 tomogram of ``extract_speed.py`` as MRC and
as one-level OME-Zarr images in chunks of 64³ and of 256³ (the CZ cryoET Data Portal's),
then, each in a fresh process, reads every window of one pass (``--window``, ``--overlap``,
in ``segment``'s order, by its reader threads) and reports: wall time, peak RSS (``VmHWM``)
and the bytes decompressed (read from the Zarr array: every chunk a read touches, whole).
Each Zarr tomogram is read with the chunk cache at each of ``--budgets`` (``default``, or
MiB: 0 turns it off), so the ratios come from one run on one machine.

    python benchmarks/zarr_windows.py [--scratch /tmp/pc_zarr] [--repeats 3] [--budgets default 0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from extract_speed import make_volumes, warm
from zarr_extract import as_zarr

CHILD = """
import json, sys, time
from pathlib import Path
from patch_corrections.inference import sliding_window as sw
from patch_corrections.inference.intensity import normalised_reader
from patch_corrections.constants import NORMALISATION
from patch_corrections.io import chunk_cache
from patch_corrections.io.volumes import open_volume

path, budget = Path(sys.argv[1]), sys.argv[2]
window, overlap = int(sys.argv[3]), float(sys.argv[4])
if budget != "default":  # exactly this budget
    chunk_cache.BUDGET_BYTES, chunk_cache.MIN_CHUNKS = int(budget) << 20, 0
start = time.perf_counter()
reader = open_volume(path)
read = normalised_reader(reader, NORMALISATION)
if hasattr(reader, "keep_chunks"):
    reader.keep_chunks()  # as segment's Predictor.slabs does
shape = reader.info.shape
size = tuple(max(n, window) for n in shape)
before = tuple((s - n) // 2 for s, n in zip(size, shape))
corners = [
    (z, y, x)
    for z in sw.window_starts(size[0], window, overlap)
    for y in sw.window_starts(size[1], window, overlap)
    for x in sw.window_starts(size[2], window, overlap)
]
windows = 0
for block in sw._prefetched(lambda c: sw._padded_window(read, shape, before, window, c), corners):
    windows += 1
wall = time.perf_counter() - start
cache = getattr(reader, "_cache", None)
status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
print(json.dumps({
    "wall": wall,
    "windows": windows,
    "rss_mib": int(status["VmHWM"].split()[0]) / 1024,
    "decompressed_gib": cache.decompressed / 2**30 if cache else None,
}))
"""


def run(path: Path, budget: str, window: int, overlap: float) -> dict:
    args = [str(path), budget, str(window), str(overlap)]
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/pc_zarr"))
    parser.add_argument("--window", type=int, default=160)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--budgets", nargs="+", default=["default", "0"], help="cache budgets, MiB"
    )
    args = parser.parse_args()
    tomogram, _ = make_volumes(args.scratch)
    cases = [("MRC", tomogram, "default")]
    for chunk in (64, 256):
        path = as_zarr(tomogram, chunk)
        for budget in args.budgets:
            what = {"default": "cache", "0": "no cache"}.get(budget, f"cache {budget} MiB")
            cases += [(f"OME-Zarr {chunk}³, {what}", path, budget)]
    print("| input | windows | wall (median) | peak RSS | decompressed |")
    print("|---|---|---|---|---|")
    for name, path, budget in cases:
        warm(path) if path.is_file() else [warm(p) for p in path.rglob("*") if p.is_file()]
        runs = [run(path, budget, args.window, args.overlap) for _ in range(args.repeats)]
        wall = statistics.median(r["wall"] for r in runs)
        rss = max(r["rss_mib"] for r in runs)
        gib = runs[0]["decompressed_gib"]
        read = "–" if gib is None else f"{gib:.1f} GiB"
        print(
            f"| {name} | {runs[0]['windows']} | {wall:.1f} s | {rss:.0f} MiB | {read} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
