"""Throughput of `segment` on a synthetic tomogram, with and without 8-flip TTA.

    python benchmarks/segment_speed.py [--shape 464 928 928] [--tta-shape Z Y X]
                                       [--preset full] [--batch-size 2] [--window 160]
                                       [--device auto] [--compile] [--cases plain tta]

Writes a float32 MRC tomogram (z, y, x shape as given, with the package's own
``write_volume``) and a checkpoint of the chosen network (random weights: speed does not
depend on them) to a scratch folder, then runs the whole ``segment`` workflow (reading,
normalising, inference, blending, writing both MRC files) in a fresh process per case, once
without TTA on ``--shape`` and once with TTA on ``--tta-shape`` (default: the same).
Reports the workflow's wall time (process start-up and imports excluded), voxels/s, the
process's peak RSS (``getrusage``: mapped file pages included) and, on CUDA, peak GPU
memory. The defaults are the 4x-binned tomogram of the targets (928 x 928 x 464, overlap
0.5): under 15 s without TTA and under 90 s with it on one H100. :func:`measure_case`
returns one case's numbers as a dict (used by ``gpu_check.py``). ``--compile`` runs
``segment --compile`` (compilation inside the timed wall time); ``--cases`` picks the cases.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from patch_corrections.network.unet import PRESETS

VOXEL_SIZE = 14.08
"""Å; a 4x-binned tomogram's."""


def make_inputs(folder: Path, shape: tuple[int, int, int], preset: str) -> tuple[Path, Path]:
    """A random float32 tomogram ``shape`` ``(z, y, x)`` and a random-weight checkpoint of
    ``preset`` in ``folder`` (kept when they exist already)."""
    import torch

    from patch_corrections.io.volumes import Geometry, write_volume
    from patch_corrections.network.checkpoints import save_checkpoint
    from patch_corrections.network.unet import UNet

    tomogram = folder / f"tomo_{'x'.join(map(str, shape))}.mrc"
    if not tomogram.exists():
        rng = np.random.default_rng(0)
        data = rng.standard_normal(size=shape, dtype=np.float32)
        write_volume(tomogram, data, Geometry((VOXEL_SIZE,) * 3))
        del data
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


