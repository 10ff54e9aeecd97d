"""Everything a borrowed GPU node should tell us, in one command.

    python benchmarks/gpu_check.py [--json PATH] [--smoke]

Sections, each in its own process with its own time limit, so one that fails or hangs is
recorded and the rest still run:

1. ``pytest``: ``pytest -m cuda -q`` (tests/test_cuda.py: bf16 and fp16 training,
   channels-last, compile, GPU checkpoint resumed on the CPU, out-of-memory message,
   segment on CUDA against the CPU), with pass / fail / skip counts;
2. ``train``: training throughput of the full network at 160³ x 2, ours against the
   MemBrain-seg way (``train_speed.measure``): it/s, voxels/s, data-wait share, peak GPU
   memory, MFU;
3. ``segment``: the ``segment`` workflow end to end on a synthetic 928 x 928 x 464 float32
   MRC tomogram (``segment_speed.measure_case``, one process per case): as it runs by
   default; with its outputs written in the window loop's thread, as before they had a
   thread of their own; with a tiny network, so that only the host side counts, sampled
   for where each thread spends its time; with its instance norms applied in two passes
   (a float32 result, then converted), as before; read from an OME-Zarr copy in 256³
   chunks (when zarr travelled in ``.whl/``): wall time, voxels/s, peak GPU memory,
   peak host RSS, what the resident memory was made of at its peak, and where its
   high-water mark rose;
4. ``membrain``: ``membrain segment`` against ours on the same tomogram and the same
   full-size MemBrain-seg checkpoint, whole commands (``membrain_speed.measure``), without
   TTA and with it on a 320 x 320 x 160 crop; MemBrain-seg from its own folder of carried
   wheels (``.whl/membrain/``);
5. ``window``: the network's forward pass over a batch of 160³ windows alone, each way of
   running it on its own (``window_speed.measure``: batch 1 / 2 / 4, channels-last or not,
   bf16 weights, compiled, compiled as CUDA graphs): ms per window and MFU;
6. ``profile``: where the time goes, from ``torch.profiler``: a few training steps of the
   full network at 160³ x 2 and one ``segment`` pass over a 160 x 464 x 464 tomogram, each
   with the device's busy share of the wall time, the costliest operations, and the
   device-to-host copies and stream synchronisations per step (or per window).

Prints a Markdown table ready for benchmarks/RESULTS.md and writes every number to a JSON
file (``--json``; default ``gpu_check.json`` in ``$OUT`` when set, else here). The full
check runs segment, membrain, window, train and pytest in that order, within ``--deadline``
seconds in all (default 525): each section gets its own budget or what is left, whichever
is less, and one that would start with under 20 s left is skipped.

``--smoke`` runs every section at toy sizes (tiny network, 32³ crops, a 48 x 64 x 64
tomogram) in well under a minute on a CPU; tests/test_gpu_check.py runs it so the script
keeps working. benchmarks/gpu_check.sh sets up a bare GPU node and runs this.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# Per-section settings: the full check (budgets add up to under 8 minutes; about 5 expected
# on one H100) and the smoke test.
FULL = {
    "pytest": {"budget_s": 200, "args": ["tests"]},
    "train": {
        "budget_s": 100,
        "preset": "full",
        "crop": 160,
        "batch": 2,
        "steps": 20,
        "warmup": 5,
        "compile": True,
    },
    "segment": {
        "budget_s": 250,
        "preset": "full",
        "shape": (464, 928, 928),
        "window": 160,
        "batch_size": 2,
        "cases": (
            {"name": "default"},
            # The outputs made on the GPU but written as before round five: in the loop
            # thread, which then waits for each row's copies back to the host.
            {"name": "outputs written in the window loop's thread", "inline_writes": True},
            {"name": "tiny network: the host side, sampled", "preset": "tiny", "sample": True},
            {"name": "instance norms applied in two passes", "norm_two_passes": True},
            # Last, so that it is the one cut when time runs short: read from an OME-Zarr
            # copy in the CZ cryoET Data Portal's 256³ chunks (zarr from .whl/).
            {"name": "from an OME-Zarr copy in 256³ chunks", "zarr_chunk": 256},
            # Answered in rounds two to four (RESULTS): pageable batches; 8-flip TTA
            # compiled; windows read through a memory map; 8 reading threads; compiled.
        ),
    },
    "membrain": {
        "budget_s": 200,
        "preset": "full",
        "shape": (464, 928, 928),
        "crop": (160, 320, 320),
        "window": 160,
    },
    "window": {
        "budget_s": 100,
        "preset": "full",
        "window": 160,
        "steps": 10,
        "warmup": 3,
        "variants": (
            "eager_b2",
            "eager_b1",
            "eager_b4",
            "bf16_b2",
            "eager_b2_contiguous",
            "compile_b2",
            "graphs_b2",
            "compile_b4",
        ),
    },
    "profile": {
        "budget_s": 60,
        "preset": "full",
        "crop": 160,
        "batch": 2,
        "steps": 3,
        "warmup": 3,
        "shape": (160, 464, 464),
        "window": 160,
        "batch_size": 2,
    },
}
SMOKE = {
    "pytest": {"budget_s": 60, "args": ["tests/test_cuda.py"]},
    "train": {"budget_s": 60, "preset": "tiny", "crop": 32, "batch": 2, "steps": 2, "warmup": 1},
    "segment": {
        "budget_s": 60,
        "preset": "tiny",
        "shape": (48, 64, 64),
        "window": 32,
        "batch_size": 2,
        "cases": (
            {"name": "default"},
            {"name": "sampled", "sample": True},
            {"name": "pageable batches", "pin": False},
            {"name": "read mapped, 3 reading threads", "mapped": True, "readers": 3},
            {"name": "outputs written in the loop's thread", "inline_writes": True},
            {"name": "norms in two passes", "norm_two_passes": True},
            {"name": "from OME-Zarr in 32³ chunks", "zarr_chunk": 32},
            {"name": "8-flip TTA", "tta": True, "shape": (32, 48, 48)},
        ),
    },
    "membrain": {
        "budget_s": 60,
        "preset": "tiny",
        "shape": (48, 64, 64),
        "crop": (32, 64, 64),
        "window": 64,
    },
    "window": {
        "budget_s": 30,
        "preset": "tiny",
        "window": 32,
        "steps": 2,
        "warmup": 1,
        "variants": ("eager_b2", "eager_b1", "bf16_b2"),
    },
    "profile": {
        "budget_s": 60,
        "preset": "tiny",
        "crop": 32,
        "batch": 2,
        "steps": 2,
        "warmup": 1,
        "shape": (32, 64, 64),
        "window": 32,
        "batch_size": 2,
    },
}
SCRATCH = Path(tempfile.gettempdir()) / "gpu_check"
"""Inputs shared by the sections (the tomogram, the checkpoints), kept for a second run."""


def run_pytest(settings: dict, env: dict) -> dict:
    """``pytest -m cuda -q`` in a child process; counts from its JUnit XML."""
    shown = ["-m", "pytest", "-m", "cuda", "-q", *settings["args"]]
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        # A test module that cannot be imported here (a library missing on the node) is
        # reported, and the CUDA tests still run.
        command = [
            sys.executable,
            *shown,
            "-p",
            "no:cacheprovider",
            "--continue-on-collection-errors",
            f"--junitxml={junit}",
        ]
        started = time.perf_counter()
        done = subprocess.run(
            command,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=settings["budget_s"],
        )
        seconds = time.perf_counter() - started
        output = (done.stdout + done.stderr).strip().splitlines()
        if not junit.exists():
            raise RuntimeError("pytest wrote no report:\n" + "\n".join(output[-20:]))
        suite = ElementTree.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        failed, uncollected = [], []
        for case in suite.iter("testcase"):
            problem = case.find("failure")
            problem = case.find("error") if problem is None else problem
            if problem is None:
                continue
            if problem.get("message") == "collection failure":
                uncollected.append(case.get("name", ""))
            else:
                failed.append(case.get("classname", "") + "::" + case.get("name", ""))
    return {
        "command": shlex.join(["python", *shown]),
        "exit_code": done.returncode,
        "seconds": seconds,
        "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
        "failed": len(failed),
        "skipped": counts["skipped"],
        "failed_tests": failed,
        "not_collected": uncollected,
        "summary": output[-1] if output else "",
        "tail": output[-40:] if done.returncode not in (0, 5) else [],
    }


def run_train(settings: dict) -> dict:
    """Training throughput, ours and the MemBrain-seg way (child process)."""
    from train_speed import measure

    return measure(
        settings["preset"],
        settings["crop"],
        settings["batch"],
        settings["steps"],
        settings["warmup"],
        compile=settings.get("compile", False),
        membrain=True,
    )


def run_segment(settings: dict, budget_left, partial) -> dict:
    """The segment workflow, each case of the settings in its own process; a case that
    fails is recorded with its error and the next one still runs. ``partial`` is given the
    result so far after each case, so a section cut short still reports."""
    from segment_speed import make_inputs, measure_case

    cases = []
    SCRATCH.mkdir(parents=True, exist_ok=True)
    for spec in settings["cases"]:
        shape = spec.get("shape", settings["shape"])
        case = {
            "name": spec["name"],
            "tta": spec.get("tta", False),
            "shape_xyz": list(shape[::-1]),
            "preset": spec.get("preset", settings["preset"]),
        }
        try:
            tomogram, checkpoint = make_inputs(SCRATCH, tuple(shape), case["preset"])
            if "zarr_chunk" in spec:
                tomogram, case["zarr_copy_s"] = _zarr_copy(tomogram, spec["zarr_chunk"])
            case |= measure_case(
                tomogram,
                checkpoint,
                SCRATCH / "out",
                tta=case["tta"],
                batch_size=settings["batch_size"],
                window=settings["window"],
                timeout=budget_left(),
                compile=spec.get("compile", False),
                pin=spec.get("pin", True),
                sample=spec.get("sample", False),
                readers=spec.get("readers"),
                mapped=spec.get("mapped", False),
                inline_writes=spec.get("inline_writes", False),
                norm_two_passes=spec.get("norm_two_passes", False),
            )
        except subprocess.TimeoutExpired:
            case["error"] = "over the section's time budget"
        except Exception as exc:
            case["error"] = f"{type(exc).__name__}: {exc}"
        cases.append(case)
        partial({"cases": cases})
    return {"cases": cases}


def _zarr_copy(tomogram: Path, chunk: int) -> tuple[Path, float]:
    """An OME-Zarr copy of the MRC ``tomogram`` in ``chunk``³ chunks beside it, and the
    seconds it took to write (0 when it was there already)."""
    from zarr_extract import as_zarr

    started = time.perf_counter()
    copy = as_zarr(tomogram, chunk)
    return copy, time.perf_counter() - started


def run_membrain(settings: dict, budget_left, partial) -> dict:
    """``membrain segment`` and ours side by side (``membrain_speed.measure``), run by
    ``$MEMBRAIN_PYTHON`` (default: this python) with MemBrain-seg's carried wheels
    (``.whl/membrain/``) or its own installation; not measured where neither is at hand."""
    from membrain_speed import WHEELS, measure
    from segment_speed import make_inputs

    python = os.environ.get("MEMBRAIN_PYTHON") or sys.executable
    wanted = "pytorch_lightning, monai" if not any(WHEELS.glob("*.whl")) else "pytorch_lightning"
    probe = subprocess.run([python, "-c", f"import {wanted}"], capture_output=True, text=True)
    if probe.returncode:
        missing = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return {"available": False, "detail": f"{python} cannot run MemBrain-seg: {missing}"}
    SCRATCH.mkdir(parents=True, exist_ok=True)
    tomogram, _ = make_inputs(SCRATCH, tuple(settings["shape"]), settings["preset"])
    deadline = time.perf_counter() + budget_left() - 5
    result = measure(
        tomogram,
        SCRATCH / "membrain",
        python=python,
        crop=tuple(settings["crop"]),
        deadline=deadline,
        window=settings["window"],
        tiny=settings["preset"] == "tiny",
        partial=partial,
    )
    return {"available": True, **result}


def run_window(settings: dict, budget_left, partial) -> dict:
    from window_speed import measure

    return measure(
        settings["preset"],
        settings["window"],
        settings["steps"],
        settings["warmup"],
        tuple(settings["variants"]),
        deadline=time.perf_counter() + budget_left() - 10,
        partial=partial,
    )


SECTIONS = ("segment", "membrain", "window", "train", "pytest", "profile")
"""In the order a full check runs them: the targets' figures and the peer's first."""

SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
"""Host calls that wait for the device."""


def _profile_summary(profiler, wall: float, units: int, gpu: bool, top: int = 8) -> dict:
    """Device busy share of ``wall``, the ``top`` costliest operations (self time on the
    device, or on the CPU without one), and device-to-host copies and host waits per unit
    (a training step, a window)."""
    from torch.autograd import DeviceType

    events = profiler.key_averages()
    own = (lambda e: e.self_device_time_total) if gpu else (lambda e: e.self_cpu_time_total)
    # Kernels and copies alone: an operator's device time is that of the kernels it ran.
    busy = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA)
    busy /= 1e6  # µs -> s
    costly = sorted(events, key=own, reverse=True)[:top]
    copies = sum(e.count for e in events if "DtoH" in e.key)
    waits = sum(e.count for e in events if e.key in SYNCS)
    return {
        "wall_s": wall,
        "units": units,
        "busy_share": busy / wall if gpu else None,
        "device_to_host_per_unit": copies / units,
        "host_waits_per_unit": waits / units,
        "top": [
            {
                "name": e.key[:80],
                "seconds": own(e) / 1e6,
                "share": own(e) / 1e6 / wall,
                "calls": e.count,
            }
            for e in costly
        ],
    }


def run_profile(settings: dict) -> dict:
    """``torch.profiler`` over a few training steps and one segment pass (child process)."""
    from dataclasses import replace

    import torch
    from segment_speed import make_inputs
    from torch.profiler import ProfilerActivity, profile
    from train_speed import synthetic_patches

    from patch_corrections import SegmentSettings, segment
    from patch_corrections.inference.sliding_window import windows_count
    from patch_corrections.network.devices import pick_device, sync
    from patch_corrections.network.unet import PRESETS, UNet
    from patch_corrections.training.config import TrainConfig
    from patch_corrections.training.loop import train
    from patch_corrections.workflows.events import Listener, Progress

    target = pick_device("auto")
    gpu = target.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if gpu else [])]
    result = {}
    crop, steps = settings["crop"], settings["steps"]
    patches = synthetic_patches(4, max(crop, 64))
    config = TrainConfig(
        iterations=settings["warmup"],
        batch_size=settings["batch"],
        crop_size=crop,
        val_every=10**9,
        save_every=10**9,
    )
    torch.manual_seed(0)
    network = UNet(PRESETS[settings["preset"]])
    with tempfile.TemporaryDirectory() as tmp:
        train(network, patches, [], config, tmp, target)  # warm-up: autotuning, allocator
        sync(target)
        profiler, marks = profile(activities=activities), {}

        def stop_after(step: int, _) -> None:
            # The profile ends before the run's last step, which saves a checkpoint.
            if step == steps:
                sync(target)
                marks["wall"] = time.perf_counter() - marks["started"]
                profiler.stop()

        profiler.start()
        marks["started"] = time.perf_counter()
        run = replace(config, iterations=steps + 1)
        train(network, patches, [], run, tmp, target, on_step=stop_after)
        result["train"] = _profile_summary(profiler, marks["wall"], steps, gpu)
        shape = tuple(settings["shape"])
        tomogram, checkpoint = make_inputs(Path(tmp), shape, settings["preset"])
        segment_settings = SegmentSettings(
            window=settings["window"], batch_size=settings["batch_size"]
        )
        segment(tomogram, checkpoint, Path(tmp) / "warm", settings=segment_settings)
        profiler, marks = profile(activities=activities), {}

        def windows_only(progress: Progress) -> None:
            # From the first window to the last: not loading, statistics or writing.
            if progress.task != "Segmenting":
                return
            if progress.done == 0 and "started" not in marks:
                profiler.start()
                marks["started"] = time.perf_counter()
            elif progress.done == progress.total and "wall" not in marks:
                sync(target)
                marks["wall"] = time.perf_counter() - marks["started"]
                profiler.stop()

        listener = Listener(progress=windows_only)
        segment(
            tomogram, checkpoint, Path(tmp) / "out", settings=segment_settings, listener=listener
        )
        windows = windows_count(shape, settings["window"], 0.5)
        result["segment"] = _profile_summary(profiler, marks["wall"], windows, gpu)
        result["segment"]["shape_xyz"] = list(shape[::-1])
    return result


def _section_child(name: str, smoke: bool, out: Path, budget: float) -> None:
    """Entry point of a section's child process: write its result as JSON to ``out``."""
    settings = (SMOKE if smoke else FULL)[name]
    started = time.perf_counter()

    def budget_left() -> float:
        return max(1.0, budget - (time.perf_counter() - started))

    def partial(result: dict) -> None:
        out.write_text(json.dumps(result))

    if name == "train":
        result = run_train(settings)
    elif name == "profile":
        result = run_profile(settings)
    else:
        run = {"segment": run_segment, "membrain": run_membrain, "window": run_window}[name]
        result = run(settings, budget_left, partial)
    out.write_text(json.dumps(result))


