"""Checkpoints: our own (a plain dict) and MemBrain-seg's Lightning ``.ckpt`` files, read
and, for export to MemBrain-seg, written.

Ours hold the weights, the network and training configs, optimiser state, the step, the
metrics so far, RNG states and the intensity normalisation. They contain only tensors and
plain Python values, so they load with ``torch.load(weights_only=True)``; they are written
to a temporary file and renamed into place. An exported MemBrain-seg checkpoint is such a
plain dict too, in the layout Lightning's ``load_from_checkpoint`` reads (written without
Lightning or MONAI).
"""

from __future__ import annotations

import io
import pickle
import pickletools
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from ..constants import MEMBRAIN_PIXEL_SIZE, NORMALISATION, NORMALISATIONS, ZSCORE
from ..errors import InputError
from ..io.staging import atomic_target
from .membrain_weights import config_from_state_dict, lightning_state_dict, membrain_state_dict
from .unet import PRESETS, UNet, UNetConfig

FORMAT = "patch_corrections/unet-1"


def save_checkpoint(path: Path, content: dict) -> None:
    """Write ``content`` (see ``training_state``) atomically."""
    _save(Path(path), {"format": FORMAT, **content})


def _save(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_target(path) as temporary:
            torch.save(content, temporary)
    except (OSError, RuntimeError) as exc:
        # A full disk shows up as torch's "unexpected pos" RuntimeError or as an OSError.
        reason = " ".join(str(exc).split())[:160]
        kept = f"; the previous {path.name} is kept" if path.exists() else ""
        raise InputError(
            f"{path}: cannot write the checkpoint (no space left on the disk? {reason}){kept}"
        ) from None


def read_checkpoint(path: Path, trust: bool = False) -> dict:
    """Load a checkpoint file as a dict of plain values and tensors (on the CPU).

    ``trust`` allows arbitrary pickled objects, which some Lightning checkpoints carry in
    their hyper-parameters; only use it for files from a source you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    with open(path, "rb") as handle:
        start = handle.read(4)
    # torch.save writes a zip archive; older files are a pickle (protocol byte 0x80).
    archive = start.startswith(b"PK")
    if not (archive or start[:1] == b"\x80"):
        raise InputError(f"{path}: not a readable PyTorch checkpoint")
    kind = "zip file" if archive else "pickle"
    damaged = f"{path}: not a readable PyTorch checkpoint (a damaged or foreign {kind})"
    if archive and not _torch_archive(path):
        raise InputError(damaged)
    try:
        content = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError:
        # Refused by the weights-only loader, or not a pickle at all: only a well-formed
        # pickle can hold objects that --trust-checkpoint would let through.
        if trust or not _well_formed_pickles(path, archive):
            raise InputError(damaged) from None
        raise InputError(
            f"{path}: holds pickled objects beyond weights; if you trust its source, pass "
            "--trust-checkpoint"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        if archive:
            raise InputError(damaged) from None
        detail = " ".join(str(exc).split())[:200]  # torch's messages run over many lines
        raise InputError(f"{path}: not a readable PyTorch checkpoint ({detail})") from None
    if not isinstance(content, dict):
        raise InputError(f"{path}: not a checkpoint (a {type(content).__name__}, not a dict)")
    return content


LEGACY_PICKLES = 4
"""Pickles ahead of the tensor data in a pre-zip ``torch.save`` file: magic number, protocol
version, system info, the saved object."""


def _torch_archive(path: Path) -> bool:
    """Whether ``path`` is a zip archive laid out as ``torch.save`` writes one: a local
    file header first (torch reads nothing else as a zip) and ``<folder>/data.pkl``."""
    with open(path, "rb") as handle:
        if handle.read(4) != b"PK\x03\x04":
            return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError):
        return False
    return any(name.count("/") == 1 and name.endswith("/data.pkl") for name in names)


def _well_formed_pickles(path: Path, archive: bool) -> bool:
    """Whether the pickles of a checkpoint parse (read, never run): the archive's
    ``data.pkl``, or the leading pickles of a pre-zip file."""
    try:
        if archive:
            with zipfile.ZipFile(path) as folder:
                name = next(n for n in folder.namelist() if n.endswith("/data.pkl"))
                return _parse(io.BytesIO(folder.read(name)), 1)
        with open(path, "rb") as handle:
            return _parse(handle, LEGACY_PICKLES)
    except (ValueError, EOFError, OSError, StopIteration, zipfile.BadZipFile):
        return False


def _parse(stream: BinaryIO, pickles: int) -> bool:
    """Read ``pickles`` pickles one after another from ``stream``; ``ValueError`` when one
    is cut short or holds a byte that is no pickle opcode."""
    for _ in range(pickles):
        for _ in pickletools.genops(stream):
            pass
    return True


def network_from_checkpoint(content: dict, path: Path) -> tuple[UNet, dict]:
    """Build the network a checkpoint describes and load its weights.

    Accepts our checkpoints (``model`` and ``model_config``) and MemBrain-seg Lightning
    checkpoints (``state_dict`` with ``_model.`` weights). Returns the network and the
    checkpoint's extra information (``normalisation``, ``step`` …).
    """
    if content.get("format") == FORMAT:
        try:
            config = UNetConfig.from_dict(content["model_config"])
            weights = content["model"]
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{path}: incomplete checkpoint ({exc!r})") from None
    elif "state_dict" in content:
        weights = membrain_state_dict(content["state_dict"])
        try:
            config = config_from_state_dict(weights)
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from None
    else:
        raise InputError(
            f"{path}: neither a patch_corrections nor a MemBrain-seg checkpoint "
            "(no 'model' or 'state_dict' entry)"
        )
    network = UNet(config)
    try:
        network.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        detail = str(exc).splitlines()[0][:200]
        raise InputError(
            f"{path}: weights do not fit the U-Net they describe ({detail})"
        ) from None
    return network, content


def normalisation_of(content: dict) -> str:
    """The intensity normalisation a checkpoint's network was trained with: the one ours
    record, MemBrain-seg's z-score over the whole tomogram for its checkpoints (or the one
    an export from ours recorded)."""
    if content.get("format") == FORMAT:
        return content.get("normalisation", NORMALISATION)
    return str(_exported(content).get("normalisation") or ZSCORE)


def pixel_size_of(content: dict) -> float | None:
    """The pixel size (Å) a checkpoint's network was trained at, where known: MemBrain-seg's
    10 Å for its checkpoints (or the one an export from ours recorded), what ours record
    (``None`` when they record none)."""
    if content.get("format") == FORMAT:
        value = content.get("pixel_size")
        return float(value) if value else None
    value = _exported(content).get("pixel_size")
    return float(value) if value else MEMBRAIN_PIXEL_SIZE


def _exported(content: dict) -> dict:
    """What an exported MemBrain-seg checkpoint records of its source (``{}`` for others)."""
    record = content.get(EXPORT_KEY)
    return record if isinstance(record, dict) else {}


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint's network (on the CPU, weights loaded) and how it was trained.

    Attributes
    ----------
    content
        The checkpoint as read (ours: the training state too).
    normalisation
        The intensity normalisation its network learnt (see :func:`normalisation_of`).
    pixel_size
        The pixel size (Å) it was trained at, where known (see :func:`pixel_size_of`).
    """

    path: Path
    network: UNet
    content: dict
    normalisation: str
    pixel_size: float | None