def measure_case(
    tomogram: Path,
    checkpoint: Path,
    out: Path,
    *,
    tta: bool,
    batch_size: int = 2,
    window: int = 160,
    device: str = "auto",
    timeout: float | None = None,
    compile: bool = False,
    pin: bool = True,
    sample: bool = False,
    readers: int | None = None,
    mapped: bool = False,
    inline_writes: bool = False,
    norm_two_passes: bool = False,
) -> dict:
    """Segment ``tomogram`` in a fresh process (so its peak RSS is this case's alone); a
    dict of wall seconds, voxels/s, windows, peak RSS and peak GPU memory (GiB), and what
    the resident memory was made of at its peak (:class:`MemoryWatch`). ``pin`` false
    hands the GPU its batches from ordinary (pageable) memory instead of pinned;
    ``sample`` adds where each thread spent its time (:class:`StackSampler`); ``readers``
    sets how many threads read windows ahead (default: the sliding window's own); ``mapped``
    reads the windows through a memory map of the MRC file instead of one ``preadv`` per
    slice (see :func:`_mapped_reads`); ``inline_writes`` writes the outputs in the thread that
    runs the windows instead of one of their own (``finishing.WRITE_BEHIND`` off);
    ``norm_two_passes`` applies the instance norms as before round five: a float32 result,
    then converted (see :func:`_norm_in_two_passes`).

    Raises ``RuntimeError`` with the process's last output if it fails and
    ``subprocess.TimeoutExpired`` after ``timeout`` seconds."""
    shutil.rmtree(out, ignore_errors=True)
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--case",
        str(tomogram),
        str(checkpoint),
        str(out),
        "--batch-size",
        str(batch_size),
        "--window",
        str(window),
        "--device",
        device,
        *(["--tta"] if tta else []),
        *(["--compile"] if compile else []),
        *([] if pin else ["--no-pin"]),
        *(["--sample"] if sample else []),
        *(["--readers", str(readers)] if readers else []),
        *(["--mapped-reads"] if mapped else []),
        *(["--inline-writes"] if inline_writes else []),
        *(["--norm-two-passes"] if norm_two_passes else []),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    shutil.rmtree(out, ignore_errors=True)
    if done.returncode:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"segment case failed (exit {done.returncode}):\n{tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _case(
    tomogram: Path,
    checkpoint: Path,
    out: Path,
    tta: bool,
    batch: int,
    window: int,
    device: str,
    compile: bool = False,
    pin: bool = True,
    sample: bool = False,
    readers: int | None = None,
    mapped: bool = False,
    inline_writes: bool = False,
    norm_two_passes: bool = False,
) -> None:
    """Run one case in this process and print its numbers as one JSON line."""
    import resource
    import time

    from patch_corrections import SegmentSettings, segment
    from patch_corrections.inference.predictor import Predictor

    if not pin:  # the batches go to the GPU from pageable memory
        Predictor._prepare = lambda self: None
    if readers:
        from patch_corrections.inference import sliding_window

        sliding_window.READERS = readers
    if mapped:
        _mapped_reads()
    if inline_writes:
        from patch_corrections.inference import finishing

        finishing.WRITE_BEHIND = False
    if norm_two_passes:
        _norm_in_two_passes()
    rises = _HighWaterRises()
    settings = SegmentSettings(
        window=window, tta=tta, batch_size=batch, device=device, compile=compile
    )
    from patch_corrections.workflows.events import Listener

    marks: dict[str, float] = {}

    def mark(progress) -> None:
        # The windows run from the first progress report to the last: before them, loading
        # the network and the intensity statistics; after them, the last writes.
        if progress.done == 0:
            marks["windows_start"], marks["hwm_before_windows"] = time.perf_counter(), _hwm()
        if progress.done == progress.total:
            marks["windows_end"], marks["hwm_after_windows"] = time.perf_counter(), _hwm()

    watch = MemoryWatch()
    sampler = StackSampler() if sample else None
    at_start = _hwm()
    started = time.perf_counter()
    with watch, sampler or contextlib.nullcontext():
        report = segment(tomogram, checkpoint, out, settings=settings, listener=Listener(mark))
    wall = time.perf_counter() - started
    phases = {
        "before_windows_s": marks["windows_start"] - started,
        "windows_s": marks["windows_end"] - marks["windows_start"],
        "after_windows_s": started + wall - marks["windows_end"],
        # The process's highest resident memory so far, at each boundary (GiB).
        "peak_rss_at_start_gib": at_start / 2**20,
        "peak_rss_before_windows_gib": marks["hwm_before_windows"] / 2**20,
        "peak_rss_after_windows_gib": marks["hwm_after_windows"] / 2**20,
    }
    voxels = int(np.prod(report.shape_xyz))
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    result = {
        "shape_xyz": list(report.shape_xyz),
        "tta": tta,
        "compile": compile,
        "pinned": pin,
        "readers": readers,
        "mapped_reads": mapped,
        "inline_writes": inline_writes,
        "norm_two_passes": norm_two_passes,
        "batch_size": batch,
        "window": window,
        "device": report.device,
        "windows": report.windows,
        "wall_s": wall,
        "voxels_per_s": voxels / wall,
        "peak_rss_gib": rss_kib / 2**20,
        # What stays resident once the run is over: the libraries (CUDA's among them), the
        # CUDA context and the network: the part of the peak that no tomogram brings.
        "rss_after_gib": _resident_kib() / 2**20,
        "peak_gpu_gib": report.peak_gpu_gib,
        "warnings": report.warnings,
        "phases": phases,
        "rss_at_peak": watch.at_peak,
        "threads": sampler.summary() if sampler else None,
        "host_allocator": _host_allocator_stats(),
        "high_water_rises": rises.steps,
    }
    print(json.dumps(result), flush=True)


