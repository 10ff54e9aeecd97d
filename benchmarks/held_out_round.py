"""Does one correction round make the network better on tomograms nobody corrected?

    python benchmarks/held_out_round.py [--arms worst suggest random control]
        [--seeds 0 1 2] [--draws 2] [--window 64] [--iterations 300]
        [--retrain context=4 --retrain membrane_centres=0] [--painted-in-band]
        [--label NAME] [--held-out-window 160 --reuse] [--no-spread]
        [--scratch /tmp/held_out] [--results /tmp/held_out.jsonl]
        [--generator physics_sim|physics_tomograms] [--box-statistics] [--mosaic 2]

Tomograms from ``benchmarks/physics_sim.py`` or, with ``--generator physics_tomograms``,
``benchmarks/physics_tomograms.py`` (two independent phantoms, each projected through a
CTF with noise and back-projected; neither is the generator the starting network was
trained on): seed 120 is the one a user
corrects (with ``--mosaic N``, N × N tomograms of seeds 120… side by side), seeds 130
and 131 are held out. The starting network (``sample_data/
starting_model.pt``) segments the corrected tomogram at ``--window``; each arm chooses 4
boxes of 96³ there, an annotator paints every error inside them from the truth (Add,
Remove), the patches are extracted and merged as a user would, the starting network is
fine-tuned on them as ``demo`` does (AdamW 1e-3, 300 steps of 2 × 48³, and whatever
else ``retrain`` does from a checkpoint by default, such as its teacher; ``--retrain``
replaces any ``RetrainSettings`` field, e.g. ``--retrain teacher=0`` for plain
fine-tuning) with each ``--seeds`` seed, and the fine-tuned
network segments the held-out tomograms at ``--window``. Arms:

- ``worst``: the boxes holding most wrong voxels (what MemBrain-seg's guide advises);
- ``suggest``: ``patch_corrections suggest``'s 4 boxes (its network pass at ``--window``;
  ``--no-spread``: ``suggest --no-spread``'s);
- ``random``: random boxes anywhere in the tomogram (``--draws`` draws);
- ``control``: the ``worst`` boxes trained on the network's own labels, uncorrected;
- ``worst2``: a second round after ``worst``: its network segments the corrected
  tomogram again, 4 more boxes are cut where that segmentation is most wrong (away from
  the first), corrected, merged into the first round's training folder, and the first
  round's network is fine-tuned on all 8.

``--held-out-window`` segments the held-out tomograms at another window than the one the
boxes were chosen and cut at; with ``--reuse`` the networks of earlier runs are scored
again without training.

``retrain`` from a checkpoint trains toward the tomogram's class prior by default (its
``--class-prior tomogram``); each row records the shift δ its run applied.
``--retrain class_prior=patches`` trains on the boxes' own share instead.
``--box-statistics`` trains nothing: it prints, per arm, the starting network's precision
and recall inside the boxes' trained interiors (see :func:`box_statistics`).

Reported per arm, pooled over the held-out tomograms, mean ± sd over seeds (and draws):
Dice, precision, recall, tolerant Dice (2 voxels), the share of false membrane lying more
than 8 voxels from any true membrane, and the membrane share of the trained interiors
against the tomogram's. Every run is appended to ``--results`` as a JSON line.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import statistics
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from suggest_round import _grid_sums, _pick  # noqa: E402  (boxes of 96³, band 16)

from patch_corrections import (  # noqa: E402
    ExtractSettings,
    MergeSettings,
    RetrainSettings,
    SuggestSettings,
    extract_patches,
    merge_corrections,
    retrain,
    segment,
    suggest,
)
from patch_corrections.io.volumes import Geometry, read_volume, write_volume  # noqa: E402
from patch_corrections.labels.patches import centre_index  # noqa: E402
from patch_corrections.metrics import add_counts, counts, summarise  # noqa: E402
from patch_corrections.workflows.demo import DEMO_FINE_TUNING, DEMO_SEGMENT  # noqa: E402

STARTING = ROOT / "sample_data" / "starting_model.pt"
CORRECTED, HELD_OUT = 120, (130, 131)
PATCH, BORDER, BOXES = 96, 16, 4
ARMS = ("worst", "suggest", "random", "control", "worst2")
FAR = 8  # voxels: false membrane farther than this from any true membrane is "far"


def corrected_tomogram(generator, tiles: int, scratch: Path) -> Path:
    """The folder of the tomogram a user corrects (``tomogram.mrc``, ``truth.mrc``): seed
    ``CORRECTED``, or with ``tiles`` > 1 a mosaic of ``tiles`` × ``tiles`` tomograms of
    seeds ``CORRECTED``, ``CORRECTED + 1``, … side by side along y and x. One tomogram
    of 256 × 256 × 96 is little more than its 4 boxes (they cover 56 % of it), so any
    choice of boxes sees most of it; in a 2 × 2 mosaic they cover 14 %."""
    if tiles == 1:
        return generator.write(CORRECTED, scratch / f"tomo_{CORRECTED}")[0].parent
    out = scratch / f"tomo_{CORRECTED}_mosaic{tiles}"
    paths = out / "tomogram.mrc", out / "truth.mrc"
    if not all(p.exists() for p in paths):
        tiles_read = [
            [read_volume(p)[0] for p in generator.write(seed, scratch / f"tomo_{seed}")]
            for seed in range(CORRECTED, CORRECTED + tiles**2)
        ]
        out.mkdir(parents=True, exist_ok=True)
        for k, path in enumerate(paths):
            rows = [
                np.concatenate([tiles_read[r * tiles + c][k] for c in range(tiles)], axis=2)
                for r in range(tiles)
            ]
            write_volume(path, np.concatenate(rows, axis=1), Geometry((10.0,) * 3))
    return out


def _segment(tomogram: Path, checkpoint: Path, out: Path, window: int) -> np.ndarray:
    if not (out / "tomogram_segmented.mrc").exists():
        segment(tomogram, checkpoint, out, settings=replace(DEMO_SEGMENT, window=window))
    return read_volume(out / "tomogram_segmented.mrc")[0] != 0


def centres_of(
    arm: str, draw: int, corrected: Path, prediction, truth, window: int, spread: bool = True
) -> list:
    """The box centres ``(x, y, z)`` an arm corrects."""
    if arm in ("worst", "control"):
        return _pick(*_grid_sums(prediction != truth), BOXES)
    if arm == "random":
        values, axes = _grid_sums(truth)
        return _pick(np.random.default_rng([draw, 99]).random(values.shape), axes, BOXES)
    maps = corrected / f"suggest_w{window}"  # the network's pass, once per window
    network = replace(DEMO_SEGMENT, window=window)
    settings = SuggestSettings(count=BOXES, patch_size=PATCH, previews=False, network=network)
    if not (maps / "tomogram_probabilities.mrc").exists():
        suggest(corrected / "tomogram.mrc", maps, STARTING, settings=settings)
    chosen = suggest(
        corrected / "tomogram.mrc",
        maps / ("spread" if spread else "no_spread"),
        probabilities=maps / "tomogram_probabilities.mrc",
        uncertainty=maps / "tomogram_uncertainty.mrc",
        settings=replace(settings, spread=spread, overwrite=True),
    )
    return [s.centre_xyz for s in chosen.suggestions]


def paint(run: Path, prediction: np.ndarray, truth: np.ndarray) -> float:
    """Add and Remove masks of every error inside each extracted patch, from the truth;
    the membrane share of the patches' interiors once corrected."""
    manifest = json.loads((run / "patches" / "manifest.json").read_text())
    membrane = total = 0
    for entry in manifest["patches"]:
        offset = entry["offset_xyz"][::-1]
        window = tuple(slice(max(o, 0), o + PATCH) for o in offset)
        local = tuple(slice(s.start - o, s.stop - o) for s, o in zip(window, offset))
        masks = {"Add1": truth & ~prediction, "Remove1": prediction & ~truth}
        folder = run / "corrections" / entry["name"]
        folder.mkdir(parents=True, exist_ok=True)
        for name, mask in masks.items():
            patch = np.zeros((PATCH,) * 3, np.uint8)
            patch[local] = mask[window]
            geometry = Geometry((10.0,) * 3, tuple(entry["origin_xyz"][::-1]))
            write_volume(folder / f"{name}.nrrd", patch, geometry)
        inner = tuple(slice(s.start + BORDER, s.stop - BORDER) for s in window)
        membrane, total = membrane + truth[inner].sum(), total + truth[inner].size
    return float(membrane / max(total, 1))


