"""Options that several commands share, each declared once.

A declaration gives an option's flags and help; a command writes it as
``Annotated[<type>, options.<name>(...)]`` with its default from its workflow's settings,
e.g. ``window: Annotated[int, options.window()] = SegmentSettings.window``. Commands that
group their help into panels (retrain, suggest) name the panel; where a command must say
what the value is for (what ``--overwrite`` replaces, what ``--out-dir`` receives), it gives
that part of the help and the declaration the rest.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import typer

from ..constants import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    MEMBRAIN_PIXEL_SIZE,
    PREVIEWS_SUBDIR,
    TRAIN_IMAGES_SUBDIR,
    TRAIN_LABELS_SUBDIR,
)
from ..io.volumes import MRC_SUFFIXES, NIFTI_SUFFIXES, NRRD_SUFFIXES, ZARR_SUFFIXES


class OutputFormat(str, Enum):
    """The formats patches and training pairs are written in (``--format``)."""

    nrrd = "nrrd"
    mrc = "mrc"
    nii_gz = "nii.gz"


# Files in and out.


def tomogram(panel: str | None = None) -> Any:
    """``--tomogram/-t``: one tomogram (extract_patches, suggest)."""
    suffixes = " ".join(MRC_SUFFIXES + NRRD_SUFFIXES + NIFTI_SUFFIXES + ZARR_SUFFIXES)
    return typer.Option("--tomogram", "-t", help=f"Tomogram ({suffixes}).", rich_help_panel=panel)


def scale_level(panel: str | None = None) -> Any:
    """``--scale-level``: which level of an OME-Zarr tomogram to read (segment, suggest,
    extract_patches)."""
    return typer.Option(
        "--scale-level",
        help="Level of an OME-Zarr (.zarr) tomogram to read, 0 the finest (default: the finest).",
        rich_help_panel=panel,
    )


def segmentation(text: str) -> Any:
    """``--segmentation/-s``: a full-size segmentation of the tomogram (extract_patches,
    paste_corrections); ``text``, the help, says what the command does with it."""
    return typer.Option("--segmentation", "-s", help=text)


def train_dir(source: str, panel: str | None = None) -> Any:
    """``--train-dir/-t``: a training folder to read (retrain, simulate_sparse); ``source``
    says where it comes from or what it holds."""
    folders = f"{TRAIN_IMAGES_SUBDIR}/, {TRAIN_LABELS_SUBDIR}/"
    return typer.Option(
        "--train-dir", "-t", help=f"Training folder ({folders}) {source}.", rich_help_panel=panel
    )


def checkpoint(use: str, panel: str | None = None) -> Any:
    """``--checkpoint``: network weights (segment, suggest, retrain); ``use`` says what the
    command does with them."""
    kinds = f"ours ({BEST_CHECKPOINT}, {LAST_CHECKPOINT}) or a MemBrain-seg .ckpt"
    return typer.Option("--checkpoint", help=f"{use}: {kinds}.", rich_help_panel=panel)


def out_dir(text: str, panel: str | None = None) -> Any:
    """``--out-dir/-o``: the folder a command writes into; ``text``, the help, says what
    goes there."""
    return typer.Option("--out-dir", "-o", help=text, rich_help_panel=panel)


def output_format(what: str, panel: str | None = None) -> Any:
    """``--format``: the file format of what the command writes, one of ``OutputFormat``."""
    return typer.Option("--format", help=f"File format of the {what}.", rich_help_panel=panel)


def preview(shows: str, panel: str | None = None) -> Any:
    """``--preview``: a PNG of slices through each patch (extract_patches,
    merge_corrections); ``shows`` lists the layers drawn."""
    return typer.Option(
        "--preview",
        rich_help_panel=panel,
        help=f"Also write {PREVIEWS_SUBDIR}/<patch>.png: xy, xz and yz slices through each "
        f"patch's centre, {shows} (needs matplotlib).",
    )


def overwrite(what: str, panel: str | None = None) -> Any:
    """``--overwrite``: replace earlier outputs instead of refusing; ``what`` names them."""
    return typer.Option("--overwrite", help=f"Replace {what}.", rich_help_panel=panel)


# Patches.


def patch_size(panel: str | None = None) -> Any:
    """``--patch-size``: the patches' edge (extract_patches, suggest)."""
    return typer.Option(
        "--patch-size", help="Edge length of the cubic patches, in voxels.", rich_help_panel=panel
    )


def border(panel: str | None = None, *, default: str | None = None, scored: bool = True) -> Any:
    """``--border``: the ignore band of label patches (extract_patches, suggest,
    merge_corrections); ``default`` says in words where the width comes from when the
    option is not given and its default is not a number; ``scored=False`` where the band
    is left out of a ranking (suggest)."""
    text = "Width in voxels of the ignore band along every face of a label patch: context only, "
    text += "no training signal" if scored else "not scored"
    text += f"; default: {default}." if default else "."
    return typer.Option("--border", help=text, rich_help_panel=panel)


def threshold(what: str) -> Any:
    """``--threshold`` for a segmentation that may be a scoremap (extract_patches,
    evaluate); ``what`` names the volume it binarises."""
    return typer.Option("--threshold", help=f"Binarise {what}: values above it are membrane.")


def seed(panel: str | None = None) -> Any:
    """``--seed`` (retrain, simulate_sparse)."""
    return typer.Option("--seed", help="Seed of every random choice.", rich_help_panel=panel)


# The network at work (segment, suggest; retrain for the device and the checkpoint).