class _HighWaterRises:
    """Where the process's highest resident memory (``VmHWM``) rose while segmenting: after
    each slab of outputs came back to the host and was written, and after the outputs were
    closed, a step ``[where, GiB]`` wherever it passed its last step by 32 MiB or more. A
    rise too brief for :class:`MemoryWatch` to see is thus placed within one slab."""

    def __init__(self, step_gib: float = 1 / 32):
        from patch_corrections.inference.finishing import FinishedSlab
        from patch_corrections.io.mrc_writer import MrcSlabWriter

        self.steps: list[list] = []
        self.step_gib = step_gib
        self.last = 0.0
        on_host, close = FinishedSlab.on_host, MrcSlabWriter.close

        def traced_on_host(slab):
            arrays = on_host(slab)
            self.note(f"slab at z {slab.z0} on the host")
            return arrays

        def traced_close(writer):
            close(writer)
            self.note(f"{writer.path.name} closed")

        FinishedSlab.on_host, MrcSlabWriter.close = traced_on_host, traced_close

    def note(self, where: str) -> None:
        now = _hwm() / 2**20
        if now >= self.last + self.step_gib:
            self.steps.append([where, now])
            self.last = now


def _norm_in_two_passes() -> None:
    """Apply every instance norm on CUDA as ``segment`` did before round five: the float32
    multiply-add into a float32 tensor, then a second pass to convert it to the input's
    type (bf16 under autocast). Same values; one more pass over each norm's output."""
    import torch

    from patch_corrections.network import unet

    def two_passes(x, weight, bias, eps):
        scale, shift = unet._scale_and_shift(x, weight, bias, eps)
        return torch.addcmul(shift, x, scale).to(x.dtype)

    unet._instance_norm = two_passes


def _mapped_reads() -> None:
    """Make MRC readers read blocks through a read-only memory map of the file: only the
    bytes of the block are copied, where the product's reader reads each slice's run from
    the block's first row to its last (a 160-voxel window of a 928-wide tomogram: 5.8 times
    the block's bytes). A measurement only: the mapped pages count in the resident memory."""
    from patch_corrections.io.mrc import MrcReader

    def read_block(self, start, stop):
        mapped = getattr(self, "_mapped", None)
        if mapped is None:
            mapped = self._mapped = np.memmap(
                self.info.path, self._stored, "r", offset=self._offset, shape=self.info.shape
            )
        (z0, y0, x0), (z1, y1, x1) = start, stop
        return np.array(mapped[z0:z1, y0:y1, x0:x1], self.info.dtype)

    MrcReader.read_block = read_block


class _Sampling:
    """A daemon thread that runs ``_run`` while the object is used as a context manager;
    ``_run`` loops until ``_stop`` is set."""

    name = "sampling"

    def __init__(self, period: float):
        import threading

        self.period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        raise NotImplementedError


class MemoryWatch(_Sampling):
    """Samples the process's resident memory every 50 ms in a thread while in use, and
    whenever it passes its highest so far by 128 MiB or more, records what it is made of,
    from ``/proc/self/smaps`` (:func:`resident_parts`): ``at_peak``, within 128 MiB of the
    true peak (reading smaps often would slow the run it watches). Linux only (empty
    elsewhere)."""

    name = "memory-watch"

    def __init__(self, period: float = 0.05, step_kib: float = 128 * 1024):
        super().__init__(period)
        self.step_kib = step_kib
        self.at_peak: dict = {}

    def _run(self) -> None:
        highest = 0.0
        while not self._stop.wait(self.period):
            now = _resident_kib()
            if now != now or now < highest + self.step_kib:  # NaN: not Linux
                continue
            highest = now
            self.at_peak = {"rss_gib": now / 2**20, **resident_parts()}