def load_network(path: Path, trust: bool = False) -> LoadedCheckpoint:
    """Read a checkpoint, ours or MemBrain-seg's, and build its network: the one way every
    command loads one.

    Raises
    ------
    InputError
        For a file that is no readable checkpoint, weights that do not fit the network
        they describe, or a normalisation this package does not know.
    """
    path = Path(path)
    content = read_checkpoint(path, trust)
    network, _ = network_from_checkpoint(content, path)
    normalisation = normalisation_of(content)
    if normalisation not in NORMALISATIONS:
        raise InputError(f"{path}: unknown intensity normalisation {normalisation!r}")
    return LoadedCheckpoint(path, network, content, normalisation, pixel_size_of(content))


# --- MemBrain-seg's Lightning checkpoints, written ------------------------------------

LIGHTNING_VERSION = "2.0.0"
"""The Lightning version an exported checkpoint names. Lightning migrates files from older
versions (the last migration is 2.0.0's) by rewriting training-loop state, which an
export has none of; from this version on it loads the file as it is."""
EXPORT_KEY = "patch_corrections"
"""Top-level entry of an exported checkpoint: where it came from and how its network is to
be fed. Lightning and MemBrain-seg ignore it; :func:`normalisation_of` reads it back."""
MEMBRAIN_NETWORK = UNetConfig()
"""MemBrain-seg's network: ``SemanticSegmentationUnet`` takes its widths (``channels``)
and ``strides`` as hyper-parameters, but fixes six kernel-3 levels, upsampling kernels
of 2 (so strides of 2), two deep-supervision heads and LeakyReLU 0.01; ``membrain
segment`` feeds one channel in ``(x, y, z)`` order and thresholds one logit."""
_FIXED = ("strides", "kernel_size", "heads", "in_channels", "out_channels", "negative_slope")
"""What of :data:`MEMBRAIN_NETWORK` an exported network must share (besides six levels)."""


