"""suggest --spread: the features of every candidate box against direct computation,
k-means kinds on features where the groups are known, and a choice that takes the most
uncertain box of each kind instead of the most uncertain boxes of one."""

from __future__ import annotations

import numpy as np
import pytest

from patch_corrections.inference import box_kinds
from patch_corrections.inference.box_choice import choose, choose_spread
from patch_corrections.inference.box_scores import CellSums, box_scores, voxel_terms

CELL, SIZE, BORDER = 2, 8, 2


def _sums(image: np.ndarray, p: np.ndarray, v: np.ndarray):
    maps, pixels = CellSums(image.shape, CELL), CellSums(image.shape, CELL, terms=2)
    maps.add(0, voxel_terms(p, v))
    values = image.astype(np.float64)
    pixels.add(0, (values, values * values))
    return box_scores(maps, SIZE, BORDER), pixels


def test_features_equal_the_statistics_of_each_box_interior():
    rng = np.random.default_rng(0)
    shape = (12, 14, 16)
    image = rng.normal(size=shape).astype(np.float32) + np.linspace(0, 3, 16)
    p = rng.random(shape).astype(np.float32)
    v = rng.random(shape).astype(np.float32) * 0.25
    scores, pixels = _sums(image, p, v)
    features = box_kinds.box_features(scores, pixels)
    assert features.shape == (*scores.score.shape, len(box_kinds.FEATURES))
    for index in np.ndindex(scores.score.shape):
        start = [int(a.first[i]) * CELL for a, i in zip(scores.axes, index)]
        inner = tuple(slice(s, s + SIZE - 2 * BORDER) for s in start)
        block = image[inner].astype(np.float64)
        cells = block.reshape(2, CELL, 2, CELL, 2, CELL).mean(axis=(1, 3, 5))
        expected = (block.mean(), block.std(), cells.std(), (p[inner] > 0.5).mean())
        np.testing.assert_allclose(features[index][:4], expected, rtol=1e-4, atol=1e-5)
        assert features[index][4] == pytest.approx(np.clip(4 * v[inner], 0, 1).mean(), 1e-4)


def test_k_means_finds_groups_that_are_far_apart_and_is_repeatable():
    rng = np.random.default_rng(1)
    centres = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 5]], np.float64)
    truth = rng.integers(0, 3, 600)
    points = centres[truth] + rng.normal(scale=0.5, size=(600, 3))
    open_ = np.ones((600, 1, 1), bool)
    found = box_kinds.kinds(points.reshape(600, 1, 1, 3), 3, open_)[:, 0, 0]
    pairs = {(int(t), int(f)) for t, f in zip(truth, found)}
    assert len(pairs) == 3  # one kind per group, whatever their numbers
    again = box_kinds.kinds(points.reshape(600, 1, 1, 3), 3, open_)[:, 0, 0]
    np.testing.assert_array_equal(found, again)
    closed = open_.copy()
    closed[:10] = False
    assert (box_kinds.kinds(points.reshape(600, 1, 1, 3), 3, closed)[:10] == -1).all()
    same = np.zeros((5, 1, 1, 3))  # fewer distinct points than kinds: one kind
    assert set(box_kinds.kinds(same, 3, np.ones((5, 1, 1), bool)).ravel()) == {0}


def test_spread_takes_one_box_of_each_kind_where_uncertainty_alone_takes_one_kind():
    # Along x: a bright half whose membrane the passes disagree on (most of the boxes), and
    # a dark, empty half where they disagree a little.
    shape = (8, 8, 64)
    image = np.zeros(shape, np.float32)
    image[..., 32:] = -3.0
    p = np.full(shape, 0.02, np.float32)
    v = np.full(shape, 0.001, np.float32)
    p[..., :32:4], v[..., :32] = 0.7, 0.05
    scores, pixels = _sums(image, p, v)
    by_score = choose(scores, SIZE, 2, max_overlap=0)
    spread, shares = choose_spread(scores, pixels, SIZE, 2, max_overlap=0)
    x = scores.axes[2].centres
    assert all(x[i[2]] < 32 for i in by_score)  # both on the uncertain membrane
    assert sorted(x[i[2]] < 32 for i in spread) == [False, True]  # one of each half
    assert len(shares) == 2 and sum(shares) == pytest.approx(1.0)
    excluded = [((0, 0, 0), (8, 8, 32))]  # that half already cut: the rest, by kind
    again, _ = choose_spread(scores, pixels, SIZE, 2, 0, excluded)
    assert all(x[i[2]] - SIZE // 2 >= 32 for i in again)


def test_features_of_boxes_crossing_the_border_describe_their_part_inside():
    shape = (8, 12, 12)
    maps, pixels = CellSums(shape, CELL), CellSums(shape, CELL, terms=2)
    maps.add(0, voxel_terms(np.full(shape, 0.7, np.float32), np.full(shape, 0.05, np.float32)))
    image = np.full(shape, 2.0)
    pixels.add(0, (image, image * image))
    scores = box_scores(maps, SIZE, BORDER, allow_border=True)
    assert scores.membrane.min() < 1  # a box half outside: the score counts the outside as 0
    features = box_kinds.box_features(scores, pixels)
    np.testing.assert_allclose(features[..., 0], 2.0)  # mean intensity inside
    np.testing.assert_allclose(features[..., 1:3], 0.0, atol=1e-3)  # no noise, no texture
    np.testing.assert_allclose(features[..., 3], 1.0, rtol=1e-5)  # all membrane inside
    np.testing.assert_allclose(features[..., 4], 0.2, rtol=1e-5)  # 4 × variance 0.05
