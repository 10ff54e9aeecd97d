"""``suggest``: boxes ranked by how much a correction there would teach, on maps where the
right answer is known; overlap, manifest, mask and border rules; files extract_patches
reads as they are; the command on a tiny network; one-line errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import save_tiny_checkpoint

from patch_corrections import ExtractSettings, extract_patches, read_centres
from patch_corrections.errors import InputError
from patch_corrections.inference.box_choice import choose, overlap_share
from patch_corrections.inference.box_scores import (
    BoxScores,
    CellSums,
    axis_candidates,
    box_scores,
    box_sums,
    voxel_terms,
)
from patch_corrections.io.volumes import Geometry, read_volume, write_volume
from patch_corrections.workflows import Listener, SegmentSettings
from patch_corrections.workflows.suggestion import SuggestSettings, suggest

SHAPE = (24, 32, 96)  # z, y, x
PATCH, BORDER = 16, 2
SMALL = SuggestSettings(
    count=3, patch_size=PATCH, border=BORDER, max_overlap=0, previews=False, spread=False
)
"""Boxes that do not touch: each region then gets one suggestion at most. Most tests rank
on uncertain membrane (``--no-spread``), whose order is known; ``--spread`` has its own."""
A_X, B_X, C_X = 16, 48, 80
"""x of the three regions: an uncertain membrane (A), uncertain empty space (B), a
confident membrane (C); each spans y 8-24 and z 4-20."""


def _maps(shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and TTA variance ``(z, y, x)``: confident background, and the regions."""
    p = np.full(shape, 0.02, np.float32)
    v = np.zeros(shape, np.float32)
    region = (slice(4, 20), slice(8, 24))
    # A: a membrane sheet the network half believes in, its flipped passes disagreeing.
    p[(*region, slice(A_X - 1, A_X + 2))] = 0.6
    v[(*region, slice(A_X - 1, A_X + 2))] = 0.05
    # B: a cube of uncertain noise, two voxels of it above the threshold.
    p[(*region, slice(B_X - 8, B_X + 8))] = 0.4
    v[(*region, slice(B_X - 8, B_X + 8))] = 0.05
    p[12, 16, B_X], p[13, 16, B_X] = 0.55, 0.55
    # C: a membrane the network is sure of.
    p[(*region, slice(C_X - 1, C_X + 2))] = 0.95
    v[(*region, slice(C_X - 1, C_X + 2))] = 0.002
    return p, v