class StackSampler(_Sampling):
    """Where each thread is, sampled every ``period`` seconds while in use: for each
    thread (by name), the share of samples in each of its ``top`` commonest places, a
    place being the innermost frame's function and the innermost one of this package
    (``file:function`` each), so that time spent inside NumPy or torch is charged to the
    line of ours that called it. A Python-level profile of the host side, portable (no
    py-spy on a bare node); waiting threads show where they wait."""

    name = "stack-sampler"

    def __init__(self, period: float = 0.01, top: int = 8):
        super().__init__(period)
        self.top = top
        self.counts: dict[str, dict[str, int]] = {}

    def _run(self) -> None:
        import threading

        own = threading.get_ident()
        while not self._stop.wait(self.period):
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                name = names.get(ident, "?").split("_")[0]
                if ident == own or name == "memory-watch":
                    continue
                counts = self.counts.setdefault(name, {})
                place = _place(frame)
                counts[place] = counts.get(place, 0) + 1

    def summary(self) -> dict:
        """``{thread name: [[place, share of its samples], ...]}``."""
        result = {}
        for name, counts in self.counts.items():
            total = sum(counts.values())
            ranked = sorted(counts.items(), key=lambda item: -item[1])[: self.top]
            result[name] = [[place, count / total] for place, count in ranked]
        return result


def _place(frame) -> str:
    def label(f) -> str:
        return f"{Path(f.f_code.co_filename).name}:{f.f_code.co_name}"

    inner, ours = label(frame), None
    while frame is not None:
        if "patch_corrections" in frame.f_code.co_filename:
            ours = label(frame)
            break
        frame = frame.f_back
    return inner if ours in (None, inner) else f"{inner} < {ours}"


def resident_parts() -> dict:
    """The resident memory of this process by kind of mapping, in GiB: ``anonymous``
    (NumPy's and Python's heap, torch's CPU tensors), ``driver`` (mappings of the GPU
    driver's devices: pinned host memory among them), ``libraries`` (shared objects),
    ``files`` (other mapped files), ``other`` ([heap], [stack] and the like), and the three
    largest single mappings."""
    parts = dict.fromkeys(("anonymous", "driver", "libraries", "files", "other"), 0.0)
    largest: dict[str, float] = {}
    name = ""
    try:
        lines = Path("/proc/self/smaps").read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        head = line.split()
        if not head:
            continue
        if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            name = head[5] if len(head) > 5 else ""
            continue
        if head[0] != "Rss:":
            continue
        kib = float(head[1])
        if not name:
            kind = "anonymous"
        elif name.startswith("/dev/nvidia"):
            kind = "driver"
        elif ".so" in Path(name).name:
            kind = "libraries"
        elif name.startswith("/"):
            kind = "files"
        else:
            kind = "other"
        parts[kind] += kib / 2**20
        label = name or "anonymous"
        largest[label] = largest.get(label, 0.0) + kib / 2**20
    top = sorted(largest.items(), key=lambda item: -item[1])[:3]
    return {**parts, "largest": [[label, gib] for label, gib in top]}


def _host_allocator_stats() -> dict | None:
    """What torch's pinned (host) memory allocator holds, where it says (CUDA only)."""
    import torch

    stats = getattr(torch.cuda, "host_memory_stats", None)
    if not torch.cuda.is_available() or stats is None:
        return None
    try:
        raw = stats()
    except Exception:
        return None
    wanted = ("allocated_bytes.current", "reserved_bytes.current", "reserved_bytes.peak")
    return {key: raw[key] / 2**30 for key in wanted if key in raw} or {
        key: value for key, value in raw.items() if isinstance(value, int | float)
    }


