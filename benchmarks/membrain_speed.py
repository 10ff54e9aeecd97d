"""``membrain segment`` and our ``segment``, timed side by side on one machine.

    python benchmarks/membrain_speed.py --tomogram T.mrc [--membrain-python PY]
                                        [--crop 160 320 320] [--scratch DIR]

Both tools segment the same tomogram with the same full-size MemBrain-seg checkpoint
(MemBrain-seg's own ``PreprocessedSemanticSegmentationUnet``, default DynUNet, seeded random
weights, built by MemBrain-seg's python as ``membrain_parity.py`` builds it), each as a
whole command in its own process (start-up, reading, writing included), windows of 160,
each with its own defaults otherwise:

* ``membrain segment --store-probabilities --sliding-window-size 160
  --(no-)test-time-augmentation`` (its scoremap is float32 logits);
* ``python -m patch_corrections segment --window 160 [--tta]`` (float16 probabilities).

Cases: with 8-flip TTA on the tomogram's centre ``--crop`` (z, y, x; default 160 x 320 x
320), then without TTA on all of it. TTA runs on a crop because on a 928 x 928 x 464
tomogram MemBrain-seg's TTA is eight whole passes, minutes on one GPU. A command cut by
its time limit is recorded as a lower bound ("over N s"), so a ratio still follows.

MemBrain-seg runs from its own folder of packages, never beside ours (it pins typer < 0.26):
on a node without a package index, its wheels travel in ``.whl/membrain/`` (see
``fetch_wheels.sh``) and :func:`membrain_site` installs them with ``pip --target`` for
``--membrain-python`` (default: this python). What it
imports but never calls on its segment path and is too large to carry is replaced there by
an empty stand-in module, in this benchmark only: SimpleITK (a 50 MB wheel; MemBrain-seg
imports it at module level for NIfTI files). Without carried wheels, ``--membrain-python``
must already have MemBrain-seg (e.g. a venv's python).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WHEELS = ROOT / ".whl" / "membrain"
WINDOW = 160
STAND_INS = {
    "SimpleITK": (
        '"""Stand-in for the benchmark (membrain_speed.py): MemBrain-seg imports SimpleITK '
        'for NIfTI files, never on its segment path."""\n'
        "def __getattr__(name):\n"
        "    raise ImportError(f'SimpleITK.{name}: a stand-in, not the real package')\n"
    )
}
"""Modules MemBrain-seg imports but never calls on its segment path, as stand-in sources."""


def membrain_site(site: Path, python: str) -> Path | None:
    """Install the carried MemBrain-seg wheels (``.whl/membrain/``) into ``site`` with
    ``pip --target``, and a stand-in for each module of ``STAND_INS`` that ``python``
    cannot import; ``site``, or ``None`` when no wheels were carried."""
    wheels = sorted(WHEELS.glob("*.whl"))
    if not wheels:
        return None
    if not (site / "membrain_seg").exists():
        command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
        command += ["--no-compile", "--target", str(site), *map(str, wheels)]
        subprocess.run(command, check=True, capture_output=True, text=True)
    for module, source in STAND_INS.items():
        probe = [python, "-c", f"import {module}"]
        if subprocess.run(probe, capture_output=True).returncode == 0:
            continue
        (site / module).mkdir(parents=True, exist_ok=True)
        (site / module / "__init__.py").write_text(source)
    return site