def _write_maps(folder: Path, p: np.ndarray, v: np.ndarray) -> tuple[Path, Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    geometry = Geometry((10.0,) * 3)
    tomogram = folder / "tomo.mrc"
    noise = np.random.default_rng(0).normal(size=p.shape).astype(np.float32) - 2 * (p > 0.5)
    write_volume(tomogram, noise, geometry)
    write_volume(folder / "tomo_probabilities.mrc", p.astype(np.float16), geometry)
    write_volume(folder / "tomo_uncertainty.mrc", v.astype(np.float16), geometry)
    write_volume(folder / "tomo_segmented.mrc", (p > 0.5).astype(np.int8), geometry)
    return tomogram, folder / "tomo_probabilities.mrc", folder / "tomo_uncertainty.mrc"


@pytest.fixture
def maps(tmp_path) -> tuple[Path, Path, Path]:
    return _write_maps(tmp_path / "maps", *_maps())


def _run(maps, out: Path, settings=SMALL, **options):
    tomogram, p, v = maps
    return suggest(tomogram, out, probabilities=p, uncertainty=v, settings=settings, **options)


def _region(centre_xyz) -> str:
    x = centre_xyz[0]
    return min(zip((A_X, B_X, C_X), "ABC"), key=lambda item: abs(item[0] - x))[1]


# The rule, in arrays


def test_voxel_terms_follow_the_rule():
    p = np.array([0.5, 0.65, 0.2, 0.9, np.nan], np.float32)
    v = np.array([0.0, 0.1, 0.25, 0.3, 0.1], np.float32)
    disagreement, near, membrane = voxel_terms(p, v, 0.5)
    np.testing.assert_allclose(disagreement, [0, 0.4, 1, 1, 0.4], atol=1e-6)
    np.testing.assert_allclose(near, [1, 0.5, 0, 0, 0], atol=1e-6)
    np.testing.assert_array_equal(membrane, [0, 1, 0, 1, 0])
    allowed = np.array([True, False, True, True, True])
    _, near, membrane = voxel_terms(p, v, 0.5, allowed)
    assert near[1] == 0 and membrane[1] == 0


def test_box_sums_equal_brute_force_sums():
    rng = np.random.default_rng(1)
    cells = rng.random((5, 7, 9))
    axes = tuple(axis_candidates(n * 2, 6, 2, allow_border=True, border=1) for n in (5, 7, 9))
    sums = box_sums(cells, axes)
    assert sums.shape == tuple(len(a.centres) for a in axes)
    for index in np.ndindex(sums.shape):
        block = tuple(slice(a.first[i], a.last[i]) for a, i in zip(axes, index))
        assert sums[index] == pytest.approx(cells[block].sum())


def test_cell_sums_streamed_in_uneven_slabs_equal_one_pass():
    rng = np.random.default_rng(2)
    terms = tuple(rng.random((13, 10, 11)).astype(np.float32) for _ in range(3))
    whole, slabs = CellSums((13, 10, 11), 4), CellSums((13, 10, 11), 4)
    whole.add(0, terms)
    for z0, z1 in ((0, 3), (3, 9), (9, 13)):
        slabs.add(z0, tuple(t[z0:z1] for t in terms))
    for a, b in zip(whole.sums, slabs.sums):
        np.testing.assert_allclose(a, b)
    assert whole.sums[0].shape == (4, 3, 3)
    assert whole.sums[0].sum() == pytest.approx(float(terms[0].sum(dtype=np.float64)))


def test_candidates_stay_inside_unless_the_border_is_allowed():
    inside = axis_candidates(40, 16, 2, allow_border=False)
    assert inside.centres.min() == 8 and inside.centres.max() == 32
    assert (inside.centres - 8 >= 0).all() and (inside.centres + 8 <= 40).all()
    short = axis_candidates(10, 16, 2, allow_border=False)  # an axis shorter than a patch
    assert list(short.centres) == [5]
    loose = axis_candidates(40, 16, 2, allow_border=True)
    assert loose.centres.min() == 0 and loose.centres.max() == 38


def test_score_ranks_disagreement_on_membrane_and_only_reports_the_threshold_term():
    sums = CellSums((8, 8, 8), 2)
    zero, one = np.zeros((8, 8, 8), np.float32), np.ones((8, 8, 8), np.float32)
    sums.add(0, (zero, one, one))  # near the threshold everywhere, passes all agree
    scores = box_scores(sums, 4)
    assert scores.near_threshold.min() == 1 and scores.score.max() == 0
    assert box_scores(sums, 4, near_weight=1.0).score.min() == 1
    sums = CellSums((8, 8, 8), 2)
    sums.add(0, (one * 0.5, zero, one * 0.01))  # passes that disagree, on 1 % membrane
    scores = box_scores(sums, 4)
    np.testing.assert_allclose(scores.score, 0.5 * 0.01 / 0.02)


def test_overlap_share_is_of_the_smaller_box():
    assert overlap_share((0, 0, 0), (16,) * 3, (8, 0, 0), (16,) * 3) == 0.5
    assert overlap_share((0, 0, 0), (16,) * 3, (4, 4, 4), (8,) * 3) == 1.0
    assert overlap_share((0, 0, 0), (16,) * 3, (16, 0, 0), (16,) * 3) == 0.0


def _scores(values: np.ndarray, centres) -> BoxScores:
    from patch_corrections.inference.box_scores import AxisCandidates

    axes = tuple(AxisCandidates(np.asarray(c), np.asarray(c), np.asarray(c)) for c in centres)
    return BoxScores(axes, values, values, values, values)


def test_non_maximum_suppression_drops_boxes_that_overlap_a_better_one():
    # Boxes of 16 at x = 8, 12, 40: the one at 12 overlaps the best (8) by 75 %.
    values = np.array([[[0.9, 0.8, 0.5]]])
    scores = _scores(values, ([8], [8], [8, 12, 40]))
    assert choose(scores, 16, 3, max_overlap=0.25) == [(0, 0, 0), (0, 0, 2)]
    assert choose(scores, 16, 3, max_overlap=0.8) == [(0, 0, 0), (0, 0, 1), (0, 0, 2)]
    # A patch already extracted there removes the best and its neighbour.
    excluded = [((0, 0, 4), (16, 16, 16))]
    assert choose(scores, 16, 3, 0.25, excluded) == [(0, 0, 2)]
    assert choose(_scores(np.zeros((1, 1, 3)), ([8], [8], [8, 12, 40])), 16, 3) == []


# The workflow on maps


def test_uncertain_membrane_beats_uncertain_empty_space_and_confident_membrane(maps, tmp_path):
    report = _run(maps, tmp_path / "out")
    regions = [_region(s.centre_xyz) for s in report.suggestions]
    assert regions == ["A", "B", "C"]
    best = report.suggestions[0]
    x, y, z = best.centre_xyz
    assert abs(x - A_X) <= PATCH // 2 - BORDER - 1 and 8 <= y <= 24 and 4 <= z <= 20
    assert best.membrane_share > 0.1 and best.disagreement > 0
    assert "on membrane" in best.reason
    assert "little membrane" in report.suggestions[1].reason
    assert report.suggestions[0].score > 2 * report.suggestions[1].score
    assert report.suggestions[1].score > report.suggestions[2].score > 0
    assert report.candidates == np.prod([len(range(0, n - PATCH + 1, 2)) for n in SHAPE])
    assert report.segmentation is None and report.warnings == []


def test_spread_takes_each_kind_of_region_and_says_so(maps, tmp_path):
    # The confident membrane (C) holds no uncertainty worth a box by the rule, but it is
    # a kind of region of its own: with --spread one box goes there, and the reason says
    # which share of the boxes its kind holds.
    spread = _run(maps, tmp_path / "spread", replace(SMALL, spread=True))
    assert sorted(_region(s.centre_xyz) for s in spread.suggestions) == ["A", "B", "C"]
    assert all("most uncertain of a kind holding" in s.reason for s in spread.suggestions)
    rows = spread.centres.read_text().splitlines()[1:]
    assert all("of boxes; TTA passes disagree" in row for row in rows)
    shares = [int(s.reason.split("holding ")[1].split("%")[0]) for s in spread.suggestions]
    assert 98 <= sum(shares) <= 102  # three kinds, one box each: all the boxes (rounded)
    assert SuggestSettings().spread  # the default


def test_written_centres_are_extracted_as_they_are(maps, tmp_path):
    settings = SuggestSettings(count=3, patch_size=PATCH, border=BORDER, max_overlap=0)
    report = _run(maps, tmp_path / "out", settings)
    header = report.centres.read_text().splitlines()[0]
    assert header == "x,y,z,score,reason"
    expected = [s.centre_xyz for s in report.suggestions]
    assert [tuple(int(v) for v in c.xyz) for c in read_centres(report.centres)] == expected
    napari = report.points.read_text().splitlines()
    assert napari[0] == "index,axis-0,axis-1,axis-2,score"
    x, y, z = expected[0]
    assert napari[1].startswith(f"0,{z},{y},{x},")
    assert [tuple(int(v) for v in c.xyz) for c in read_centres(report.points)] == expected
    tomogram = maps[0]
    cut = extract_patches(
        tomogram,
        tomogram.with_name("tomo_segmented.mrc"),
        tmp_path / "patches",
        report.centres,
        settings=ExtractSettings(patch_size=PATCH, border=BORDER),
    )
    assert [p.centre_xyz for p in cut.patches] == expected
    assert all(p.padding_xyz == ((0, 0),) * 3 for p in cut.patches)
    pngs = sorted((tmp_path / "out" / "previews").iterdir())
    assert [p.name for p in pngs] == [f"tomo_suggestion{r:02d}.png" for r in (1, 2, 3)]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert [s.preview for s in report.suggestions] == pngs
    assert not [p for p in (tmp_path / "out").rglob(".*")]  # no lock, no temporary file


def test_patches_in_an_extraction_manifest_are_not_suggested_again(maps, tmp_path):
    first = _run(maps, tmp_path / "first", replace(SMALL, count=1))
    tomogram = maps[0]
    extract_patches(
        tomogram,
        tomogram.with_name("tomo_segmented.mrc"),
        tmp_path / "patches",
        points=[first.suggestions[0].centre_xyz],
        settings=ExtractSettings(patch_size=PATCH, border=BORDER),
    )
    again = _run(maps, tmp_path / "again", exclude_manifest=tmp_path / "patches")
    assert again.excluded == 1
    x, y, z = first.suggestions[0].centre_xyz
    taken = ((z - 8, y - 8, x - 8), (PATCH,) * 3)
    for s in again.suggestions:
        sx, sy, sz = s.centre_xyz
        assert overlap_share((sz - 8, sy - 8, sx - 8), (PATCH,) * 3, *taken) == 0
    assert [_region(s.centre_xyz) for s in again.suggestions] == ["B", "C"]


def test_a_manifest_of_another_tomogram_excludes_nothing(maps, tmp_path):
    other = _write_maps(tmp_path / "other", *_maps())[0]
    other = other.rename(other.with_name("other.mrc"))
    extract_patches(
        other,
        other.with_name("tomo_segmented.mrc"),
        tmp_path / "patches",
        points=[(A_X, 16, 12)],
        settings=ExtractSettings(patch_size=PATCH, border=BORDER),
    )
    report = _run(maps, tmp_path / "out", exclude_manifest=tmp_path / "patches")
    assert report.excluded == 0
    assert _region(report.suggestions[0].centre_xyz) == "A"
    assert any("nothing is excluded" in w for w in report.warnings)


def test_mask_keeps_centres_and_scores_inside_it(maps, tmp_path):
    mask = np.zeros(SHAPE, np.uint8)
    mask[:, :, 64:] = 1  # only C's side
    write_volume(tmp_path / "mask.mrc", mask, Geometry((10.0,) * 3))
    report = _run(maps, tmp_path / "out", mask=tmp_path / "mask.mrc")
    assert [_region(s.centre_xyz) for s in report.suggestions] == ["C"]
    assert all(s.centre_xyz[0] >= 64 for s in report.suggestions)
    assert any("1 of the 3 suggestions" in w for w in report.warnings)


def test_boxes_stay_inside_the_tomogram_unless_the_border_is_allowed(tmp_path):
    p = np.full(SHAPE, 0.02, np.float32)
    v = np.zeros(SHAPE, np.float32)
    p[:, :2, :2], v[:, :2, :2] = 0.6, 0.05  # uncertain membrane along one edge
    maps = _write_maps(tmp_path / "maps", p, v)
    inside = _run(maps, tmp_path / "inside")
    assert inside.suggestions == []  # only the ignore band of an inside patch reaches it
    assert any("0 of the 3 suggestions" in w for w in inside.warnings)
    border = SuggestSettings(count=1, patch_size=PATCH, border=BORDER, allow_border=True)
    loose = _run(maps, tmp_path / "loose", border, mask=None)
    (best,) = loose.suggestions
    x, y, _ = best.centre_xyz
    assert x < PATCH // 2 and y < PATCH // 2


@pytest.mark.parametrize(
    ("patch", "axes"),
    [(32, "z"), (40, "y and z")],  # the maps are x,y,z = 96,32,24
)
def test_a_tomogram_smaller_than_a_patch_is_refused_unless_the_border_is_allowed(
    maps, tmp_path, checkpoint, patch, axes
):
    tomogram, p, v = maps
    out = tmp_path / "out"
    big = replace(SMALL, patch_size=patch, network=SegmentSettings(window=16, device="cpu"))
    line = (
        f"{tomogram}: x,y,z=96,32,24 is smaller than --patch-size {patch} along {axes}; "
        "give a smaller --patch-size or --allow-border"
    )
    with pytest.raises(InputError) as given_maps:
        suggest(tomogram, out, probabilities=p, uncertainty=v, settings=big)
    with pytest.raises(InputError) as network:  # refused before the network runs
        suggest(tomogram, out, checkpoint, settings=big)
    assert str(given_maps.value) == str(network.value) == line
    assert not out.exists()
    loose = _run(maps, out, replace(big, allow_border=True))
    assert loose.suggestions  # boxes that cross the short axes' faces, as asked


def test_listener_hears_the_scoring(maps, tmp_path):
    heard = []
    _run(maps, tmp_path / "out", listener=Listener(progress=heard.append))
    tasks = [(e.task, e.done, e.total) for e in heard]
    assert tasks[0] == ("Scoring", 0, 1) and ("Scoring", 1, 1) in tasks


def test_outputs_are_not_replaced_without_overwrite(maps, tmp_path):
    settings = replace(SMALL, previews=True)
    _run(maps, tmp_path / "out", settings)
    before = (tmp_path / "out" / "tomo_suggestions.csv").read_text()
    with pytest.raises(InputError, match="already exists"):
        _run(maps, tmp_path / "out", settings)
    assert (tmp_path / "out" / "tomo_suggestions.csv").read_text() == before
    fewer = replace(settings, count=1, overwrite=True)
    report = _run(maps, tmp_path / "out", fewer)
    assert len(report.suggestions) == 1
    assert [p.name for p in (tmp_path / "out" / "previews").iterdir()] == ["tomo_suggestion01.png"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"count": 0}, "--count must be at least 1, got 0"),
        ({"max_overlap": 1.0}, "--max-overlap must be in"),
        ({"patch_size": 16, "border": 8}, "--border 8 leaves no voxel"),
        ({"threshold": 1.0}, "--threshold must be a probability"),
    ],
)
def test_settings_refuse_bad_values(change, message):
    with pytest.raises(InputError, match=message):
        SuggestSettings(**change)