def held_out(checkpoint: Path, tests: dict, out: Path, window: int, suffix: str = "") -> dict:
    """Metrics pooled over the held-out tomograms, and the share of far false membrane."""
    total: dict = {}
    far = false = 0
    for seed, (tomogram, truth, distance) in tests.items():
        predicted = _segment(tomogram, checkpoint, out / f"held_out_{seed}{suffix}", window)
        total = add_counts(total, counts(predicted, truth.astype(np.uint8), 2))
        wrong = predicted & ~truth
        far, false = far + int((wrong & (distance > FAR)).sum()), false + int(wrong.sum())
    return {**summarise(total, 2), "far_false": far / max(false, 1)}


def _held_out(checkpoint: Path, tests: dict, out: Path, args) -> dict:
    """:func:`held_out` at ``--held-out-window`` (its segmentations kept apart from those
    at ``--window``)."""
    window = args.held_out_window or args.window
    suffix = "" if window == args.window else f"_w{window}"
    return held_out(checkpoint, tests, out, window, suffix)


def _overrides(pairs: list[str]) -> dict:
    known = {f.name for f in fields(RetrainSettings)}
    values = {}
    for pair in pairs:
        key, _, text = pair.partition("=")
        if key not in known:
            raise SystemExit(f"--retrain {pair}: {key} is not a RetrainSettings field")
        for kind in (int, float):
            try:
                values[key] = kind(text)
                break
            except ValueError:
                continue
        else:
            values[key] = {"true": True, "false": False, "none": None}.get(text.lower(), text)
    return values


