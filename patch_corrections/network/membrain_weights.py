"""MemBrain-seg's checkpoint layout: its Lightning state dict holds DynUNet's weights under
``_model.`` and again under ``skip_layers`` names. These functions read our network's
weights and shape out of it, and write ours back in it, so a network trained here loads in
``membrain segment``."""

from __future__ import annotations

import torch

from ..errors import InputError
from .unet import UNetConfig

MEMBRAIN_PREFIX = "_model."
"""Where MemBrain-seg's Lightning module keeps its DynUNet's weights in a state dict."""


def membrain_state_dict(state: dict) -> dict[str, torch.Tensor]:
    """Our network's weights out of a MemBrain-seg (Lightning) state dict; the inverse of
    :func:`lightning_state_dict`.

    Keeps the ``_model.`` entries without the prefix and drops ``skip_layers.*``, which
    only repeat the same tensors under a second name, and anything else (loss buffers).
    """
    prefix = MEMBRAIN_PREFIX
    weights = {
        key[len(prefix) :]: value
        for key, value in state.items()
        if key.startswith(prefix) and not key[len(prefix) :].startswith("skip_layers.")
    }
    return weights or {k: v for k, v in state.items() if not k.startswith("skip_layers.")}


def lightning_state_dict(
    weights: dict[str, torch.Tensor], config: UNetConfig
) -> dict[str, torch.Tensor]:
    """MemBrain-seg's Lightning state dict of ``weights``, as Lightning saves it: each under
    ``_model.``, then again under DynUNet's ``skip_layers`` names (loaded last: a wrong one
    would win). Level ``i`` holds its encoder as ``downsample``, the next level as
    ``next_layer`` (innermost the bottleneck), its decoder as ``upsample`` and, from level
    1 on, a deep-supervision head as ``super_head``."""
    levels = len(config.filters) - 1
    encoders = ["input_block."] + [f"downsamples.{i}." for i in range(levels - 1)]
    inner: list[tuple[str, str]] = [("bottleneck.", "next_layer." * levels)]
    for i in reversed(range(levels)):  # built inside out, listed outside in
        path = "next_layer." * i
        heads = [(f"deep_supervision_heads.{i - 1}.", path + "super_head.")]
        inner = [
            (encoders[i], path + "downsample."),
            *inner,
            (f"upsamples.{levels - 1 - i}.", path + "upsample."),
            *(heads if 1 <= i <= config.heads else []),
        ]
    state = {MEMBRAIN_PREFIX + key: value for key, value in weights.items()}
    for ours, alias in inner:
        for key in (k for k in weights if k.startswith(ours)):
            state[f"{MEMBRAIN_PREFIX}skip_layers.{alias}{key[len(ours) :]}"] = weights[key]
    return state


def config_from_state_dict(weights: dict[str, torch.Tensor]) -> UNetConfig:
    """Infer filters, kernel and heads from weight shapes (strides: 1 then 2s)."""
    try:
        first = weights["input_block.conv1.conv.weight"]
        down = sorted({int(k.split(".")[1]) for k in weights if k.startswith("downsamples.")})
        filters = [first.shape[0]]
        filters += [weights[f"downsamples.{i}.conv1.conv.weight"].shape[0] for i in down]
        filters.append(weights["bottleneck.conv1.conv.weight"].shape[0])
        heads = len({k.split(".")[1] for k in weights if k.startswith("deep_supervision_heads.")})
        return UNetConfig(
            filters=tuple(int(c) for c in filters),
            strides=(1,) + (2,) * (len(filters) - 1),
            kernel_size=int(first.shape[-1]),
            in_channels=int(first.shape[1]),
            out_channels=int(weights["output_block.conv.conv.weight"].shape[0]),
            heads=heads,
            axis_order="xyz",  # as membrain segment feeds its networks
        )
    except (KeyError, IndexError, ValueError) as exc:
        raise InputError(f"weights do not describe this U-Net (missing or odd {exc})") from None