class _Partial(Exception):
    """A section cut at its time limit, with the results it finished before."""

    def __init__(self, result: dict):
        super().__init__(result.get("error", ""))
        self.result = result


def run_section(name: str, smoke: bool, env: dict, left: float = float("inf")) -> dict:
    """One section, within its time budget or the ``left`` seconds of the whole check,
    whichever is less (a child process but for pytest); the outcome is recorded in the
    result, never raised."""
    settings = dict((SMOKE if smoke else FULL)[name])
    settings["budget_s"] = budget = min(settings["budget_s"], left)
    started = time.perf_counter()
    if budget < 20:
        return {"status": "skipped", "error": "no time left", "seconds_total": 0.0}
    try:
        if name == "pytest":
            result = run_pytest(settings, env)
            passed = result["failed"] == 0 and result["exit_code"] in (0, 5)
            status = "ok" if passed else "failed"
        else:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "result.json"
                command = [sys.executable, __file__, "--section", name, str(out)]
                command += ["--budget", str(budget), *(["--smoke"] if smoke else [])]
                try:
                    done = subprocess.run(
                        command,
                        env=env,
                        capture_output=True,
                        text=True,
                        timeout=budget + 15,
                    )
                except subprocess.TimeoutExpired:
                    if not out.exists():
                        raise
                    result = json.loads(out.read_text())  # what it finished in time
                    result["error"] = f"over its budget of {budget:.0f} s"
                    result["status"] = "timeout"
                    raise _Partial(result) from None
                if done.returncode or not out.exists():
                    tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
                    raise RuntimeError(f"exit code {done.returncode}:\n" + "\n".join(tail))
                result = json.loads(out.read_text())
                parts = result.get("cases", []) + result.get("rows", [])
                errors = [c for c in parts if "error" in c and "skipped" not in c["error"]]
                status = "failed" if errors else "ok"
    except _Partial as cut:
        result, status = cut.result, "timeout"
    except subprocess.TimeoutExpired:
        result, status = {"error": f"over its budget of {budget:.0f} s"}, "timeout"
    except Exception as exc:  # recorded, not fatal: the other sections still run
        result, status = {"error": f"{type(exc).__name__}: {exc}"}, "failed"
    result["status"] = status
    result["seconds_total"] = time.perf_counter() - started
    result["settings"] = settings
    return result


