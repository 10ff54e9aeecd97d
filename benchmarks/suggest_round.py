"""Do suggested centres teach more than a person's unguided pick?

    python benchmarks/suggest_round.py [--seeds 20 21 22] [--patches 2 4] [--iterations 300]
        [--arms suggest random oracle near] [--json results.json]

The machinery of ``correction_round.py`` (synthetic tomograms the starting network never
saw, corrections painted from the truth, fine-tuning as ``demo`` does, Dice on the
held-out test tomograms of seeds 30 and 31), with the N corrected patches (96³, border
16) of each corrected tomogram (one per seed) chosen by:

- ``suggest``: ``suggest`` with the starting network (8-flip TTA), its top N;
- ``random``: uniformly at random among the boxes whose scored part (inside the ignore
  band) the starting network's segmentation marks at least 2 % membrane, a person's
  unguided pick (the same overlap rule as ``suggest``);
- ``oracle``: the boxes whose scored part holds most voxels the painted corrections change
  (Add + Remove), greedily with the same overlap rule;
- ``near`` (the first rule tried, ``NEAR_WEIGHT`` = 1): as ``suggest``, with the
  near-threshold term added to the disagreement in the score.

Each (seed, arm, N) is one correction round from the starting network, fine-tuned with the
same training seed for every arm; reported: held-out Dice and its gain over the starting
network, mean ± sd over the seeds.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from correction_round import (
    STARTING,
    TEST_SEEDS,
    sample,
    test_dice,
    write_tomogram,
)

from patch_corrections import (
    ExtractSettings,
    SegmentSettings,
    extract_patches,
    merge_corrections,
    retrain,
    segment,
)
from patch_corrections.inference.box_choice import choose
from patch_corrections.inference.box_scores import (
    MAX_OVERLAP,
    MEMBRANE_SATURATION,
    BoxScores,
    CellSums,
    axis_candidates,
    box_scores,
    box_sums,
    cell_size,
    voxel_terms,
)
from patch_corrections.io.volumes import read_volume
from patch_corrections.workflows.demo import DEMO_FINE_TUNING, DEMO_PATCH_SIZE, DEMO_SEGMENT
from patch_corrections.workflows.suggestion import SuggestSettings, suggest

BORDER = sample.BORDER
ARMS = ("suggest", "random", "oracle", "near")


def _grid_sums(volume: np.ndarray) -> tuple[np.ndarray, tuple]:
    """Sums of ``volume`` over the scored part of every candidate box, and the boxes."""
    cell = cell_size(DEMO_PATCH_SIZE)
    sums = CellSums(volume.shape, cell)
    term = volume.astype(np.float32)
    sums.add(0, (term, term, term))
    axes = tuple(axis_candidates(n, DEMO_PATCH_SIZE, cell, False, BORDER) for n in volume.shape)
    return box_sums(sums.sums[0], axes), axes


def _pick(values: np.ndarray, axes: tuple, count: int) -> list[tuple[int, int, int]]:
    """Centres ``(x, y, z)`` of the best boxes by ``values``, with suggest's overlap rule."""
    scores = BoxScores(axes, values, values, values, values)
    chosen = choose(scores, DEMO_PATCH_SIZE, count, MAX_OVERLAP)
    return [tuple(reversed(scores.centre(index))) for index in chosen]  # type: ignore[misc]


