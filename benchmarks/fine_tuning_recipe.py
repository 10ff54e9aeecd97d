"""Which fine-tuning recipe should `retrain --checkpoint` use when none is given?

    python benchmarks/fine_tuning_recipe.py [--seeds 0 1] [--iterations 300]

The round of ``correction_round.py`` (4 patches of 96³ of the seed-20 tomogram cut where
the starting network is wrong, corrected from the truth), fine-tuned with each recipe and
several seeds, measured on the held-out tomograms (seeds 30, 31): Dice, precision and
recall, mean ± sd over the seeds, beside the starting network. Everything else is the
demo's setting (crop 48³, batch 2, no validation).

The tomograms come from the generator the starting network was trained on, so this
ranks recipes on a same-generator benchmark only.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from correction_round import (
    CORRECTED_SEED,
    STARTING,
    TEST_SEEDS,
    sample,
    test_dice,
    write_tomogram,
)

from patch_corrections import (
    ExtractSettings,
    extract_patches,
    merge_corrections,
    retrain,
    segment,
)
from patch_corrections.io.volumes import read_volume
from patch_corrections.workflows.demo import DEMO_FINE_TUNING, DEMO_PATCH_SIZE, DEMO_SEGMENT

RECIPES = {
    "sgd 1e-2 (nnU-Net's from scratch)": ("sgd", 1e-2),
    "sgd 1e-5 (membrain finetune)": ("sgd", 1e-5),
    "adamw 3e-4": ("adamw", 3e-4),
    "adamw 1e-3 (demo)": ("adamw", 1e-3),
}
PATCHES = 4
METRICS = ("dice", "precision", "recall")


def _corrected_round(scratch: Path) -> Path:
    """The corrected patches of the seed-20 tomogram, merged: the training folder."""
    corrected = scratch / "corrected"
    volume = write_tomogram(corrected, CORRECTED_SEED)
    segment(corrected / "tomogram.mrc", STARTING, corrected / "before", settings=DEMO_SEGMENT)
    prediction = read_volume(corrected / "before" / "tomogram_segmented.mrc")[0] != 0
    centres = sample.choose_centres(volume.vesicles, volume.blobs, prediction, volume.truth)
    points = [tuple(map(float, c)) for c in centres]
    sample.paint_corrections(corrected, points, prediction, volume.truth, volume.surfaces)
    extract_patches(
        corrected / "tomogram.mrc",
        corrected / "before" / "tomogram_segmented.mrc",
        scratch / "patches",
        points=points[:PATCHES],
        settings=ExtractSettings(patch_size=DEMO_PATCH_SIZE),
    )
    merge_corrections(scratch / "patches", corrected / "corrections", scratch / "train")
    return scratch / "train"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--iterations", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        tests = {}
        for seed in TEST_SEEDS:
            folder = scratch / f"test_{seed}"
            tests[seed] = (folder, write_tomogram(folder, seed))
        start = test_dice(STARTING, tests, scratch, "start")
        print("| recipe | Dice | precision | recall | seeds | s / run |")
        print("|---|---|---|---|---|---|")
        print(
            f"| starting network | {start['dice']:.3f} | {start['precision']:.3f} | "
            f"{start['recall']:.3f} | – | – |",
            flush=True,
        )
        train = _corrected_round(scratch)
        for name, (optimizer, lr) in RECIPES.items():
            rows, seconds = [], []
            for seed in args.seeds:
                began = time.perf_counter()
                model = scratch / f"model_{optimizer}_{lr:g}_{seed}"
                settings = replace(
                    DEMO_FINE_TUNING,
                    optimizer=optimizer,
                    lr=lr,
                    seed=seed,
                    iterations=args.iterations,
                    val_every=args.iterations,
                )
                retrain(train, model, STARTING, settings=settings)
                rows.append(test_dice(model / "last.pt", tests, scratch, model.name))
                seconds.append(time.perf_counter() - began)
            cells = []
            for key in METRICS:
                values = np.array([r[key] for r in rows])
                cells.append(f"{values.mean():.3f} ± {values.std(ddof=1):.3f}")
            print(
                f"| {name} | {' | '.join(cells)} | {len(rows)} | {np.mean(seconds):.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