def window(panel: str | None = None) -> Any:
    """``--window``: the sliding windows' edge."""
    return typer.Option(
        "--window", help="Edge of the sliding windows, in voxels.", rich_help_panel=panel
    )


def overlap(panel: str | None = None) -> Any:
    """``--overlap``: how far the sliding windows overlap."""
    return typer.Option(
        "--overlap", help="Fraction by which neighbouring windows overlap.", rich_help_panel=panel
    )


def window_batch_size(panel: str | None = None) -> Any:
    """``--batch-size`` of the sliding windows (retrain's counts training crops)."""
    return typer.Option("--batch-size", help="Windows per forward pass.", rich_help_panel=panel)


def probability_threshold(panel: str | None = None) -> Any:
    """``--threshold`` on the network's probabilities."""
    return typer.Option(
        "--threshold", help="Probability above which a voxel is membrane.", rich_help_panel=panel
    )


def rescale(panel: str | None = None) -> Any:
    """``--rescale``: resample windows to the network's pixel size."""
    return typer.Option(
        "--rescale",
        help="Resample windows to the pixel size the network was trained at "
        f"({MEMBRAIN_PIXEL_SIZE:g} Å for MemBrain-seg's); outputs stay on the tomogram's grid.",
        rich_help_panel=panel,
    )


def pixel_size(panel: str | None = None) -> Any:
    """``--pixel-size`` of the tomogram, for ``--rescale`` (retrain's is the training
    patches')."""
    return typer.Option(
        "--pixel-size",
        help="The tomogram's pixel size in Å for --rescale; default: its header's.",
        rich_help_panel=panel,
    )


def trust_checkpoint(panel: str | None = None) -> Any:
    """``--trust-checkpoint``: load a checkpoint that is more than weights."""
    return typer.Option(
        "--trust-checkpoint",
        help="Allow a checkpoint that holds pickled objects beyond weights.",
        rich_help_panel=panel,
    )


def device(panel: str | None = None) -> Any:
    """``--device`` the network runs on."""
    return typer.Option("--device", help="auto, cpu, cuda or cuda:N.", rich_help_panel=panel)


def compile_network(panel: str | None = None, *, training: bool = False) -> Any:
    """``--compile``: ``torch.compile`` the network, for inference or (``training``) for
    the training steps."""
    after = (
        "about twice the steps per second on a GPU (measured on an H200)"
        if training
        else "faster windows (for large tomograms, --tta, or many tomograms)"
    )
    return typer.Option(
        "--compile",
        help=f"torch.compile the network: tens of seconds of compiling first, then {after}.",
        rich_help_panel=panel,
    )


def threads(panel: str | None = None) -> Any:
    """``--threads``: PyTorch's CPU threads; a command passes the value to ``use_threads``."""
    return typer.Option(
        "--threads",
        help="CPU threads for PyTorch; default: $OMP_NUM_THREADS if set, else the cores this "
        "run may use, less those other programs keep busy as it starts.",
        rich_help_panel=panel,
    )


def use_threads(requested: int | None) -> None:
    """Set PyTorch's CPU threads for this command (see
    :func:`patch_corrections.network.threads.set_threads`), saying so on stderr when the
    machine's load leaves fewer threads than cores."""
    from ..network.threads import set_threads

    note = set_threads(requested)
    if note is not None:
        typer.echo(note, err=True)


# copick projects (the copick extra): where a tomogram path is accepted.

COPICK_PANEL = "copick project (instead of --tomogram)"


def copick_config() -> Any:
    """``--copick-config``: a copick project's configuration file."""
    return typer.Option(
        "--copick-config",
        help="A copick project's configuration (JSON): its tomograms instead of --tomogram "
        '(pip install "patch_corrections\\[copick]").',
        rich_help_panel=COPICK_PANEL,
    )


def copick_run(many: bool) -> Any:
    """``--run``: which runs of the project (segment: several, default all; suggest,
    extract_patches: one)."""
    text = (
        "A run of the project; repeat for several (default: every run)."
        if many
        else ("The run of the project (default: its only run).")
    )
    return typer.Option("--run", metavar="<run>", help=text, rich_help_panel=COPICK_PANEL)


def tomo_type() -> Any:
    """``--tomo-type``: which tomogram of a run."""
    return typer.Option(
        "--tomo-type",
        help="The tomogram type, e.g. wbp or denoised (default: the only one).",
        rich_help_panel=COPICK_PANEL,
    )


def voxel_spacing() -> Any:
    """``--voxel-spacing``: which voxel spacing of a run (Å)."""
    return typer.Option(
        "--voxel-spacing",
        help="The voxel spacing in Å, e.g. 10 (default: the only one).",
        rich_help_panel=COPICK_PANEL,
    )


def copick_name(role: str) -> Any:
    """``--copick-name``: the pickable object a copick segmentation is named after; ``role``
    says which segmentation."""
    return typer.Option(
        "--copick-name",
        help=f"Name of the copick segmentation {role}: a pickable object of the project.",
        rich_help_panel=COPICK_PANEL,
    )


def copick_user(role: str) -> Any:
    """``--copick-user``: the user of a copick segmentation."""
    return typer.Option(
        "--copick-user",
        help=f"User of the copick segmentation {role} (default: the configuration's "
        "user_id, else patch-corrections).",
        rich_help_panel=COPICK_PANEL,
    )


def copick_session(role: str) -> Any:
    """``--copick-session``: the session of a copick segmentation."""
    return typer.Option(
        "--copick-session",
        help=f"Session of the copick segmentation {role}.",
        rich_help_panel=COPICK_PANEL,
    )