def choose_centres(arm, seed, folder, prediction, volume, count) -> list[tuple[int, int, int]]:
    """The centres ``(x, y, z)`` one arm corrects on the tomogram in ``folder``."""
    if arm in ("suggest", "near"):
        maps = folder / "suggest"
        if not (maps / "tomogram_suggestions.csv").exists():
            suggest(
                folder / "tomogram.mrc",
                maps,
                STARTING,
                settings=SuggestSettings(
                    count=count,
                    patch_size=DEMO_PATCH_SIZE,
                    border=BORDER,
                    previews=False,
                    network=SegmentSettings(window=64, batch_size=4, device="cpu"),
                ),
            )
        if arm == "suggest":
            rows = (maps / "tomogram_suggestions.csv").read_text().splitlines()[1:]
            return [tuple(int(v) for v in row.split(",")[:3]) for row in rows]  # type: ignore[misc]
        p = read_volume(maps / "tomogram_probabilities.mrc")[0].astype(np.float32)
        v = read_volume(maps / "tomogram_uncertainty.mrc")[0].astype(np.float32)
        sums = CellSums(p.shape, cell_size(DEMO_PATCH_SIZE))
        sums.add(0, voxel_terms(p, v))
        scores = box_scores(sums, DEMO_PATCH_SIZE, BORDER, near_weight=1.0)
        return _pick(scores.score, scores.axes, count)
    if arm == "random":
        membrane, axes = _grid_sums(prediction)
        share = membrane / float(DEMO_PATCH_SIZE - 2 * BORDER) ** 3
        rng = np.random.default_rng(seed)
        values = np.where(share >= MEMBRANE_SATURATION, rng.random(share.shape) + 1e-6, 0.0)
        return _pick(values, axes, count)
    if arm == "oracle":
        truth = volume.truth
        unsure = truth & ~prediction & (volume.surfaces.normal_z > sample.WEDGE_UNSURE)
        wrong = (truth & ~prediction & ~unsure) | (prediction & ~truth)
        errors, axes = _grid_sums(wrong)
        return _pick(errors, axes, count)
    raise ValueError(arm)


def error_share(centres, prediction, volume) -> float:
    """Share of all the wrong voxels (as painted) that the centres' scored parts hold."""
    truth = volume.truth
    unsure = truth & ~prediction & (volume.surfaces.normal_z > sample.WEDGE_UNSURE)
    wrong = (truth & ~prediction & ~unsure) | (prediction & ~truth)
    covered = np.zeros(wrong.shape, bool)
    low, high = BORDER - DEMO_PATCH_SIZE // 2, DEMO_PATCH_SIZE // 2 - BORDER
    for x, y, z in centres:
        covered[tuple(slice(max(0, c + low), max(0, c + high)) for c in (z, y, x))] = True
    return float((wrong & covered).sum() / max(1, wrong.sum()))


def one_round(run: Path, corrected: Path, centres, prediction, volume, iterations, seed, tests):
    """Paint, extract, merge, fine-tune and measure one round; the held-out metrics."""
    points = [tuple(map(float, c)) for c in centres]
    sample.paint_corrections(run, points, prediction, volume.truth, volume.surfaces)
    extract_patches(
        corrected / "tomogram.mrc",
        corrected / "before" / "tomogram_segmented.mrc",
        run / "patches",
        points=points,
        settings=ExtractSettings(patch_size=DEMO_PATCH_SIZE),
    )
    merge_corrections(run / "patches", run / "corrections", run / "train")
    retrain(
        run / "train",
        run / "model",
        STARTING,
        settings=replace(DEMO_FINE_TUNING, iterations=iterations, val_every=iterations, seed=seed),
    )
    return test_dice(run / "model" / "last.pt", tests, run, run.name)


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[20, 21, 22])
    parser.add_argument("--patches", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS[:3]))
    parser.add_argument("--json", type=Path, help="Also write every result here.")
    args = parser.parse_args()
    started = time.perf_counter()
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        tests = {seed: scratch / f"test_{seed}" for seed in TEST_SEEDS}
        tests = {seed: (folder, write_tomogram(folder, seed)) for seed, folder in tests.items()}
        before = test_dice(STARTING, tests, scratch, "start")
        print(
            f"held-out tomograms (seeds {TEST_SEEDS}), starting network: Dice "
            f"{before['dice']:.4f}",
            flush=True,
        )
        for seed in args.seeds:
            corrected = scratch / f"corrected_{seed}"
            volume = write_tomogram(corrected, seed)
            segment(
                corrected / "tomogram.mrc", STARTING, corrected / "before", settings=DEMO_SEGMENT
            )
            prediction = read_volume(corrected / "before" / "tomogram_segmented.mrc")[0] != 0
            for arm in args.arms:
                clock = time.perf_counter()
                centres = choose_centres(
                    arm, seed, corrected, prediction, volume, max(args.patches)
                )
                chose_s = time.perf_counter() - clock
                for n in args.patches:
                    clock = time.perf_counter()
                    run = scratch / f"s{seed}_{arm}_n{n}"
                    after = one_round(
                        run,
                        corrected,
                        centres[:n],
                        prediction,
                        volume,
                        args.iterations,
                        seed,
                        tests,
                    )
                    row = {
                        "seed": seed,
                        "arm": arm,
                        "n": n,
                        "centres_xyz": [list(map(int, c)) for c in centres[:n]],
                        "error_share": error_share(centres[:n], prediction, volume),
                        "dice": after["dice"],
                        "gain": after["dice"] - before["dice"],
                        "tolerant_dice_2": after["tolerant_dice_2"],
                        "choose_s": chose_s,
                        "round_s": time.perf_counter() - clock,
                    }
                    results.append(row)
                    print(
                        f"seed {seed} {arm:>12} N={n}: centres {row['centres_xyz']} hold "
                        f"{row['error_share']:.1%} of the errors; held-out Dice "
                        f"{before['dice']:.4f} -> {after['dice']:.4f} "
                        f"({row['round_s']:.0f} s)",
                        flush=True,
                    )
    report(results, before["dice"], args, time.perf_counter() - started)
    if args.json:
        args.json.write_text(json.dumps({"before": before, "results": results}, indent=1))