def _settings(seed: int, args) -> RetrainSettings:
    settings = replace(
        DEMO_FINE_TUNING, iterations=args.iterations, val_every=args.iterations, seed=seed
    )
    return replace(settings, **_overrides(args.retrain), overwrite=True)


def _merge(run: Path, control: bool, args) -> None:
    (run / "corrections").mkdir(exist_ok=True)
    merge = MergeSettings(include_uncorrected=control, painted_in_band=args.painted_in_band)
    merge_corrections(run / "patches", run / "corrections", run / "train", settings=merge)


def second_round(seed, args, corrected, truth, tests) -> dict:
    """``worst2``: the round after ``worst`` (run first if it has not been)."""
    first = args.scratch / args.label / f"w{args.window}" / f"worst_d0_s{seed}"
    if not (first / "model" / "last.pt").exists():
        prediction = _segment(
            corrected / "tomogram.mrc", STARTING, corrected / f"start_w{args.window}", args.window
        )
        one_run("worst", 0, seed, args, corrected, prediction, truth, tests)
    run = first.parent / f"worst2_d0_s{seed}"
    model = first / "model" / "last.pt"
    again = _segment(corrected / "tomogram.mrc", model, run / "segmented", args.window)
    errors = again != truth
    for entry in json.loads((first / "patches" / "manifest.json").read_text())["patches"]:
        errors[tuple(slice(max(o, 0), o + PATCH) for o in entry["offset_xyz"][::-1])] = False
    centres = _pick(*_grid_sums(errors), BOXES)
    if not (run / "train").exists():
        extract_patches(
            corrected / "tomogram.mrc",
            run / "segmented" / "tomogram_segmented.mrc",
            run / "patches",
            points=[tuple(map(float, c)) for c in centres],
            settings=ExtractSettings(patch_size=PATCH, border=BORDER, token="round2"),
        )
        share = paint(run, again, truth)
        shutil.copytree(first / "train", run / "train")
        _merge(run, False, args)
        (run / "share.txt").write_text(str(share))
    started = time.perf_counter()
    retrain(run / "train", run / "model", model, settings=_settings(seed, args))
    seconds = time.perf_counter() - started
    metrics = _held_out(run / "model" / "last.pt", tests, run, args)
    return _row("worst2", 0, seed, args, centres, run, seconds, metrics)


