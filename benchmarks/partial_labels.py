"""Learning from partial labels: sparse annotation, missing membrane, region-wise loss.

    python benchmarks/partial_labels.py [--experiments 1 2 3] [--seeds 0 1 2]
    python benchmarks/partial_labels.py --report results.jsonl   # tables only

Synthetic tomograms from ``sample_data/make_sample_data.py`` with known truth. Seeds 40
and 41 are the training tomograms, each cut into four 64 x 112 x 112 (z, y, x) patches
whose dense labels are the truth; seeds 30 and 31 are held-out test tomograms, segmented
whole by the trained network and scored by Dice (and tolerant Dice, 2 voxels) against
their truth. Every run trains the network from scratch with the same settings; a run's
seed fixes the starting weights, the crops and the choice of slices, boxes or blocks.

1. Equal annotation budget: ``k`` % of the z-slices of every patch annotated (evenly
   spaced, ``simulate_sparse``'s rule) against the same number of voxels spent on whole
   patches (``k`` % of the patches, fully annotated), the rest ignore.
2. Missing annotations: in every patch, random 16³ blocks that hold a fraction ``α`` of
   its membrane voxels are left unannotated, as regions an annotator never looked at.
   Their membrane is labelled background (baseline), or the blocks are ignore, or they
   are ignore and relabeled (SMILE-style, ``--relabel-rounds 2 --relabel-max 0.8``, and
   with ``--relabel-background``). The relabeling run trains ``N`` iterations on the sure
   labels, then two rounds of ``N/2``; the "ignore, longer" arm runs the same stages
   adopting nothing, so the comparison is at equal iterations. For relabeling arms the
   row also records, per round, how many voxels were adopted and how many of them the
   truth agrees with.
3. Losses at equal iterations on the dense labels: BCE + Dice, RRW, RRW + Dice.

Each run appends a JSON line to ``--out`` as it finishes; the tables (mean ± sd over
seeds) are printed at the end and can be printed again from the file with ``--report``.
The defaults are the small CPU settings (tiny network, 48³ crops); for a GPU use e.g.
``--preset full --crop-size 64 --iterations 2000 --device cuda``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "sample_data"))

import make_sample_data as sample  # noqa: E402

from patch_corrections.constants import BACKGROUND, IGNORE, MEMBRANE  # noqa: E402
from patch_corrections.inference.intensity import normalise  # noqa: E402
from patch_corrections.labels.relabel import relabel_candidates  # noqa: E402
from patch_corrections.labels.sparse import slices_mask, spaced_slices, sparsify  # noqa: E402
from patch_corrections.metrics import add_counts, counts, summarise  # noqa: E402
from patch_corrections.network.unet import PRESETS, UNet  # noqa: E402
from patch_corrections.training.config import TrainConfig  # noqa: E402
from patch_corrections.training.data import TrainingPatch  # noqa: E402
from patch_corrections.training.loop import train  # noqa: E402
from patch_corrections.training.relabel_rounds import train_with_relabeling  # noqa: E402
from patch_corrections.training.validation import predict_patch  # noqa: E402

TRAIN_SEEDS = (40, 41)
TEST_SEEDS = (30, 31)
PATCH_YX = 112
BLOCK = 16
BUDGETS = (0.125, 0.25)
ALPHAS = (0.3, 0.5, 0.7)
LOSSES = ("bce+dice", "rrw", "rrw+dice")
RELABEL_ROUNDS, RELABEL_MAX = 2, 0.8


def training_patches() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, image, dense labels)`` of the training patches."""
    patches = []
    for seed in TRAIN_SEEDS:
        volume = sample.synthesize(seed)
        for y in (0, PATCH_YX):
            for x in (0, PATCH_YX):
                window = (slice(None), slice(y, y + PATCH_YX), slice(x, x + PATCH_YX))
                patches.append(
                    (
                        f"s{seed}_y{y}_x{x}",
                        volume.tomogram[window],
                        volume.truth[window].astype(np.uint8),
                    )
                )
    return patches