def _resident_kib(field: str = "VmRSS") -> float:
    """The process's resident memory now (``VmRSS``) or at its highest so far (``VmHWM``),
    in KiB (Linux; NaN elsewhere)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return float("nan")
    line = next((x for x in status.splitlines() if x.startswith(field + ":")), None)
    return float(line.split()[1]) if line else float("nan")


def _hwm() -> float:
    return _resident_kib("VmHWM")


def case_line(label: str, case: dict) -> str:
    x, y, z = case["shape_xyz"]
    line = (
        f"{label:10s} {x}x{y}x{z} (x,y,z), {case['windows']} windows: {case['wall_s']:8.1f} s, "
        f"{case['voxels_per_s'] / 1e6:8.3f} Mvoxel/s, peak RSS {case['peak_rss_gib']:.1f} GiB "
        f"({case['rss_after_gib']:.1f} GiB resident after the run)"
    )
    if case["peak_gpu_gib"] is not None:
        line += f", peak GPU memory {case['peak_gpu_gib']:.1f} GiB"
    return "; ".join([line, *case_details(case)])


def case_details(case: dict, top: int = 4) -> list[str]:
    """A case's phases, the ``top`` places of each sampled thread, and what its resident
    memory was made of near its peak, as phrases (those the case has)."""
    details = []
    phases = case.get("phases")
    if phases:
        details.append(
            f"{phases['before_windows_s']:.1f} s before the windows (peak RSS "
            f"{phases['peak_rss_before_windows_gib']:.1f} GiB), {phases['windows_s']:.1f} s of "
            f"windows (peak RSS then {phases['peak_rss_after_windows_gib']:.1f} GiB), "
            f"{phases['after_windows_s']:.1f} s after"
        )
    for thread, places in (case.get("threads") or {}).items():
        shown = ", ".join(f"{place} {100 * share:.0f} %" for place, share in places[:top])
        details.append(f"{thread}: {shown}")
    rises = case.get("high_water_rises") or []
    if rises:
        shown = ", ".join(f"{where} {gib:.2f}" for where, gib in rises[-top:])
        details.append(f"high-water mark rose (GiB): {shown}")
    parts = case.get("rss_at_peak") or {}
    if "anonymous" in parts:
        kinds = ("anonymous", "driver", "libraries", "files", "other")
        details.append("at the peak: " + ", ".join(f"{k} {parts[k]:.2f}" for k in kinds))
    return details


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shape", type=int, nargs=3, default=[464, 928, 928], metavar=("Z", "Y", "X")
    )
    parser.add_argument("--tta-shape", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"))
    parser.add_argument("--preset", default="full", choices=sorted(PRESETS))
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--window", type=int, default=160)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--scratch", type=Path, default=None)
    parser.add_argument("--case", nargs=3, type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tta", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--no-pin", action="store_true", help="batches to the GPU from pageable memory"
    )
    parser.add_argument(
        "--sample", action="store_true", help="sample where each thread spends its time"
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the network (segment --compile)"
    )
    parser.add_argument("--readers", type=int, default=None, help="threads reading windows")
    parser.add_argument(
        "--mapped-reads", action="store_true", help="read windows through a memory map"
    )
    parser.add_argument(
        "--inline-writes",
        action="store_true",
        help="write the outputs in the window loop's thread, not one of their own",
    )
    parser.add_argument(
        "--norm-two-passes",
        action="store_true",
        help="apply the instance norms as a float32 result, then converted",
    )
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=("plain", "tta"),
        default=["plain", "tta"],
        help="which cases to run: without TTA, with 8-flip TTA",
    )
    args = parser.parse_args()
    if args.case:
        _case(
            *args.case,
            args.tta,
            args.batch_size,
            args.window,
            args.device,
            args.compile,
            not args.no_pin,
            args.sample,
            args.readers,
            args.mapped_reads,
            args.inline_writes,
            args.norm_two_passes,
        )
        return
    import torch

    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="segment_bench_"))
    scratch.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(
        f"device: {device}; torch {torch.__version__}; preset {args.preset}; "
        f"batch {args.batch_size}; overlap 0.5; window {args.window}"
        f"{'; compiled' if args.compile else ''}",
        flush=True,
    )
    for label, shape, tta in (
        ("no TTA", args.shape, False),
        ("8-flip TTA", args.tta_shape or args.shape, True),
    ):
        if ("tta" if tta else "plain") not in args.cases:
            continue
        tomogram, checkpoint = make_inputs(scratch, tuple(shape), args.preset)
        case = measure_case(
            tomogram,
            checkpoint,
            scratch / "out",
            tta=tta,
            batch_size=args.batch_size,
            window=args.window,
            device=args.device,
            compile=args.compile,
            pin=not args.no_pin,
            sample=args.sample,
            readers=args.readers,
            mapped=args.mapped_reads,
            inline_writes=args.inline_writes,
            norm_two_passes=args.norm_two_passes,
        )
        print(case_line(label, case), flush=True)
        print(json.dumps(case), flush=True)
    if args.scratch is None:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