def report(results: list[dict], before: float, args, seconds: float) -> None:
    """The table for RESULTS.md, and whether the target is met."""
    print(
        f"\n{date.today()}, {platform.machine()} CPU, {seconds / 60:.0f} min; seeds "
        f"{args.seeds}, {args.iterations} fine-tuning steps; starting Dice {before:.4f}\n"
    )
    print("| N | arm | held-out Dice (mean ± sd) | gain (mean ± sd) | errors covered |")
    print("|---|---|---|---|---|")
    summary: dict = {}
    for n in args.patches:
        for arm in args.arms:
            rows = [r for r in results if r["arm"] == arm and r["n"] == n]
            dice, gain = _mean_sd([r["dice"] for r in rows]), _mean_sd([r["gain"] for r in rows])
            covered = statistics.fmean(r["error_share"] for r in rows)
            summary[(arm, n)] = gain
            print(
                f"| {n} | {arm} | {dice[0]:.4f} ± {dice[1]:.4f} | {gain[0]:+.4f} ± "
                f"{gain[1]:.4f} | {covered:.1%} |"
            )
    if not {"random", "oracle"} <= set(args.arms):
        return
    for rule in [a for a in args.arms if a in ("suggest", "near")]:
        for n in args.patches:
            (mine, sd_mine), (rand, sd_rand) = summary[(rule, n)], summary[("random", n)]
            oracle = summary[("oracle", n)][0]
            paired = [
                a["gain"] - b["gain"]
                for a in results
                for b in results
                if a["arm"] == rule
                and b["arm"] == "random"
                and a["n"] == b["n"] == n
                and a["seed"] == b["seed"]
            ]
            margin = max(sd_mine, sd_rand)
            share = mine / oracle if oracle > 0 else float("nan")
            beats = mine - rand > margin
            print(
                f"{rule} N={n}: beats random by {mine - rand:+.4f} (paired "
                f"{_mean_sd(paired)[0]:+.4f} ± {_mean_sd(paired)[1]:.4f}; one sd = "
                f"{margin:.4f}: {'yes' if beats else 'no'}), reaches {share:.0%} of the "
                f"oracle's gain ({'yes' if share >= 0.8 else 'no'}): target "
                f"{'met' if beats and share >= 0.8 else 'not met'}"
            )


if __name__ == "__main__":
    main()