def _gib(value) -> str:
    return "–" if value is None else f"{value:.1f} GiB"


def table(report: dict) -> str:
    """The report as Markdown, for benchmarks/RESULTS.md."""
    lines = [
        f"GPU check, {report['date']}, on {report['device']} (torch {report['torch']}, "
        f"Python {report['python']}){' — smoke mode' if report['smoke'] else ''}",
        f"command: `{report['command']}`",
        "",
        "| check | setting | result |",
        "|---|---|---|",
    ]
    sections = report["sections"]
    for name in SECTIONS:
        section = sections.get(name)
        if section is None:
            continue
        rows = _ROWS[name](section)
        if not rows:
            error = section.get("error", "").strip().splitlines() or [""]
            rows = [f"| {name} | | **{section['status']}**: {error[-1][:200]} |"]
        lines += rows
    return "\n".join(lines)


def _pytest_rows(pytest: dict) -> list[str]:
    if "passed" not in pytest:
        return []
    names = ", ".join(t.split("::")[-1] for t in pytest["failed_tests"])
    modules = ", ".join(pytest["not_collected"])
    uncollected = f"; not importable here: {modules}" if modules else ""
    return [
        f"| pytest -m cuda | `{pytest['command']}` | {pytest['passed']} passed, "
        f"{pytest['failed']} failed{f' ({names})' if names else ''}, "
        f"{pytest['skipped']} skipped in {pytest['seconds']:.0f} s "
        f"(exit code {pytest['exit_code']}){uncollected} |"
    ]


