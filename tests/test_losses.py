"""Ignore voxels contribute neither value nor gradient; edge cases stay finite."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from patch_corrections.training.losses import (
    bce_dice_loss,
    deep_supervision_loss,
    downsample_labels,
    make_loss,
    masked_bce,
    masked_soft_dice,
    parse_loss,
    region_wise_loss,
    region_wise_maps,
    squared_distance_to,
)


def _labels(seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, (2, 1, 8, 8, 8), generator=generator)


@pytest.mark.parametrize(
    "loss", [masked_bce, masked_soft_dice, bce_dice_loss, region_wise_loss, make_loss("rrw+dice")]
)
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


@pytest.mark.parametrize("density", [0.002, 0.03, 0.6])
@pytest.mark.parametrize("shape", [(13, 21, 17), (150, 9, 10)])  # long z: lines in blocks
def test_squared_distance_matches_scipy(density, shape):
    rng = np.random.default_rng(7)
    mask = rng.random((2, 1, *shape)) < density
    mask[1, 0, :, 4:, :] = False  # lines and planes without any true voxel
    mask[1, 0, 6, 2, 3] = True
    distance = squared_distance_to(torch.from_numpy(mask)).numpy()
    for b in range(2):
        expected = ndimage.distance_transform_edt(~mask[b, 0]) ** 2
        np.testing.assert_allclose(distance[b, 0], expected, atol=1e-9)


def test_squared_distance_without_any_true_voxel_is_inf():
    distance = squared_distance_to(torch.zeros((1, 1, 4, 5, 6), dtype=torch.bool))
    assert torch.isinf(distance).all()


def test_region_wise_maps_by_hand():
    # One line of 6 voxels along x: membrane at 0, background at 1..3, ignore at 4, bg at 5.
    target = torch.tensor([1, 0, 0, 0, 2, 0]).reshape(1, 1, 1, 1, 6)
    membrane_map, background_map = region_wise_maps(target)
    # Background voxels are 1, 2, 3 and 5 voxels from the membrane; the largest is 5.
    torch.testing.assert_close(
        membrane_map.flatten(), torch.tensor([-1, 1 / 5, 2 / 5, 3 / 5, 0, 1.0])
    )
    # The membrane voxel is 1 voxel from background, the largest such distance.
    torch.testing.assert_close(background_map.flatten(), torch.tensor([1.0, -1, -1, -1, 0, -1]))


def test_region_wise_maps_when_a_class_is_absent_or_fills_the_crop():
    background_only = torch.tensor([0, 0, 2, 0]).reshape(1, 1, 1, 1, 4)
    membrane_map, background_map = region_wise_maps(background_only)
    torch.testing.assert_close(membrane_map.flatten(), torch.tensor([1.0, 1, 0, 1]))
    torch.testing.assert_close(background_map.flatten(), torch.tensor([-1.0, -1, 0, -1]))
    membrane_only = torch.tensor([1, 2, 1, 1]).reshape(1, 1, 1, 1, 4)
    membrane_map, background_map = region_wise_maps(membrane_only)
    torch.testing.assert_close(membrane_map.flatten(), torch.tensor([-1.0, 0, -1, -1]))
    torch.testing.assert_close(background_map.flatten(), torch.tensor([1.0, 0, 1, 1]))
    for target in (background_only, membrane_only, torch.full((1, 1, 1, 1, 4), 2)):
        logits = torch.zeros(target.shape, requires_grad=True)
        value = region_wise_loss(logits, target)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


def test_region_wise_loss_rewards_the_right_answer():
    target = _labels(3)
    right = torch.where(target == 1, 30.0, -30.0)
    wrong = -right
    assert region_wise_loss(right, target) == pytest.approx(-1, abs=1e-6)
    assert region_wise_loss(wrong, target) > 0
    # Far false membrane costs more than near false membrane.
    line = torch.tensor([1, 0, 0, 0, 0, 0]).reshape(1, 1, 1, 1, 6)
    near = torch.tensor([30.0, 30, -30, -30, -30, -30]).reshape(line.shape)
    far = torch.tensor([30.0, -30, -30, -30, -30, 30]).reshape(line.shape)
    assert region_wise_loss(near, line) < region_wise_loss(far, line)


def test_loss_names():
    assert parse_loss("RRW + dice") == ("rrw", "dice")
    assert parse_loss("dice+bce") == parse_loss("bce+dice") == ("bce", "dice")
    target, logits = _labels(4), torch.randn((2, 1, 8, 8, 8))
    torch.testing.assert_close(
        make_loss("bce+dice")(logits, target), bce_dice_loss(logits, target)
    )
    torch.testing.assert_close(
        make_loss("rrw+bce")(logits, target),
        region_wise_loss(logits, target) + masked_bce(logits, target),
    )
    for bad in ("focal", "bce+bce", ""):
        with pytest.raises(ValueError):
            parse_loss(bad)
