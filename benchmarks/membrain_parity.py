"""Our ``segment`` against ``membrain segment`` on the sample tomogram, full-size network.

    python benchmarks/membrain_parity.py [--membrain-python /tmp/membrain/bin/python]
                                         [--out parity.json] [--no-tta]
                                         [--tta-on crop|full] [--keep DIR]

What it measures, on ``sample_data/tomogram.mrc`` (224 x 224 x 64 x, y, z; int8, 10 Å in
its header, so neither tool rescales):

* a FULL-SIZE MemBrain-seg checkpoint: MemBrain-seg's own
  ``PreprocessedSemanticSegmentationUnet`` with its default DynUNet (filters 32 ... 1024),
  seeded random weights, InstanceNorm weights/biases perturbed (N(1, 0.3) / N(0, 0.3)),
  conv biases N(0, 0.1), output 1x1 conv x3 with bias 0, as
  ``tests/fixtures/make_membrain_fixture.py`` makes its tiny one, but with no
  ``hyper_parameters`` (as real MemBrain-seg checkpoints). It is built and saved by the
  MemBrain-seg venv's python (and checked to load back through MemBrain-seg's
  ``load_from_checkpoint``) into a scratch folder; it is never committed;
* per case, each tool run once as a subprocess, on the CPU, with windows of 160:
  ``membrain segment --store-probabilities --sliding-window-size 160
  --(no-)test-time-augmentation`` (its CLI, in the MemBrain-seg venv) and
  ``python -m patch_corrections segment --window 160 [--tta] --device cpu`` (this
  project's environment);
* per case: the wall time of each whole command (start-up and imports included), Dice of
  the two binary segmentations, max and mean |Δp| between the probabilities (MemBrain-seg's
  ``<stem>_scores.mrc`` holds logits: sigmoid applied; our ``<stem>_probabilities.mrc``
  holds float16 probabilities),
  the share of voxels whose labels differ (and which tool calls them membrane) and whether
  all of those are near-ties (|MemBrain-seg logit| < 2e-3: our threshold is applied to the
  float16 probability, whose step just above 0.5 is 2^-11, so a logit in (0, ~1e-3) is
  stored as exactly 0.5 and labelled background).

Cases: without TTA on the whole tomogram, and with TTA (8 whole-volume flips) on the
centre 160 x 160 x 64 (x, y, z) crop by default: on the whole tomogram a TTA run is 32
windows of the full network per tool (about 28 s each on a 2-core CPU, so about 15 min per
tool); ``--tta-on full`` measures it there anyway, ``--no-tta`` skips it. The crop is
written with the tomogram's dtype and voxel size, so both tools normalise it with its own
mean and deviation.

The MemBrain-seg venv (CPU torch)::

    python3 -m venv /tmp/membrain && /tmp/membrain/bin/pip install torch==2.13.0 \\
        "membrain-seg==0.0.10" "typer<0.26"

Prints a Markdown table and writes every figure (and both tools' versions) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mrcfile
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TOMOGRAM = ROOT / "sample_data" / "tomogram.mrc"
SEED = 20261127  # make_membrain_fixture.SEED, which seeds the checkpoint's weights
WINDOW = 160
CROP_XY = 160
"""Edge (x and y) of the centre crop for the TTA case; z is kept whole."""
NEAR_TIE = 2e-3
"""|logit| below which a label may differ (float16 probabilities are thresholded)."""
CKPT_NAME = "membrain_full.ckpt"

FIXTURE_SCRIPT = ROOT / "tests" / "fixtures"
MAKE_CHECKPOINT = """
import json, sys
from importlib.metadata import version
sys.path.insert(0, sys.argv[2])
import monai, numpy, pytorch_lightning as pl, torch
from make_membrain_fixture import make_checkpoint