def missing_blocks(labels: np.ndarray, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """Mask of random ``BLOCK``³ blocks holding at least ``alpha`` of the membrane voxels."""
    membrane = labels == MEMBRANE
    total = int(membrane.sum())
    grid = [range(0, n, BLOCK) for n in labels.shape]
    blocks = [(z, y, x) for z in grid[0] for y in grid[1] for x in grid[2]]
    mask = np.zeros(labels.shape, bool)
    covered = 0
    for i in rng.permutation(len(blocks)):
        if covered >= alpha * total:
            break
        window = tuple(slice(c, c + BLOCK) for c in blocks[i])
        inside = int(membrane[window].sum())
        if inside:
            mask[window] = True
            covered += inside
    return mask


def arms(experiment: int, dense, rng_seed: int, losses=LOSSES) -> dict[str, dict]:
    """The label sets of one experiment for one seed: arm name -> options."""
    rng = np.random.default_rng([rng_seed, experiment])
    out: dict[str, dict] = {}
    if experiment == 1:
        for k in BUDGETS:
            whole = max(1, round(k * len(dense)))
            chosen = set(rng.permutation(len(dense))[:whole].tolist())
            out[f"{k:.1%} as whole patches ({whole})"] = {
                "labels": [
                    lab if i in chosen else np.full_like(lab, IGNORE)
                    for i, (_, _, lab) in enumerate(dense)
                ],
                "budget": k,
            }
            sparse = []
            for _, _, lab in dense:
                kept = spaced_slices(lab, 0, k, rng)
                sparse.append(sparsify(lab, slices_mask(lab.shape, 0, kept)))
            out[f"{k:.1%} as z-slices of every patch"] = {"labels": sparse, "budget": k}
    elif experiment == 2:
        for alpha in ALPHAS:
            blocks = [missing_blocks(lab, alpha, rng) for _, _, lab in dense]
            background = [
                np.where(b & (lab == MEMBRANE), np.uint8(BACKGROUND), lab)
                for b, (_, _, lab) in zip(blocks, dense)
            ]
            ignored = [np.where(b, np.uint8(IGNORE), lab) for b, (_, _, lab) in zip(blocks, dense)]
            out[f"alpha {alpha}: background"] = {"labels": background, "alpha": alpha}
            out[f"alpha {alpha}: ignore"] = {"labels": ignored, "alpha": alpha}
            out[f"alpha {alpha}: ignore, longer"] = {
                "labels": ignored,
                "alpha": alpha,
                "relabel": 0.0,
            }
            out[f"alpha {alpha}: ignore + relabel"] = {
                "labels": ignored,
                "alpha": alpha,
                "relabel": RELABEL_MAX,
            }
            out[f"alpha {alpha}: ignore + relabel, background too"] = {
                "labels": ignored,
                "alpha": alpha,
                "relabel": RELABEL_MAX,
                "relabel_background": True,
            }
    else:
        for loss in losses:
            out[loss] = {"labels": [lab for _, _, lab in dense], "loss": loss}
    return out


def test_scores(network: UNet, tests, device: torch.device) -> dict:
    total: dict = {}
    for image, truth in tests:
        probability = predict_patch(network, image, device)
        total = add_counts(total, counts(probability > 0.5, truth, 2))
    return summarise(total, 2)


def run_arm(name, options, dense, tests, seed, args, scratch: Path) -> dict:
    torch.manual_seed(seed)
    network = UNet(PRESETS[args.preset])
    pairs = [
        (TrainingPatch.from_arrays(n, image, labels), truth)
        for (n, image, truth), labels in zip(dense, options["labels"])
    ]
    pairs = [(p, truth) for p, truth in pairs if len(p.annotated)]
    patches = [p for p, _ in pairs]
    config = TrainConfig(
        iterations=args.iterations,
        batch_size=args.batch_size,
        crop_size=args.crop_size,
        optimizer="adamw",
        lr=3e-3,
        warmup=args.iterations // 20,
        seed=seed,
        val_every=args.iterations,
        save_every=10**9,
        loss=options.get("loss", "bce+dice"),
    )
    device = torch.device(args.device)
    started = time.perf_counter()
    iterations = config.iterations
    if "relabel" in options:
        rounds_iterations = args.iterations // 2
        adopted_counts, adopted_precision = [], []

        def record(t, adopted_patches):
            counts, right = [0, 0], [0, 0]
            for adopted, (_, truth) in zip(adopted_patches, pairs):
                for i, value in enumerate((MEMBRANE, BACKGROUND)):
                    chosen = adopted == value
                    counts[i] += int(chosen.sum())
                    right[i] += int((chosen & (truth == value)).sum())
            adopted_counts.append(counts)  # [membrane, background]
            adopted_precision.append(
                [round(r / c, 4) if c else None for r, c in zip(right, counts)]
            )

        train_with_relabeling(
            network,
            patches,
            [],
            config,
            scratch,
            device,
            rounds=RELABEL_ROUNDS,
            max_share=options["relabel"],
            candidates=[relabel_candidates(p.labels, border=0) for p in patches],
            round_iterations=rounds_iterations,
            background=options.get("relabel_background", False),
            on_round=record,
        )
        iterations += RELABEL_ROUNDS * rounds_iterations
    else:
        train(network, patches, [], config, scratch, device)
    seconds = time.perf_counter() - started
    scores = test_scores(network, tests, device)
    labelled = sum(int((lab != IGNORE).sum()) for lab in options["labels"])
    membrane = sum(int((lab == MEMBRANE).sum()) for lab in options["labels"])
    row = {
        "arm": name,
        "seed": seed,
        "iterations": iterations,
        "labelled_voxels": labelled,
        "membrane_voxels": membrane,
        "dice": scores["dice"],
        "tolerant_dice": scores["tolerant_dice_2"],
        "precision": scores["precision"],
        "recall": scores["recall"],
        "train_seconds": round(seconds, 1),
        **{k: v for k, v in options.items() if k != "labels"},
        "settings": {k: getattr(args, k) for k in ("preset", "crop_size", "batch_size")},
    }
    if "relabel" in options:
        # per round, [membrane, background]: voxels adopted, and the share truly that class
        row["adopted_voxels_per_round"] = adopted_counts
        row["adopted_precision_per_round"] = adopted_precision
    return row


def _sd(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def _mean_sd(group: list[dict], key: str) -> str:
    values = np.array([r[key] for r in group if r.get(key) is not None], dtype=float)
    return f"{values.mean():.3f} ± {_sd(values):.3f}" if len(values) else "—"


def report(rows: list[dict]) -> None:
    """Mean ± sd over seeds of the test scores per experiment and arm, in first-seen order;
    for relabeling arms, also the voxels adopted per round and the share of them right."""
    for experiment in sorted({r["experiment"] for r in rows}):
        chosen = [r for r in rows if r["experiment"] == experiment]
        print(f"\nExperiment {experiment}")
        print(
            "| arm | labelled voxels | iterations | test Dice | test tolerant Dice "
            "| test precision | test recall | seeds |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for arm in dict.fromkeys(r["arm"] for r in chosen):
            group = [r for r in chosen if r["arm"] == arm]
            labelled = np.mean([r["labelled_voxels"] for r in group])
            scores = " | ".join(
                _mean_sd(group, k) for k in ("dice", "tolerant_dice", "precision", "recall")
            )
            print(
                f"| {arm} | {labelled:,.0f} | {group[0]['iterations']} | {scores} | {len(group)} |"
            )
        relabeled = [r for r in chosen if any(r.get("adopted_voxels_per_round") or [])]
        if relabeled:
            print("\n| arm | round | adopted membrane (right) | adopted background (right) |")
            print("|---|---|---|---|")
        for arm in dict.fromkeys(r["arm"] for r in relabeled):
            group = [r for r in relabeled if r["arm"] == arm]
            for t in range(len(group[0]["adopted_voxels_per_round"])):
                cells = []
                for i in (0, 1):
                    counts = [_pair(r["adopted_voxels_per_round"][t])[i] for r in group]
                    right = [_pair(r["adopted_precision_per_round"][t])[i] for r in group]
                    right = [v for v in right if v is not None]
                    cells.append(
                        f"{np.mean(counts):,.0f} ({np.mean(right):.1%})" if right else "—"
                    )
                print(f"| {arm} | {t + 1} | {cells[0]} | {cells[1]} |")


def _pair(value) -> list:
    """``[membrane, background]`` of a per-round entry (older rows hold membrane only)."""
    return value if isinstance(value, list) else [value, None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), help="Experiment 3's.")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--crop-size", type=int, default=48)
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("partial_labels.jsonl"))
    parser.add_argument("--arms", nargs="+", help="Run only arms whose name holds one of these.")
    parser.add_argument(
        "--report", type=Path, nargs="+", help="Only print the tables of these files."
    )
    args = parser.parse_args()
    if args.report:
        report(
            [json.loads(line) for f in args.report for line in f.read_text().splitlines() if line]
        )
        return
    if args.device == "cpu":
        torch.set_num_threads(2)
    dense = training_patches()
    tests = []
    for seed in TEST_SEEDS:
        volume = sample.synthesize(seed)
        tests.append((normalise(volume.tomogram), volume.truth.astype(np.uint8)))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for experiment in args.experiments:
            for seed in args.seeds:
                for name, options in arms(experiment, dense, seed, args.losses).items():
                    if args.arms and not any(a in name for a in args.arms):
                        continue
                    row = run_arm(name, options, dense, tests, seed, args, Path(tmp) / "run")
                    row["experiment"] = experiment
                    rows.append(row)
                    with args.out.open("a") as out:
                        out.write(json.dumps(row) + "\n")
                    print(
                        f"[{experiment}] seed {seed} {name}: Dice {row['dice']:.4f} "
                        f"({row['train_seconds']:.0f} s)",
                        flush=True,
                    )
    report(rows)


if __name__ == "__main__":
    main()
