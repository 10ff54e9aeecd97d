"""Ignore voxels contribute neither value nor gradient; edge cases stay finite."""

from __future__ import annotations

import pytest
import torch

from patch_corrections.losses import (
    bce_dice_loss,
    deep_supervision_loss,
    downsample_labels,
    masked_bce,
    masked_soft_dice,
)


def _labels(seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, (2, 1, 8, 8, 8), generator=generator)


@pytest.mark.parametrize("loss", [masked_bce, masked_soft_dice, bce_dice_loss])
def test_ignore_region_changes_neither_loss_nor_gradient(loss):
    target = _labels()
    ignore = target == 2
    logits = torch.randn(target.shape, generator=torch.Generator().manual_seed(1))
    other = logits.clone()
    other[ignore] = torch.tensor([1e4, -1e4, float("inf"), float("nan")]).repeat(
        int(ignore.sum()) // 4 + 1
    )[: int(ignore.sum())]
    grads, values = [], []
    for candidate in (logits, other):
        candidate = candidate.clone().requires_grad_(True)
        value = loss(candidate, target)
        value.backward()
        values.append(value.detach())
        grads.append(candidate.grad)
    torch.testing.assert_close(values[0], values[1])
    torch.testing.assert_close(grads[0], grads[1])
    assert torch.all(grads[0][ignore] == 0)
    assert torch.any(grads[0][~ignore] != 0)


def test_bce_matches_plain_bce_on_annotated_voxels():
    target = _labels()
    logits = torch.randn(target.shape)
    keep = target != 2
    plain = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[keep], (target[keep] == 1).float()
    )
    torch.testing.assert_close(masked_bce(logits, target), plain)


def test_all_ignore_gives_zero_not_nan():
    target = torch.full((2, 1, 4, 4, 4), 2)
    logits = torch.randn(target.shape, requires_grad=True)
    value = bce_dice_loss(logits, target)
    value.backward()
    assert value.item() == 0.0 and torch.all(logits.grad == 0)


def test_dice_by_hand():
    target = torch.tensor([1, 1, 0, 2]).view(1, 1, 1, 1, 4)
    logits = torch.tensor([0.0, 0.0, 0.0, 5.0]).view(1, 1, 1, 1, 4)  # p = 0.5 where counted
    # intersection 1.0, sums 1.5 + 2 -> 1 - (2 + 1) / (3.5 + 1)
    torch.testing.assert_close(masked_soft_dice(logits, target), torch.tensor(1 - 3 / 4.5))


def test_downsampled_labels_keep_ignore_and_thin_membrane():
    target = torch.zeros(1, 1, 4, 4, 4, dtype=torch.long)
    target[0, 0, 0, 0, 0] = 1  # one membrane voxel in the first 2x2x2 block
    target[0, 0, 3, 3, 3] = 2  # one ignore voxel in the last block
    target[0, 0, 2, 2, 2] = 1  # ... which also holds membrane: ignore wins
    coarse = downsample_labels(target, 2)
    assert coarse.shape == (1, 1, 2, 2, 2)
    assert coarse[0, 0, 0, 0, 0] == 1 and coarse[0, 0, 1, 1, 1] == 2
    assert coarse.sum() == 3


def test_deep_supervision_weights_sum_to_one():
    target = _labels()
    full = torch.zeros(2, 1, 8, 8, 8)
    outputs = [full, torch.zeros(2, 1, 4, 4, 4), torch.zeros(2, 1, 2, 2, 2)]
    # With all-zero logits every level's loss is computed; one level alone equals itself.
    assert deep_supervision_loss([full], target) == bce_dice_loss(full, target)
    total = deep_supervision_loss(outputs, target)
    parts = [bce_dice_loss(o, downsample_labels(target, 8 // o.shape[-1])) for o in outputs]
    expected = (parts[0] + parts[1] / 2 + parts[2] / 4) / 1.75
    torch.testing.assert_close(total, expected)