state = make_checkpoint(__import__("pathlib").Path(sys.argv[1]), channels=None)
parameters = sum(
    v.numel() for k, v in state.items() if k.startswith("_model.") and ".skip_layers" not in k
)
print(json.dumps({
    "membrain-seg": version("membrain-seg"), "torch": torch.__version__,
    "monai": monai.__version__, "pytorch-lightning": pl.__version__,
    "numpy": numpy.__version__, "parameters": parameters,
}))
"""


def make_checkpoint(membrain_python: Path, path: Path) -> dict:
    """Write the full-size checkpoint with MemBrain-seg's python; its versions as a dict."""
    done = subprocess.run(
        [str(membrain_python), "-c", MAKE_CHECKPOINT, str(path), str(FIXTURE_SCRIPT)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def centre_crop(source: Path, target: Path, edge: int) -> tuple[int, int, int]:
    """Write the centre ``edge`` x ``edge`` (x, y) of ``source``, all z, with its dtype and
    voxel size; the crop's (z, y, x) shape."""
    with mrcfile.open(source, permissive=True) as mrc:
        data = mrc.data
        voxel_size = mrc.voxel_size.copy()
        _, ny, nx = data.shape
        y0, x0 = (ny - edge) // 2, (nx - edge) // 2
        crop = np.ascontiguousarray(data[:, y0 : y0 + edge, x0 : x0 + edge])
    with mrcfile.new(target, overwrite=True) as mrc:
        mrc.set_data(crop)
        mrc.voxel_size = voxel_size
    return crop.shape


def timed(argv: list[str], log: Path) -> tuple[float, float]:
    """Run ``argv`` (output to ``log``); its wall seconds and the machine's 1-minute load
    average at its end (above the command's own threads: something else was running).
    Raises if it fails."""
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - start
    if code:
        raise SystemExit(f"{argv[0]} failed ({code}); see {log}:\n{log.read_text()[-3000:]}")
    return seconds, os.getloadavg()[0]


def run_case(work: Path, tomogram: Path, ckpt: Path, membrain: Path, tta: bool, name: str) -> dict:
    """Segment ``tomogram`` with both tools and compare their outputs."""
    theirs_dir, ours_dir = work / f"{name}_membrain", work / f"{name}_ours"
    theirs_argv = [
        str(membrain),
        "segment",
        "--tomogram-path",
        str(tomogram),
        "--ckpt-path",
        str(ckpt),
        "--out-folder",
        str(theirs_dir),
        "--store-probabilities",
        "--sliding-window-size",
        str(WINDOW),
        "--test-time-augmentation" if tta else "--no-test-time-augmentation",
    ]
    ours_argv = [
        sys.executable,
        "-m",
        "patch_corrections",
        "segment",
        "--tomogram",
        str(tomogram),
        "--checkpoint",
        str(ckpt),
        "--out-dir",
        str(ours_dir),
        "--window",
        str(WINDOW),
        *(["--tta"] if tta else []),
        "--device",
        "cpu",
    ]
    print(f"[{name}] membrain segment ...", file=sys.stderr, flush=True)
    theirs_s, theirs_load = timed(theirs_argv, work / f"{name}_membrain.log")
    print(f"[{name}] {theirs_s:.1f} s; patch_corrections segment ...", file=sys.stderr, flush=True)
    ours_s, ours_load = timed(ours_argv, work / f"{name}_ours.log")
    print(f"[{name}] {ours_s:.1f} s", file=sys.stderr, flush=True)

    stem = tomogram.stem
    token = ckpt.name.split("-val_loss")[0]
    logits = mrcfile.read(theirs_dir / f"{stem}_scores.mrc").astype(np.float64)
    theirs_seg = mrcfile.read(theirs_dir / f"{stem}_{token}_segmented.mrc") != 0
    ours_p = mrcfile.read(ours_dir / f"{stem}_probabilities.mrc").astype(np.float64)
    ours_seg = mrcfile.read(ours_dir / f"{stem}_segmented.mrc") != 0
    theirs_p = 1 / (1 + np.exp(-logits))
    delta = np.abs(ours_p - theirs_p)
    differ = ours_seg != theirs_seg
    both = int(theirs_seg.sum() + ours_seg.sum())
    dice = 2 * int((theirs_seg & ours_seg).sum()) / both if both else 1.0
    worst = float(np.abs(logits[differ]).max()) if differ.any() else 0.0
    return {
        "case": name,
        "tta": tta,
        "shape_xyz": list(logits.shape[::-1]),
        "membrain_s": theirs_s,
        "ours_s": ours_s,
        "load_after_membrain": theirs_load,
        "load_after_ours": ours_load,
        "dice": dice,
        "max_abs_dp": float(delta.max()),
        "mean_abs_dp": float(delta.mean()),
        "differ_voxels": int(differ.sum()),
        "differ_share": float(differ.mean()),
        "differ_membrane_only_membrain": int((theirs_seg & ~ours_seg).sum()),
        "differ_membrane_only_ours": int((ours_seg & ~theirs_seg).sum()),
        "differ_max_abs_logit": worst,
        "differ_all_near_ties": bool(worst < NEAR_TIE),
        "membrane_share_membrain": float(theirs_seg.mean()),
        "membrane_share_ours": float(ours_seg.mean()),
        "logit_range_membrain": [float(logits.min()), float(logits.max())],
        "membrain_argv": theirs_argv,
        "ours_argv": ours_argv,
    }


def table(rows: list[dict]) -> str:
    """The cases as a Markdown table."""
    lines = [
        "| case | x × y × z | TTA | membrain segment | our segment | Dice | max \\|Δp\\| "
        "| mean \\|Δp\\| | labels differ | all near-ties (\\|logit\\| < 2e-3) "
        "| membrane share (theirs / ours) | 1-min load at end (theirs / ours) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        shape = " × ".join(map(str, r["shape_xyz"]))
        differ = f"{r['differ_voxels']:,} ({r['differ_share']:.2e})"
        if r["differ_voxels"]:
            differ += (
                f"; membrane only in theirs / ours: {r['differ_membrane_only_membrain']:,} / "
                f"{r['differ_membrane_only_ours']:,}"
            )
        ties = "yes" if r["differ_all_near_ties"] else "no"
        ties += f" (max \\|logit\\| {r['differ_max_abs_logit']:.1e})" if r["differ_voxels"] else ""
        lines.append(
            f"| {r['case']} | {shape} | {'8 flips' if r['tta'] else 'no'} "
            f"| {r['membrain_s']:.1f} s | {r['ours_s']:.1f} s | {r['dice']:.6f} "
            f"| {r['max_abs_dp']:.2e} | {r['mean_abs_dp']:.2e} | {differ} | {ties} "
            f"| {r['membrane_share_membrain']:.4f} / {r['membrane_share_ours']:.4f} "
            f"| {r['load_after_membrain']:.2f} / {r['load_after_ours']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--membrain-python", type=Path, default=Path("/tmp/membrain/bin/python"))
    parser.add_argument("--out", type=Path, default=Path("membrain_parity.json"))
    parser.add_argument("--no-tta", action="store_true", help="skip the TTA case")
    parser.add_argument(
        "--tta-on",
        choices=["crop", "full"],
        default="crop",
        help="TTA case on the centre 160 x 160 x 64 crop (default) or the whole tomogram",
    )
    parser.add_argument("--keep", type=Path, help="work here and keep every output")
    args = parser.parse_args()
    membrain = args.membrain_python.parent / "membrain"
    if not membrain.exists():
        raise SystemExit(f"{membrain}: no membrain CLI next to --membrain-python")

    scratch = None if args.keep else tempfile.TemporaryDirectory()
    work = args.keep or Path(scratch.name)  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)
    try:
        ckpt = work / CKPT_NAME
        print("building the full-size checkpoint ...", file=sys.stderr, flush=True)
        versions = make_checkpoint(args.membrain_python, ckpt)
        full = work / "tomogram.mrc"
        shutil.copyfile(TOMOGRAM, full)
        with mrcfile.open(full, permissive=True, header_only=True) as mrc:
            voxel_size = float(mrc.voxel_size.x)
            mode = int(mrc.header.mode)
        cases = [("full_noTTA", full, False)]
        if not args.no_tta:
            if args.tta_on == "crop":
                crop = work / "tomogram_crop.mrc"
                centre_crop(full, crop, CROP_XY)
                cases.append(("crop_TTA", crop, True))
            else:
                cases.append(("full_TTA", full, True))
        rows = [run_case(work, t, ckpt, membrain, tta, name) for name, t, tta in cases]
    finally:
        if scratch is not None:
            scratch.cleanup()

    import torch

    import patch_corrections

    result = {
        "tomogram": str(TOMOGRAM.relative_to(ROOT)),
        "voxel_size_A": voxel_size,
        "mrc_mode": mode,
        "window": WINDOW,
        "seed": SEED,
        "membrain_env": versions,
        "ours_env": {
            "patch_corrections": getattr(patch_corrections, "__version__", "?"),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "cases": rows,
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