def _row(arm, draw, seed, args, centres, run, seconds, metrics) -> dict:
    return {
        "label": args.label,
        "window": args.window,
        "held_out_window": args.held_out_window or args.window,
        "arm": arm,
        "draw": draw,
        "seed": seed,
        "retrain": args.retrain,
        "painted_in_band": args.painted_in_band,
        "spread": args.spread,
        "centres": centres,
        "interior_membrane": float((run / "share.txt").read_text()),
        "retrain_seconds": seconds,
        "prior_shift": _trained_config(run / "model" / "last.pt").get("prior_shift", 0.0),
        **metrics,
    }


def _trained_config(checkpoint: Path) -> dict:
    """The training config a run saved in its checkpoint."""
    import torch

    return torch.load(checkpoint, map_location="cpu", weights_only=False)["train_config"]


def one_run(arm, draw, seed, args, corrected, prediction, truth, tests) -> dict:
    run = args.scratch / args.label / f"w{args.window}" / f"{arm}_d{draw}_s{seed}"
    centres = centres_of(arm, draw, corrected, prediction, truth, args.window, args.spread)
    if not (run / "train").exists():
        extract_patches(
            corrected / "tomogram.mrc",
            corrected / f"start_w{args.window}" / "tomogram_segmented.mrc",
            run / "patches",
            points=[tuple(map(float, c)) for c in centres],
            settings=ExtractSettings(patch_size=PATCH, border=BORDER),
        )
        share = paint(run, prediction, truth) if arm != "control" else 0.0
        _merge(run, arm == "control", args)
        (run / "share.txt").write_text(str(share))
    started = time.perf_counter()
    if not (run / "model" / "last.pt").exists() or not args.reuse:
        retrain(run / "train", run / "model", STARTING, settings=_settings(seed, args))
    seconds = time.perf_counter() - started
    metrics = _held_out(run / "model" / "last.pt", tests, run, args)
    return _row(arm, draw, seed, args, centres, run, seconds, metrics)


COLUMNS = ("dice", "precision", "recall", "tolerant_dice_2", "far_false")


