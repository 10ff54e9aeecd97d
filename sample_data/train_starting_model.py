"""Train the small starting network shipped as ``starting_model.pt``.

    python sample_data/train_starting_model.py [--iterations 600]

It plays the part of a network trained elsewhere: a tiny U-Net trained on three synthetic
tomograms (other seeds than the sample's) whose labels have the errors real training data
has: membranes facing the beam, which the missing wedge erases, are not labelled, and
dense blobs carry membrane-like rings. Run on a CPU in about two minutes; deterministic.
``make_sample_data.py`` then segments the sample tomogram with it to make
``prediction.mrc``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from make_sample_data import synthesize

from patch_corrections.constants import NORMALISATION
from patch_corrections.network.checkpoints import save_checkpoint
from patch_corrections.network.unet import PRESETS, UNet
from patch_corrections.training.config import TrainConfig
from patch_corrections.training.data import TrainingPatch
from patch_corrections.training.loop import train

TRAINING_SEEDS = (1, 2, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "starting_model.pt"
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    patches = []
    for seed in TRAINING_SEEDS:
        volume = synthesize(seed)
        patches.append(
            TrainingPatch.from_arrays(
                f"synthetic_{seed}", volume.tomogram, volume.prediction.astype(np.uint8)
            )
        )
    torch.manual_seed(0)
    network = UNet(PRESETS["tiny"])
    config = TrainConfig(
        iterations=args.iterations,
        batch_size=2,
        crop_size=48,
        optimizer="adamw",
        lr=3e-3,
        warmup=20,
        val_every=100,
        save_every=10**9,
        seed=0,
    )
    scratch = args.out.parent / ".starting_model_run"
    state = train(network, patches, [], config, scratch, torch.device("cpu"))
    for leftover in scratch.glob("*"):
        leftover.unlink()
    scratch.rmdir()
    save_checkpoint(
        args.out,
        {
            "model_config": network.config.to_dict(),
            "model": network.state_dict(),
            "normalisation": NORMALISATION,
            "trained_by": "sample_data/train_starting_model.py",
            "history": state.history,
        },
    )
    losses = ", ".join(f"{row['train_loss']:.3f}" for row in state.history)
    print(f"wrote {args.out} after {args.iterations} iterations (train loss {losses})")


if __name__ == "__main__":
    main()
