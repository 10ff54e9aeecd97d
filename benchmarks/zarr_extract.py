"""extract_patches from a chunked OME-Zarr tomogram against the same tomogram as MRC: peak
RSS, bytes read and wall time.

Writes the 1024 x 1024 x 500 (x, y, z) float32 tomogram and int8 segmentation of
``extract_speed.py`` as MRC (2.0 + 0.5 GB) and as one-level OME-Zarr images in chunks of
``--chunk``³ (zarr's default compressor), then cuts 5 patches of 160³ from each pair, each
run in a fresh process, and reports from that process: wall time of the call, peak RSS
(``VmHWM`` of ``/proc/self/status``), and the bytes it read through system calls (``rchar`` of
``/proc/self/io``: page-cache hits count, memory maps would not; both readers use
``pread``), less what a process that only imports the package reads.

    python benchmarks/zarr_extract.py [--scratch /tmp/pc_zarr] [--chunk 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from extract_speed import CENTRES, make_volumes, warm

CHILD = """
import json, sys, time
from pathlib import Path
from patch_corrections.workflows.extraction import extract_patches

def rchar():
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["rchar"])

tomogram, segmentation, centres, out = sys.argv[1:5]
before, start = rchar(), time.perf_counter()
if tomogram != "-":
    extract_patches(Path(tomogram), Path(segmentation), Path(out), Path(centres))
wall = time.perf_counter() - start
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec.
status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
rss = int(status["VmHWM"].split()[0])
print(json.dumps({"wall": wall, "rss_mib": rss / 1024, "read_mib": (rchar() - before) / 2**20}))
"""


def as_zarr(mrc: Path, chunk: int) -> Path:
    """The MRC volume ``mrc`` written beside it as a one-level OME-Zarr image."""
    import mrcfile

    from patch_corrections.io.omezarr_writer import ZarrSlabWriter
    from patch_corrections.io.volumes import read_info

    path = mrc.with_suffix(f".c{chunk}.zarr")
    if path.exists():
        return path
    geometry = read_info(mrc).geometry
    with mrcfile.mmap(mrc, mode="r") as source:
        shape, dtype = source.data.shape, source.data.dtype
        with ZarrSlabWriter(path, shape, dtype, geometry, chunk) as writer:
            for z0 in range(0, shape[0], chunk):
                writer.write(z0, source.data[z0 : z0 + chunk])
    return path


def run(tomogram, segmentation, centres: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    args = [str(tomogram), str(segmentation), str(centres), str(out)]
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr)
    return json.loads(done.stdout)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/pc_zarr"))
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tomogram, segmentation = make_volumes(args.scratch)
    pairs = {
        "MRC": (tomogram, segmentation),
        f"OME-Zarr, {args.chunk}³ chunks": (
            as_zarr(tomogram, args.chunk),
            as_zarr(segmentation, args.chunk),
        ),
    }
    centres = args.scratch / "centres.csv"
    centres.write_text(CENTRES)
    base = run("-", "-", centres, args.scratch / "out")["read_mib"]
    print("| input | on disk (tomogram + segmentation) | wall (median) | peak RSS | read |")
    print("|---|---|---|---|---|")
    for name, (image, labels) in pairs.items():
        for path in (image, labels):
            warm(path) if path.is_file() else [warm(p) for p in path.rglob("*") if p.is_file()]
        runs = [run(image, labels, centres, args.scratch / "out") for _ in range(args.repeats)]
        size = sum(p.stat().st_size if p.is_file() else folder_bytes(p) for p in (image, labels))
        wall = statistics.median(r["wall"] for r in runs)
        rss = max(r["rss_mib"] for r in runs)
        read = statistics.median(r["read_mib"] for r in runs) - base
        print(
            f"| {name} | {size / 2**30:.2f} GiB | {wall:.2f} s | {rss:.0f} MiB | {read:.0f} MiB |"
        )


if __name__ == "__main__":
    main()