def _train_rows(train: dict) -> list[str]:
    setting = (
        f"{train['settings']['preset']}, {train.get('crop')}³ x {train.get('batch')}, "
        f"{train.get('steps')} steps after {train.get('warmup')}"
        f"{', compiled' if train['settings'].get('compile') else ''}"
    )
    lines = []
    for row in train.get("rows", []):
        mfu = "" if row["mfu"] is None else f", MFU {100 * row['mfu']:.1f} %"
        lines.append(
            f"| training, {row['name']} | {setting} | {row['it_per_s']:.2f} it/s, "
            f"{row['voxels_per_s'] / 1e6:.2f} Mvoxel/s, data wait "
            f"{100 * row['data_wait_share']:.1f} %, peak GPU {_gib(row['peak_gpu_gib'])}"
            f"{mfu} |"
        )
    return lines


def _segment_rows(segment: dict) -> list[str]:
    from segment_speed import case_details

    lines = []
    for case in segment.get("cases", []):
        x, y, z = case["shape_xyz"]
        what = f"segment, {case['name']}"
        setting = f"{x} x {y} x {z} (x,y,z), {case['preset']}"
        if "error" in case:
            error = " ".join(case["error"].split())[-200:]
            lines.append(f"| {what} | {setting} | **failed**: {error} |")
            continue
        made_of = "".join(f"; {detail}" for detail in case_details(case, top=3))
        if "zarr_copy_s" in case:
            made_of += f"; the Zarr copy took {case['zarr_copy_s']:.1f} s to write (not counted)"
        lines.append(
            f"| {what} | {setting}, batch {case['batch_size']}, {case['windows']} windows | "
            f"{case['wall_s']:.1f} s, {case['voxels_per_s'] / 1e6:.2f} Mvoxel/s, peak GPU "
            f"{_gib(case['peak_gpu_gib'])}, peak RSS {_gib(case['peak_rss_gib'])} "
            f"({_gib(case.get('rss_after_gib'))} still resident after the run){made_of} |"
        )
    return lines