def is_membrain_checkpoint(content: dict) -> bool:
    """Whether a checkpoint read by :func:`read_checkpoint` is MemBrain-seg's (Lightning's
    ``state_dict``) rather than ours."""
    return content.get("format") != FORMAT and "state_dict" in content


def membrain_hyper_parameters(config: UNetConfig) -> dict:
    """The ``hyper_parameters`` from which MemBrain-seg's ``load_from_checkpoint`` builds
    a network of ``config``'s shape: its ``channels`` (only names its module accepts:
    any other is a ``TypeError`` there).

    Raises
    ------
    InputError
        Naming what of ``config`` MemBrain-seg's network cannot hold.
    """
    full = MEMBRAIN_NETWORK
    widths = ", ".join(map(str, config.filters))
    if config.axis_order != full.axis_order:
        problem = (
            f"its network sees arrays in ({', '.join(config.axis_order)}) order (it was "
            "trained before the order was recorded), but membrain segment feeds (x, y, z)"
        )
    elif len(config.filters) != len(full.filters):
        preset = next((f"the {n} preset, " for n, c in PRESETS.items() if c == config), "")
        problem = (
            f"a {len(config.filters)}-level network ({preset}filters {widths}); MemBrain-seg "
            f"builds {len(full.filters)}-level ones only (retrain with --preset full, or "
            "from a MemBrain-seg checkpoint)"
        )
    else:
        odd = [name for name in _FIXED if getattr(config, name) != getattr(full, name)]
        if not odd:
            return {"channels": [int(width) for width in config.filters]}
        problem = "; ".join(
            f"{name} {getattr(config, name)} (MemBrain-seg's: {getattr(full, name)})"
            for name in odd
        )
    raise InputError(f"cannot be held by MemBrain-seg's network: {problem}")


def membrain_checkpoint(network: UNet, record: dict) -> dict:
    """A MemBrain-seg Lightning checkpoint of ``network``, weights only: what
    ``PreprocessedSemanticSegmentationUnet.load_from_checkpoint`` (``membrain segment``)
    and ``SemanticSegmentationUnet.load_from_checkpoint`` (``membrain finetune``, strict)
    read, with ``record`` under :data:`EXPORT_KEY`. ``InputError`` for a network MemBrain-seg
    cannot hold (see :func:`membrain_hyper_parameters`)."""
    hyper_parameters = membrain_hyper_parameters(network.config)
    weights = {key: value.detach().cpu() for key, value in network.state_dict().items()}
    return {
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": LIGHTNING_VERSION,
        "state_dict": lightning_state_dict(weights, network.config),
        "hyper_parameters": hyper_parameters,
        # Empty training state, as a Lightning file has them: nothing to resume.
        "loops": {},
        "callbacks": {},
        "optimizer_states": [],
        "lr_schedulers": [],
        EXPORT_KEY: record,
    }


def save_membrain_checkpoint(path: Path, content: dict) -> None:
    """Write a checkpoint made by :func:`membrain_checkpoint` atomically."""
    _save(Path(path), content)
