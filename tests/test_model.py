"""Our U-Net against MONAI's DynUNet (a committed fixture), and MemBrain-seg checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from patch_corrections.errors import InputError
from patch_corrections.network.membrain_weights import config_from_state_dict, membrain_state_dict
from patch_corrections.network.unet import (
    PRESETS,
    InstanceNorm,
    UNet,
    instance_norm,
    upsample_heads,
)

FIXTURE = Path(__file__).with_name("fixtures") / "dynunet_tiny.pt"


@pytest.fixture(scope="module")
def dynunet():
    return torch.load(FIXTURE, weights_only=True)


def _lightning_state(dynunet) -> dict:
    """A MemBrain-seg Lightning state dict: weights under ``_model.`` (skip_layers
    duplicates included) plus a loss buffer."""
    state = {f"_model.{k}": v for k, v in dynunet["state_dict"].items()}
    state["loss_function.weights"] = torch.ones(3)
    return state


def test_same_output_as_monai_dynunet(dynunet):
    weights = membrain_state_dict(_lightning_state(dynunet))
    assert not any(k.startswith("skip_layers") for k in weights)
    config = config_from_state_dict(weights)
    assert config.filters == tuple(dynunet["filters"]) and config.heads == 2
    network = UNet(config)
    network.load_state_dict(weights, strict=True)
    network.eval()
    with torch.no_grad():
        output = network(dynunet["input"])
        heads = upsample_heads(network.forward_heads(dynunet["input"]))
    torch.testing.assert_close(output, dynunet["output"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(heads, dynunet["train_output"], rtol=1e-5, atol=1e-5)


def test_parameter_names_match_dynunet(dynunet):
    ours = set(UNet(config_from_state_dict(dynunet["state_dict"])).state_dict())
    theirs = {k for k in dynunet["state_dict"] if not k.startswith("skip_layers")}
    assert ours == theirs


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_build_and_keep_shape(preset):
    config = PRESETS[preset]
    network = UNet(config)
    edge = config.divisor
    with torch.no_grad():
        outputs = network.forward_heads(torch.zeros(1, 1, edge, edge, 2 * edge))
    assert outputs[0].shape == (1, 1, edge, edge, 2 * edge)
    assert [o.shape[-1] for o in outputs] == [2 * edge // 2**i for i in range(config.heads + 1)]


def test_full_preset_is_membrain_size():
    network = UNet(PRESETS["full"])
    assert network.config.filters == (32, 64, 128, 256, 512, 1024)
    assert sum(p.numel() for p in network.parameters()) > 30_000_000


def test_other_weights_are_refused():
    with pytest.raises(InputError, match="do not describe this U-Net"):
        config_from_state_dict({"encoder.weight": torch.zeros(3)})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_instance_norm_matches_pytorchs(dtype):
    # The CUDA path of InstanceNorm, run here on the CPU: same values and gradients as
    # torch's own instance norm, also when the mean is far from zero.
    torch.manual_seed(0)
    x = (torch.randn(2, 6, 10, 9, 7, dtype=dtype) * 3 + 20).requires_grad_()
    weight = torch.randn(6, dtype=dtype, requires_grad=True)
    bias = torch.randn(6, dtype=dtype, requires_grad=True)
    ours = instance_norm(x, weight, bias)
    theirs = torch.nn.functional.instance_norm(x, weight=weight, bias=bias, eps=1e-5)
    tolerance = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {}
    torch.testing.assert_close(ours, theirs, **tolerance)
    grad = torch.randn_like(theirs)
    for a, b in zip(
        torch.autograd.grad(ours, (x, weight, bias), grad),
        torch.autograd.grad(theirs, (x, weight, bias), grad),
    ):
        torch.testing.assert_close(a, b, **tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_instance_norm_without_gradients_gives_the_same_values_in_one_pass(dtype):
    # Inference writes the float32 multiply-add straight in the input's type (bf16 under
    # autocast on CUDA): the same values, rounded once, in the input's layout.
    torch.manual_seed(1)
    x = (torch.randn(2, 4, 9, 8, 7) * 3 + 20).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last_3d)
    weight, bias = torch.randn(4), torch.randn(4)
    trained = instance_norm(x.clone().requires_grad_(), weight, bias)
    with torch.inference_mode():
        inferred = instance_norm(x, weight, bias)
    assert inferred.dtype == dtype and not inferred.requires_grad
    assert inferred.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.equal(inferred, trained.detach())


def test_instance_norm_modules_keep_dynunets_parameters():
    network = UNet(PRESETS["tiny"])
    norms = [m for m in network.modules() if isinstance(m, torch.nn.InstanceNorm3d)]
    assert norms and all(isinstance(m, InstanceNorm) for m in norms)
    assert {name for name, _ in norms[0].named_parameters()} == {"weight", "bias"}
    assert not list(norms[0].buffers())