def test_bad_maps_are_refused_before_anything_is_written(maps, tmp_path):
    tomogram, p, v = maps
    small = tmp_path / "small.mrc"
    write_volume(small, np.zeros((4, 4, 4), np.float16), Geometry((10.0,) * 3))
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"small.mrc: shape x,y,z=\(4, 4, 4\) differs"):
        suggest(tomogram, out, probabilities=p, uncertainty=small, settings=SMALL)
    logits = tmp_path / "logits.mrc"
    write_volume(logits, np.full(SHAPE, 3.0, np.float32), Geometry((10.0,) * 3))
    with pytest.raises(InputError, match="not probabilities"):
        suggest(tomogram, out, probabilities=logits, uncertainty=v, settings=SMALL)
    with pytest.raises(InputError, match="--probabilities needs --uncertainty"):
        suggest(tomogram, out, probabilities=p, settings=SMALL)
    with pytest.raises(InputError, match="either --checkpoint"):
        suggest(tomogram, out, settings=SMALL)
    with pytest.raises(InputError, match="--uncertainty needs --probabilities"):
        suggest(tomogram, out, uncertainty=v, settings=SMALL)
    with pytest.raises(InputError, match="not both"):
        suggest(tomogram, out, tomogram, probabilities=p, uncertainty=v, settings=SMALL)
    with pytest.raises(InputError, match=r"no manifest\.json"):
        _run(maps, out, exclude_manifest=tmp_path)
    assert not out.exists()


