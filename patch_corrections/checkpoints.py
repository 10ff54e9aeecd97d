"""Checkpoints: our own (a plain dict) and MemBrain-seg's Lightning ``.ckpt`` files.

Ours hold the weights, the network and training configs, optimiser state, the step, the
metrics so far, RNG states and the intensity normalisation. They contain only tensors and
plain Python values, so they load with ``torch.load(weights_only=True)``; they are written
to a temporary file and renamed into place.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from .errors import InputError
from .io.files import atomic_target
from .model import UNet, UNetConfig, config_from_state_dict, membrain_state_dict

FORMAT = "patch_corrections/unet-1"


def save_checkpoint(path: Path, content: dict) -> None:
    """Write ``content`` (see ``training_state``) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_target(path) as temporary:
        torch.save({"format": FORMAT, **content}, temporary)


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
    if not (start.startswith(b"PK") or start[:1] == b"\x80"):
        raise InputError(f"{path}: not a readable PyTorch checkpoint")
    try:
        content = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError:
        raise InputError(
            f"{path}: holds pickled objects beyond weights; if you trust its source, pass "
            "--trust-checkpoint"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable PyTorch checkpoint ({exc})") from None
    if not isinstance(content, dict):
        raise InputError(f"{path}: not a checkpoint (a {type(content).__name__}, not a dict)")
    return content


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
    record, MemBrain-seg's z-score over the whole tomogram for its checkpoints."""
    from .data import NORMALISATION, ZSCORE

    if content.get("format") == FORMAT:
        return content.get("normalisation", NORMALISATION)
    return ZSCORE


MEMBRAIN_PIXEL_SIZE = 10.0
"""Pixel size (Å) MemBrain-seg trains its networks at."""


def pixel_size_of(content: dict) -> float | None:
    """The pixel size (Å) a checkpoint's network was trained at, where known: MemBrain-seg's
    10 Å for its checkpoints, what ours record (``None`` when they record none)."""
    if content.get("format") == FORMAT:
        value = content.get("pixel_size")
        return float(value) if value else None
    return MEMBRAIN_PIXEL_SIZE