def box_statistics(centres: list, prediction: np.ndarray, truth: np.ndarray) -> dict:
    """The starting network's precision and recall inside the boxes' trained interiors
    (96³ less the band), their true and predicted membrane shares, and the tomogram's
    share estimated from what the boxes show: the predicted share of the whole tomogram x
    precision / recall on the boxes."""
    inner = []
    for centre in centres:  # (x, y, z), rounded as extract_patches rounds it
        starts = [index - PATCH // 2 + BORDER for index in centre_index(tuple(centre))]
        inner.append(tuple(slice(max(a, 0), a + PATCH - 2 * BORDER) for a in starts))
    figures = calls(
        np.concatenate([prediction[box].ravel() for box in inner]),
        np.concatenate([truth[box].ravel() for box in inner]),
    )
    implied = prediction.mean() * figures["precision"] / max(figures["recall"], 1e-9)
    return {**figures, "estimated_tomogram_share": float(implied)}


def calls(prediction: np.ndarray, truth: np.ndarray) -> dict:
    """Precision and recall of the binary ``prediction``, and both membrane shares."""
    hits = int((truth & prediction).sum())
    return {
        "precision": hits / max(int(prediction.sum()), 1),
        "recall": hits / max(int(truth.sum()), 1),
        "true_share": float(truth.mean()),
        "predicted_share": float(prediction.mean()),
    }


def table(rows: list[dict], start: dict) -> str:
    lines = [
        "| arm | runs | " + " | ".join(COLUMNS) + " | trained interior membrane |",
        "|---|---|" + "---|" * (len(COLUMNS) + 1),
        "| starting network | – | " + " | ".join(f"{start[c]:.3f}" for c in COLUMNS) + " | – |",
    ]
    for arm in dict.fromkeys(r["arm"] for r in rows):
        mine = [r for r in rows if r["arm"] == arm]
        cells = []
        for c in (*COLUMNS, "interior_membrane"):
            values = [r[c] for r in mine]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.3f} ± {sd:.3f}")
        lines.append(f"| {arm} | {len(mine)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--draws", type=int, default=2)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument(
        "--held-out-window",
        type=int,
        help="segment the held-out tomograms at this window (default --window); with "
        "--reuse, networks trained before are scored again without training",
    )
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--retrain", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--label", default="baseline")
    parser.add_argument(
        "--generator", choices=("physics_sim", "physics_tomograms"), default="physics_sim"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="keep a run's trained network if there is one"
    )
    parser.add_argument(
        "--painted-in-band", action="store_true", help="merge with --painted-in-band"
    )
    parser.add_argument(
        "--no-spread",
        dest="spread",
        action="store_false",
        help="the suggest arm with suggest --no-spread (the most uncertain boxes on membrane)",
    )
    parser.add_argument(
        "--box-statistics",
        action="store_true",
        help="only print the starting network's precision and recall inside each arm's boxes",
    )
    parser.add_argument(
        "--mosaic",
        type=int,
        default=1,
        help="correct a mosaic of N x N tomograms (seeds 120…) instead of one; give a --label "
        "of its own",
    )
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/held_out"))
    parser.add_argument("--results", type=Path, default=Path("/tmp/held_out.jsonl"))
    args = parser.parse_args()
    _overrides(args.retrain)  # refuse a wrong field before any work
    started = time.perf_counter()
    generator = importlib.import_module(args.generator)
    if args.generator != "physics_sim":  # its own tomograms, segmentations and runs
        args.scratch = args.scratch / args.generator
    corrected = corrected_tomogram(generator, args.mosaic, args.scratch)
    truth = read_volume(corrected / "truth.mrc")[0] != 0
    prediction = _segment(
        corrected / "tomogram.mrc", STARTING, corrected / f"start_w{args.window}", args.window
    )
    if args.box_statistics:
        print(
            "whole tomogram: "
            + ", ".join(f"{k} {v:.3f}" for k, v in calls(prediction, truth).items())
        )
        for arm in args.arms:
            for draw in range(args.draws if arm == "random" else 1):
                found = centres_of(arm, draw, corrected, prediction, truth, args.window)
                figures = box_statistics(found, prediction, truth)
                print(
                    f"{arm} draw {draw}: " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items())
                )
        return
    tests = {}
    for seed in HELD_OUT:
        tomogram, truth_path = generator.write(seed, args.scratch / f"tomo_{seed}")
        held = read_volume(truth_path)[0] != 0
        tests[seed] = (tomogram, held, ndimage.distance_transform_edt(~held))
    start = _held_out(STARTING, tests, args.scratch / "start", args)
    print(f"starting network on held-out tomograms {HELD_OUT}: {start}", flush=True)
    rows = []
    for arm in args.arms:
        for draw in range(args.draws if arm == "random" else 1):
            for seed in args.seeds:
                if arm == "worst2":
                    row = second_round(seed, args, corrected, truth, tests)
                else:
                    row = one_run(arm, draw, seed, args, corrected, prediction, truth, tests)
                rows.append(row)
                with args.results.open("a") as stream:
                    stream.write(json.dumps({**row, "start": start}) + "\n")
                print(
                    json.dumps({k: row[k] for k in ("arm", "draw", "seed", *COLUMNS)}), flush=True
                )
    print(f"tomogram membrane share {truth.mean():.3f}; {time.perf_counter() - started:.0f} s")
    print(table(rows, start))


if __name__ == "__main__":
    main()