# The command


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("net") / "tiny.pt")


def test_command_runs_the_network_and_writes_everything(tmp_path, run_cli, checkpoint):
    volume = np.random.default_rng(4).normal(size=(16, 32, 40)).astype(np.float32)
    write_volume(tmp_path / "tomo.mrc", volume, Geometry((10.0,) * 3))
    out = tmp_path / "out"
    result = run_cli(
        "suggest",
        "-t",
        tmp_path / "tomo.mrc",
        "--checkpoint",
        checkpoint,
        "-o",
        out,
        "--count",
        2,
        "--patch-size",
        16,
        "--border",
        2,
        "--window",
        16,
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    assert "suggestion(s), one per kind of region, the largest kind first:" in result.output
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    suggested = len(read_centres(out / "tomo_suggestions.csv"))
    assert names == sorted(
        [
            "previews",
            *[f"previews/tomo_suggestion{r:02d}.png" for r in range(1, suggested + 1)],
            "tomo_probabilities.mrc",
            "tomo_segmented.mrc",
            "tomo_suggestions.csv",
            "tomo_suggestions_napari.csv",
            "tomo_uncertainty.mrc",
        ]
    )
    assert suggested >= 1
    # The maps are segment's, with TTA and its variance: the same run from them agrees.
    variance = read_volume(out / "tomo_uncertainty.mrc")[0]
    assert variance.dtype == np.float16 and float(variance.max()) > 0
    again = suggest(
        tmp_path / "tomo.mrc",
        tmp_path / "again",
        probabilities=out / "tomo_probabilities.mrc",
        uncertainty=out / "tomo_uncertainty.mrc",
        settings=SuggestSettings(count=2, patch_size=16, border=2, previews=False),
    )
    assert again.centres.read_text() == (out / "tomo_suggestions.csv").read_text()
    # The segment pass's settings reach it: TTA and its variance always.
    settings = SuggestSettings(network=SegmentSettings(window=16))
    assert settings.network.tta is False  # forced on inside suggest


def test_command_takes_segment_s_threads_and_compile(tmp_path, run_cli, checkpoint, monkeypatch):
    import torch

    volume = np.random.default_rng(5).normal(size=(16, 24, 24)).astype(np.float32)
    write_volume(tmp_path / "tomo.mrc", volume, Geometry((10.0,) * 3))
    compiled = []

    def spy(function, *args, **kwargs):
        compiled.append(function)
        return function  # compiling itself is segment's test; here: that it is asked for

    monkeypatch.setattr(torch, "compile", spy)
    before = torch.get_num_threads()
    common = ("suggest", "-t", tmp_path / "tomo.mrc", "--checkpoint", checkpoint)
    small = ("--count", 1, "--patch-size", 16, "--border", 2, "--window", 16, "--device", "cpu")
    try:
        result = run_cli(
            *common, "-o", tmp_path / "out", *small, "--threads", 1, "--compile", "--no-spread"
        )
        assert result.exit_code == 0, result.output
        assert "suggestion(s), best first:" in result.output  # --no-spread ranks, best first
        assert torch.get_num_threads() == 1 and len(compiled) == 1
        refused = run_cli(*common, "-o", tmp_path / "other", *small, "--threads", 0)
        assert refused.exit_code == 1
        assert refused.output == "Error: --threads must be at least 1, got 0\n"
        assert not (tmp_path / "other").exists()
    finally:
        torch.set_num_threads(before)


def test_command_errors_are_one_line(tmp_path, run_cli, maps, checkpoint):
    tomogram, p, v = maps
    small = tmp_path / "small.mrc"
    write_volume(small, np.zeros((4, 4, 4), np.float16), Geometry((10.0,) * 3))
    out = tmp_path / "out"
    for args, text in (
        (["--probabilities", p, "--uncertainty", small], "small.mrc: shape"),
        (["--probabilities", p, "--uncertainty", v, "--count", 0], "--count must be at least 1"),
        (
            ["--probabilities", p, "--uncertainty", v, "--patch-size", 32, "--border", 2],
            "smaller than",
        ),
        (["--checkpoint", checkpoint, "--patch-size", 32, "--border", 2], "along z"),
    ):
        result = run_cli("suggest", "-t", tomogram, "-o", out, *args)
        assert result.exit_code == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and text in lines[0]
    assert not out.exists()