def membrain_command(python: str, site: Path | None) -> tuple[list[str], dict]:
    """The argv prefix that runs MemBrain-seg's command line, and its environment: its own
    folder of packages first (``site``), never ours."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if site is not None:
        env["PYTHONPATH"] = str(site)
    code = "import sys; from membrain_seg.segmentation.cli import cli; sys.argv[0] = 'membrain'; "
    code += "cli()"
    return [python, "-c", code], env


def make_checkpoint(python: str, env: dict, path: Path, tiny: bool = False) -> dict:
    """The full-size MemBrain-seg checkpoint (``tiny``: the test fixture's few filters),
    written by MemBrain-seg's python; its versions."""
    from membrain_parity import FIXTURE_SCRIPT, MAKE_CHECKPOINT

    if not path.exists():
        script = MAKE_CHECKPOINT
        if tiny:
            script = script.replace("channels=None", "channels=make_membrain_fixture.CHANNELS")
            fixture = "import make_membrain_fixture\nfrom make_membrain"
            script = script.replace("from make_membrain", fixture)
        argv = [python, "-c", script, str(path), str(FIXTURE_SCRIPT)]
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError("checkpoint: " + (done.stdout + done.stderr)[-2000:])
        return json.loads(done.stdout.strip().splitlines()[-1])
    return {}


def centre_crop(source: Path, target: Path, shape: tuple[int, int, int]) -> Path:
    """The centre ``shape`` (z, y, x) of ``source`` with its voxel size, written once."""
    import mrcfile

    if target.exists():
        return target
    with mrcfile.mmap(source, permissive=True) as mrc:
        start = [(n - c) // 2 for n, c in zip(mrc.data.shape, shape)]
        box = tuple(slice(a, a + c) for a, c in zip(start, shape))
        crop = np.ascontiguousarray(mrc.data[box])
        voxel_size = mrc.voxel_size.copy()
    with mrcfile.new(target, overwrite=True) as mrc:
        mrc.set_data(crop)
        mrc.voxel_size = voxel_size
    return target


def timed(argv: list[str], env: dict, log: Path, timeout: float) -> dict:
    """Run ``argv``; its wall seconds, or a lower bound when cut at ``timeout``."""
    started = time.perf_counter()
    with log.open("w") as out:
        try:
            code = subprocess.run(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            return {"seconds": time.perf_counter() - started, "cut": True}
    seconds = time.perf_counter() - started
    if code:
        tail = log.read_text().strip().splitlines()[-12:]
        raise RuntimeError(f"{argv[0]} … failed ({code}):\n" + "\n".join(tail))
    return {"seconds": seconds, "cut": False}


def measure(
    tomogram: Path,
    scratch: Path,
    *,
    python: str | None = None,
    crop: tuple[int, int, int] = (160, 320, 320),
    deadline: float | None = None,
    device: str = "auto",
    window: int = WINDOW,
    tiny: bool = False,
    partial=None,
) -> dict:
    """Both tools on ``tomogram`` without TTA and on its centre ``crop`` with TTA; a dict
    of the cases (seconds of each tool, whether it was cut, the ratio) and the versions.
    ``deadline`` (``time.perf_counter()``) bounds every command; ``partial`` is given the
    result so far after each case. ``tiny`` (a rehearsal on a CPU) uses the test fixture's
    small network."""
    scratch.mkdir(parents=True, exist_ok=True)
    python = python or sys.executable
    site = membrain_site(scratch / "membrain_site", python)
    prefix, env = membrain_command(python, site)
    checkpoint = scratch / f"membrain_{'tiny' if tiny else 'full'}.ckpt"
    result = {"versions": make_checkpoint(prefix[0], env, checkpoint, tiny), "cases": []}
    stand_ins = (site or scratch).glob("*")
    result["stand_ins"] = sorted(p.name for p in stand_ins if p.name in STAND_INS)
    ours_env = dict(os.environ)
    ours_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    # The short case first: a slow peer still leaves time for it.
    cases = (("crop, 8-flip TTA", None, True), ("whole, no TTA", tomogram, False))
    for name, source, tta in cases:
        source = source or centre_crop(tomogram, scratch / "crop.mrc", crop)
        out = scratch / f"out_{'tta' if tta else 'plain'}"
        theirs = [*prefix, "segment", "--tomogram-path", str(source), "--ckpt-path"]
        theirs += [str(checkpoint), "--out-folder", str(out / "membrain")]
        theirs += ["--store-probabilities", "--sliding-window-size", str(window)]
        theirs.append("--test-time-augmentation" if tta else "--no-test-time-augmentation")
        ours = [sys.executable, "-m", "patch_corrections", "segment", "--tomogram", str(source)]
        ours += ["--checkpoint", str(checkpoint), "--out-dir", str(out / "ours")]
        ours += ["--window", str(window), "--device", device, *(["--tta"] if tta else [])]
        import mrcfile

        with mrcfile.mmap(source, permissive=True) as mrc:
            shape = mrc.data.shape
        case = {"case": name, "tta": tta, "shape_xyz": list(shape[::-1])}
        result["cases"].append(case)
        for tool, argv, environment in (("ours", ours, ours_env), ("membrain", theirs, env)):
            left = 3600.0 if deadline is None else deadline - time.perf_counter()
            if left < 5:
                case[tool] = {"error": "skipped: out of time"}
                continue
            try:
                case[tool] = timed(argv, environment, scratch / f"{tool}_{tta}.log", left)
            except Exception as exc:
                case[tool] = {"error": f"{type(exc).__name__}: {exc}"[-600:]}
            if partial is not None:
                partial(result)
        theirs_s = case["membrain"].get("seconds")
        ours_s = case["ours"].get("seconds")
        if theirs_s and ours_s and not case["ours"]["cut"]:
            case["ratio"] = theirs_s / ours_s  # a lower bound when theirs was cut
    return result


def case_line(case: dict) -> str:
    def shown(run: dict) -> str:
        if "error" in run:
            return run["error"].splitlines()[-1][:160]
        return f"{'over ' if run['cut'] else ''}{run['seconds']:.1f} s"

    x, y, z = case["shape_xyz"]
    ratio = case.get("ratio")
    bound = "≥ " if case["membrain"].get("cut") else ""
    return (
        f"{case['case']}, {x} x {y} x {z}: membrain segment {shown(case['membrain'])}, ours "
        f"{shown(case['ours'])}" + (f", ratio {bound}{ratio:.2f}×" if ratio else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tomogram", type=Path, required=True)
    parser.add_argument("--membrain-python", default=None)
    parser.add_argument("--crop", type=int, nargs=3, default=[160, 320, 320])
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/membrain_speed"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--window", type=int, default=WINDOW)
    parser.add_argument("--tiny", action="store_true", help="the test fixture's small network")
    args = parser.parse_args()
    result = measure(
        args.tomogram,
        args.scratch,
        python=args.membrain_python,
        crop=tuple(args.crop),
        device=args.device,
        window=args.window,
        tiny=args.tiny,
    )
    for case in result["cases"]:
        print(case_line(case))
    print(json.dumps(result["versions"]))


if __name__ == "__main__":
    main()
