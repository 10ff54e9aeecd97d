"""benchmarks/gpu_check.py in smoke mode: every section runs and reports numbers, so the
check is ready whenever a GPU node is lent (where it runs at full size)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _number(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value >= 0


def test_gpu_check_smoke_reports_every_section(tmp_path):
    target = tmp_path / "check.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--json", target],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,  # a bound, not a timing: the smoke run takes about a minute idle
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(target.read_text())
    sections = report["sections"]
    assert report["smoke"] is True and set(sections) == {
        "pytest",
        "train",
        "segment",
        "membrain",
        "window",
        "profile",
    }
    for name, section in sections.items():
        assert section["status"] == "ok", (name, section)
    pytest_run = sections["pytest"]
    assert pytest_run["failed"] == 0 and pytest_run["passed"] + pytest_run["skipped"] >= 8
    rows = {row["name"]: row for row in sections["train"]["rows"]}
    assert set(rows) == {"ours", "membrain-style"}
    for row in rows.values():
        for key in ("it_per_s", "voxels_per_s", "data_wait_share"):
            assert _number(row[key]) and row["it_per_s"] > 0, (key, row)
    cases = sections["segment"]["cases"]
    keys = ("tta", "pinned", "readers", "mapped_reads", "inline_writes", "norm_two_passes")
    settings = [tuple(case[key] for key in keys) for case in cases]
    assert settings == [
        (False, True, None, False, False, False),
        (False, True, None, False, False, False),
        (False, False, None, False, False, False),
        (False, True, 3, True, False, False),
        (False, True, None, False, True, False),
        (False, True, None, False, False, True),
        (False, True, None, False, False, False),
        (True, True, None, False, False, False),
    ]
    # The OME-Zarr case read the Zarr copy (zarr is in the test extra).
    assert cases[6]["zarr_copy_s"] >= 0 and "error" not in cases[6]
    # Where the threads spent the sampled case, the window loop's in the main thread
    threads = cases[1]["threads"]
    assert {"MainThread", "write-slabs"} <= set(threads) and all(
        0 < share <= 1 for places in threads.values() for _, share in places
    )
    for case in cases:
        for key in ("wall_s", "voxels_per_s", "peak_rss_gib", "windows"):
            assert _number(case[key]) and case[key] > 0, (key, case)
        # Where the high-water mark rose: after a slab came back, or an output closed.
        assert case["high_water_rises"] and all(
            where.startswith("slab at z ") or where.endswith("closed")
            for where, _ in case["high_water_rises"]
        )
        parts = case["rss_at_peak"]
        if parts:  # Linux: what the resident memory was made of, near its peak
            assert 0 < parts["anonymous"] + parts["libraries"] <= parts["rss_gib"] * 1.01
    windows = {row["variant"]: row for row in sections["window"]["rows"]}
    assert set(windows) == {"eager_b2", "eager_b1", "bf16_b2"}
    assert all(
        _number(row["ms_per_window"]) and row["ms_per_window"] > 0 for row in windows.values()
    )
    for part in ("train", "segment"):
        profiled = sections["profile"][part]
        assert _number(profiled["wall_s"]) and profiled["top"], (part, profiled)
        assert all(_number(op["seconds"]) for op in profiled["top"]), profiled["top"]
    membrain = sections["membrain"]
    # Measured where MemBrain-seg can run (a rehearsal with its venv), else said why not.
    membrain_rows = len(membrain["cases"]) if membrain["available"] else 1
    if membrain["available"]:
        assert all(case["membrain"]["seconds"] > 0 for case in membrain["cases"])
    table = done.stdout[done.stdout.index("| check |") :]
    # pytest, 2 training rows, 8 segment cases, 3 forward variants, 2 profile rows, membrain
    assert table.count("\n| ") == 16 + membrain_rows