def _membrain_rows(membrain: dict) -> list[str]:
    if not membrain.get("available", True):
        return [f"| membrain segment | | not measured: {membrain['detail']} |"]
    from membrain_speed import case_line

    stand_ins = ", ".join(membrain.get("stand_ins", [])) or "none"
    return [
        f"| membrain segment vs ours | MemBrain-seg checkpoint, window "
        f"{membrain['settings']['window']}, stand-ins: {stand_ins} | {case_line(case)} |"
        for case in membrain.get("cases", [])
        if "membrain" in case and "ours" in case
    ]


def _window_rows(window: dict) -> list[str]:
    from window_speed import row_line

    setting = f"{window.get('preset')}, {window.get('window')}³, {window.get('steps')} batches"
    return [
        f"| forward, {row['variant']} | {setting} | {row_line(row)[23:]} |"
        for row in window.get("rows", [])
    ]


def _profile_rows(profiled: dict) -> list[str]:
    lines = []
    for what, unit in (("train", "step"), ("segment", "window")):
        if what not in profiled:
            continue
        part = profiled[what]
        busy = (
            "" if part["busy_share"] is None else f"device busy {100 * part['busy_share']:.0f} %; "
        )
        top = ", ".join(f"{t['name'][:40]} {100 * t['share']:.0f} %" for t in part["top"][:4])
        lines.append(
            f"| profile, {'training' if what == 'train' else 'segment'} | {part['units']} "
            f"{unit}s, {part['wall_s']:.2f} s | {busy}{part['device_to_host_per_unit']:.1f} "
            f"device-to-host copies and {part['host_waits_per_unit']:.1f} host waits per "
            f"{unit}; top: {top} |"
        )
    return lines


