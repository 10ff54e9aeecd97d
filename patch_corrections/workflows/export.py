"""Export: one of our checkpoints as a MemBrain-seg Lightning checkpoint, which ``membrain
segment --ckpt-path`` (and ``membrain finetune``) load as their own."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .._version import __version__
from ..constants import MEMBRAIN_PIXEL_SIZE, NORMALISATION, ZSCORE
from ..errors import InputError, collect_warnings, warn
from ._common import require_free

NORMALISATION_WORDS = {
    ZSCORE: "each tomogram's mean and standard deviation (MemBrain-seg's own)",
    NORMALISATION: "the median and 1.4826 × MAD, clipped to ±10 (robust_z)",
}
"""How a network's training intensities were normalised, in the words an export records."""


@dataclass(frozen=True)
class ExportSettings:
    """How a checkpoint is exported.

    Attributes
    ----------
    overwrite
        Replace an existing output file.
    trust_checkpoint
        Allow a checkpoint that pickles objects beyond weights.
    allow_normalisation_mismatch
        Export, with a warning, a network that learnt intensities normalised otherwise
        than ``membrain segment`` normalises tomograms (our ``robust_z``); refused without.
    """

    overwrite: bool = False
    trust_checkpoint: bool = False
    allow_normalisation_mismatch: bool = False


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote."""

    checkpoint: Path
    out: Path
    filters: tuple[int, ...]
    """The network's widths, top to bottom (MemBrain-seg's ``channels``)."""
    weights: int
    """Number of weights (fp32 values) in the file."""
    size_bytes: int
    step: int | None
    """The training step the checkpoint was saved at, where recorded."""
    normalisation: str
    """How the network's training intensities were normalised (``zscore``: as ``membrain
    segment`` normalises tomograms)."""
    pixel_size: float | None
    """The pixel size (Å) the network was trained at, where recorded."""
    settings: ExportSettings
    warnings: list[str]


def export_membrain(
    checkpoint: Path, out: Path, *, settings: ExportSettings = ExportSettings()
) -> ExportReport:
    """Write the network of ``checkpoint`` (ours) to ``out`` as a MemBrain-seg Lightning
    checkpoint, weights only (no optimiser state), atomically; neither Lightning nor MONAI
    is needed. The file records where it came from, the pixel size and normalisation.

    Refused with an ``InputError``, before anything is written: an ``out`` that exists
    (unless ``settings.overwrite``) or is ``checkpoint`` itself; a checkpoint that is
    MemBrain-seg's already; a network MemBrain-seg's cannot hold (the ``small`` and
    ``tiny`` presets, ``zyx`` networks, other strides, kernels or heads); one trained on
    intensities normalised otherwise than ``membrain segment`` does, unless
    ``settings.allow_normalisation_mismatch``. A pixel size other than MemBrain-seg's
    10 Å, or none recorded, is warned about.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    with collect_warnings() as warned:
        _check_out(checkpoint, out, settings.overwrite)
        from ..network.checkpoints import (
            EXPORT_KEY,
            is_membrain_checkpoint,
            load_network,
            membrain_checkpoint,
            membrain_hyper_parameters,
            save_membrain_checkpoint,
        )

        loaded = load_network(checkpoint, settings.trust_checkpoint)
        if is_membrain_checkpoint(loaded.content):
            record = loaded.content.get(EXPORT_KEY)
            source = record.get("source") if isinstance(record, dict) else None
            known = f" (exported from {source})" if source else ""
            raise InputError(
                f"{checkpoint}: already a MemBrain-seg checkpoint{known}: nothing to export; "
                "membrain segment --ckpt-path takes it as it is"
            )
        try:
            membrain_hyper_parameters(loaded.network.config)
        except InputError as exc:
            raise InputError(f"{checkpoint}: {exc}") from None
        _check_feeding(checkpoint, loaded.normalisation, loaded.pixel_size, settings)
        step = loaded.content.get("step")
        record = {
            "exported_by": f"patch_corrections {__version__}",
            "source": str(checkpoint),
            "source_sha256": _sha256(checkpoint),
            "step": step,
            "normalisation": loaded.normalisation,
            "pixel_size": loaded.pixel_size,
            "note": _note(loaded.normalisation, loaded.pixel_size),
        }
        save_membrain_checkpoint(out, membrain_checkpoint(loaded.network, record))
    return ExportReport(
        checkpoint=checkpoint,
        out=out,
        filters=tuple(loaded.network.config.filters),
        weights=sum(p.numel() for p in loaded.network.parameters()),
        size_bytes=out.stat().st_size,
        step=step,
        normalisation=loaded.normalisation,
        pixel_size=loaded.pixel_size,
        settings=settings,
        warnings=warned,
    )


def _check_out(checkpoint: Path, out: Path, overwrite: bool) -> None:
    """``InputError`` for an ``out`` that cannot or must not be written."""
    if out.is_dir():
        raise InputError(
            f"--out {out}: is a folder; name the file to write, e.g. "
            f"{out / (checkpoint.stem + '_membrain.ckpt')}"
        )
    for folder in out.parents:
        if folder.exists() and not folder.is_dir():
            raise InputError(f"{folder}: exists and is not a folder; choose another --out")
    if out.exists() and checkpoint.exists() and os.path.samefile(out, checkpoint):
        raise InputError(f"--out {out}: is the --checkpoint itself; write to another file")
    require_free([out], overwrite)


def _check_feeding(
    checkpoint: Path, normalisation: str, pixel_size: float | None, settings: ExportSettings
) -> None:
    """Refuse (or, when allowed, warn about) a network ``membrain segment`` would feed
    intensities normalised otherwise than it learnt; warn about its pixel size unless it
    is MemBrain-seg's."""
    if normalisation != ZSCORE:
        words = NORMALISATION_WORDS.get(normalisation, normalisation)
        what = (
            f"{checkpoint}: its network learnt intensities normalised by {words}, but "
            "membrain segment normalises each tomogram by its mean and standard deviation"
        )
        if not settings.allow_normalisation_mismatch:
            raise InputError(
                f"{what}, and would feed it otherwise than it learnt; pass "
                "--allow-normalisation-mismatch to export it anyway (networks fine-tuned "
                "from a MemBrain-seg checkpoint keep its normalisation)"
            )
        warn(f"{what}: check its MemBrain-seg segmentations before relying on them")
    if pixel_size is None:
        warn(
            f"{checkpoint}: records no pixel size it was trained at; membrain segment "
            f"--rescale-patches takes it to be {MEMBRAIN_PIXEL_SIZE:g} Å"
        )
    elif pixel_size != MEMBRAIN_PIXEL_SIZE:
        warn(
            f"{checkpoint}: trained at {pixel_size:g} Å, but membrain segment takes its "
            f"networks to be at {MEMBRAIN_PIXEL_SIZE:g} Å: with --rescale-patches, add "
            f"--out-pixel-size {pixel_size:g}"
        )


def _note(normalisation: str, pixel_size: float | None) -> str:
    """What the exported file says of itself, for whoever opens it."""
    size = f"{pixel_size:g} Å" if pixel_size else "an unrecorded pixel size"
    return (
        "Weights only (no optimiser state), exported from a patch_corrections checkpoint. "
        f"Trained at {size} on intensities normalised by "
        f"{NORMALISATION_WORDS.get(normalisation, normalisation)}; membrain segment "
        "normalises each tomogram by its mean and standard deviation."
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
