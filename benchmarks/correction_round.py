"""Does one round of corrections help on tomograms the network never saw?

    python benchmarks/correction_round.py [--patches 1 2 4] [--iterations 300]

Synthetic tomograms from ``sample_data/make_sample_data.py`` with seeds that neither the
starting network (seeds 1-3) nor the bundled sample used:

- seed 20 is the tomogram a user corrects: it is segmented with the starting network,
  N patches of 96³ are cut where it is wrong, the corrections an annotator would paint
  (Add / Remove / Ignore from the truth, as for the bundled sample) are merged, and the
  starting network is fine-tuned on them exactly as ``patch_corrections demo`` does;
- seeds 30 and 31 are held-out test tomograms: Dice against their truth (ignore excluded)
  before and after the round is what is reported.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "sample_data"))

import make_sample_data as sample  # noqa: E402

from patch_corrections import (  # noqa: E402
    ExtractSettings,
    extract_patches,
    merge_corrections,
    retrain,
    segment,
)
from patch_corrections.io.volumes import Geometry, read_volume, write_volume  # noqa: E402
from patch_corrections.metrics import add_counts, counts, summarise  # noqa: E402
from patch_corrections.workflows.demo import (  # noqa: E402
    DEMO_FINE_TUNING,
    DEMO_PATCH_SIZE,
    DEMO_SEGMENT,
)

CORRECTED_SEED = 20
TEST_SEEDS = (30, 31)
STARTING = ROOT / "sample_data" / "starting_model.pt"


def write_tomogram(folder: Path, seed: int):
    folder.mkdir(parents=True, exist_ok=True)
    volume = sample.synthesize(seed)
    write_volume(folder / "tomogram.mrc", volume.tomogram, Geometry((sample.VOXEL_SIZE,) * 3))
    return volume


def test_dice(checkpoint: Path, tests: dict, scratch: Path, label: str) -> dict:
    total: dict = {}
    for seed, (folder, volume) in tests.items():
        out = scratch / f"seg_{seed}_{label}"
        segment(folder / "tomogram.mrc", checkpoint, out, settings=DEMO_SEGMENT)
        predicted, _ = read_volume(out / "tomogram_segmented.mrc")
        total = add_counts(total, counts(predicted != 0, volume.truth.astype(np.uint8), 2))
    return summarise(total, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--iterations", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        tests = {seed: (scratch / f"test_{seed}", None) for seed in TEST_SEEDS}
        tests = {
            seed: (folder, write_tomogram(folder, seed)) for seed, (folder, _) in tests.items()
        }
        before = test_dice(STARTING, tests, scratch, "start")
        print(
            f"held-out tomograms (seeds {TEST_SEEDS}), starting network: Dice "
            f"{before['dice']:.4f}, tolerant Dice {before['tolerant_dice_2']:.4f}",
            flush=True,
        )
        corrected = scratch / "corrected"
        volume = write_tomogram(corrected, CORRECTED_SEED)
        segment(corrected / "tomogram.mrc", STARTING, corrected / "before", settings=DEMO_SEGMENT)
        prediction = read_volume(corrected / "before" / "tomogram_segmented.mrc")[0] != 0
        centres = sample.choose_centres(volume.vesicles, volume.blobs, prediction, volume.truth)
        sample.paint_corrections(
            corrected,
            [tuple(map(float, c)) for c in centres],
            prediction,
            volume.truth,
            volume.surfaces,
        )
        for n in args.patches:
            run = scratch / f"n{n}"
            started = time.perf_counter()
            extract_patches(
                corrected / "tomogram.mrc",
                corrected / "before" / "tomogram_segmented.mrc",
                run / "patches",
                points=[tuple(map(float, c)) for c in centres[:n]],
                settings=ExtractSettings(patch_size=DEMO_PATCH_SIZE),
            )
            merge_corrections(run / "patches", corrected / "corrections", run / "train")
            retrain(
                run / "train",
                run / "model",
                STARTING,
                settings=replace(
                    DEMO_FINE_TUNING, iterations=args.iterations, val_every=args.iterations
                ),
            )
            after = test_dice(run / "model" / "last.pt", tests, scratch, f"n{n}")
            print(
                f"N={n} corrected patch(es): held-out Dice {before['dice']:.4f} -> "
                f"{after['dice']:.4f}, tolerant Dice {before['tolerant_dice_2']:.4f} -> "
                f"{after['tolerant_dice_2']:.4f} ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