_ROWS = {
    "pytest": _pytest_rows,
    "train": _train_rows,
    "segment": _segment_rows,
    "membrain": _membrain_rows,
    "window": _window_rows,
    "profile": _profile_rows,
}


def _torch_facts() -> dict:
    """The device and versions, asked in a child process so that this one never holds a
    CUDA context (and its memory) while the sections run."""
    code = (
        "import json, platform, torch; gpu = torch.cuda.is_available(); print(json.dumps("
        "{'gpu': gpu, 'torch': torch.__version__, 'cuda': torch.version.cuda, 'device': "
        "torch.cuda.get_device_name() if gpu else f'CPU ({platform.machine()})'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"cannot import torch:\n{done.stderr}")
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="where to write the results")
    parser.add_argument("--smoke", action="store_true", help="toy sizes, runs on a CPU")
    parser.add_argument(
        "--sections", nargs="+", choices=SECTIONS, default=SECTIONS, help="which to run"
    )
    parser.add_argument(
        "--deadline", type=float, default=525, help="seconds for all the sections together"
    )
    parser.add_argument("--section", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.section:
        _section_child(args.section[0], args.smoke, Path(args.section[1]), args.budget)
        return
    target = args.json or Path(os.environ.get("OUT") or ".") / "gpu_check.json"

    about = _torch_facts()
    gpu = about["gpu"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    if args.smoke and not gpu:
        # A busy small CPU runs tiny convolutions far faster on one thread than on several.
        env.setdefault("OMP_NUM_THREADS", "1")
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": about["device"],
        "torch": about["torch"],
        "cuda": about["cuda"],
        "python": platform.python_version(),
        "command": shlex.join(["python", "benchmarks/gpu_check.py", *sys.argv[1:]]),
        "smoke": args.smoke,
        "sections": {},
    }
    started = time.perf_counter()
    for name in dict.fromkeys(args.sections):  # in the order given
        print(f"[gpu_check] {name} ...", flush=True)
        left = args.deadline - (time.perf_counter() - started)
        result = run_section(name, args.smoke, env, left)
        report["sections"][name] = result
        print(
            f"[gpu_check] {name}: {result['status']} in {result['seconds_total']:.0f} s",
            flush=True,
        )
        if result["status"] != "ok":
            cases = [case["error"] for case in result.get("cases", []) if "error" in case]
            print(result.get("error") or "\n".join(result.get("tail", []) or cases), flush=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(report, indent=2) + "\n")  # after every section
    print()
    print(table(report))
    print(f"\nresults: {target}")


if __name__ == "__main__":
    main()
