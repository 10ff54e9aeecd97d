"""extract_patches --preview and merge_corrections --preview: one PNG per patch, staged
like every other output, with Add/Remove/Ignore in their own colours."""

from __future__ import annotations

import builtins
import json
import sys

import numpy as np
import pytest
from conftest import all_files, write_mrc
from matplotlib.image import imread

from patch_corrections import previews
from patch_corrections.errors import InputError
from patch_corrections.io.volumes import read_volume, write_volume
from patch_corrections.workflows.extraction import ExtractSettings
from patch_corrections.workflows.merging import MergeSettings

SHAPE = (24, 28, 32)  # z, y, x
SIZE, BORDER = 16, 2
MID = SIZE // 2
CENTRES = [(12, 14, 12), (20, 14, 12)]  # x, y, z; the membrane plane y = 14 crosses both
ROWS = {"extract": 2, "merge": 3}
LEGEND_ENTRIES = {"extract": 2, "merge": 5}


@pytest.fixture
def tomogram(tmp_path):
    """A noisy tomogram whose segmentation is one membrane plane at y = 14."""
    rng = np.random.default_rng(0)
    write_mrc(tmp_path / "tomo.mrc", rng.normal(size=SHAPE).astype(np.float32))
    segmentation = np.zeros(SHAPE, np.int8)
    segmentation[:, 14] = 1
    write_mrc(tmp_path / "seg.mrc", segmentation)
    (tmp_path / "c.csv").write_text("".join(f"{x} {y} {z}\n" for x, y, z in CENTRES))
    return tmp_path


def _extract(run_cli, folder, *args, centres="c.csv"):
    return run_cli(
        "extract_patches",
        "-t",
        folder / "tomo.mrc",
        "-s",
        folder / "seg.mrc",
        "-c",
        folder / centres,
        "-o",
        folder / "patches",
        "--patch-size",
        SIZE,
        "--border",
        BORDER,
        *args,
    )


def _merge(run_cli, folder, *args):
    return run_cli(
        "merge_corrections",
        "--labels-dir",
        folder / "patches",
        "--corrections-dir",
        folder / "corr",
        "--out-dir",
        folder / "train",
        *args,
    )


def _paint(folder, patch, filename, mask):
    """A correction mask ``(z, y, x)`` painted on ``patch``, with the patch's geometry."""
    label = folder / "patches" / "labels" / f"{patch}.nrrd"
    (folder / "corr" / patch).mkdir(parents=True, exist_ok=True)
    write_volume(folder / "corr" / patch / filename, mask, read_volume(label)[1].geometry)


def _box(*where) -> np.ndarray:
    mask = np.zeros((SIZE,) * 3, np.uint8)
    mask[where] = 1
    return mask


def _expected_shape(kind: str) -> tuple[int, int]:
    """Height and width in pixels of a preview with the rows and legend of ``kind``."""
    legend_rows = -(-LEGEND_ENTRIES[kind] // 3)
    height = ROWS[kind] * previews.PANEL_INCHES + 0.55 + 0.3 + 0.2 * legend_rows
    width = 3 * previews.PANEL_INCHES + 0.5
    return round(height * previews.DPI), round(width * previews.DPI)


def _colours(png, kind: str) -> dict[str, np.ndarray]:
    """Masks of the green, red and blue pixels of a preview, its legend cut off."""
    legend_rows = -(-LEGEND_ENTRIES[kind] // 3)
    picture = imread(png)[: -round((0.3 + 0.2 * legend_rows) * previews.DPI), :, :3]
    r, g, b = picture[..., 0], picture[..., 1], picture[..., 2]
    return {
        "green": (g - np.maximum(r, b)) > 0.3,
        "red": (r - np.maximum(g, b)) > 0.4,
        "blue": (b - np.maximum(r, g)) > 0.3,
    }


def _merged_row_start(kind: str = "merge") -> int:
    """First pixel row of the merged-labels row (the last row of panels)."""
    return round((0.55 + (ROWS[kind] - 1) * previews.PANEL_INCHES) * previews.DPI)


def test_extract_preview_writes_one_png_per_patch(tomogram, run_cli):
    result = _extract(run_cli, tomogram, "--preview")
    assert result.exit_code == 0, result.output
    out = tomogram / "patches"
    names = ["tomo_patch000", "tomo_patch001"]
    assert sorted(p.name for p in (out / "previews").iterdir()) == [f"{n}.png" for n in names]
    for name in names:
        picture = imread(out / "previews" / f"{name}.png")
        assert picture.shape[:2] == _expected_shape("extract")
        colours = _colours(out / "previews" / f"{name}.png", "extract")
        assert not any(mask.any() for mask in colours.values())  # no corrections yet
    manifest = json.loads((out / "manifest.json").read_text())
    assert [r["name"] for r in manifest["patches"]] == names
    assert "previews" not in json.dumps(manifest)
    assert "Previews:" in result.output
    assert not [p for p in all_files(out) if ".staged-" in p.name or ".partial-" in p.name]


def test_without_preview_there_is_no_previews_folder(tomogram, run_cli):
    assert _extract(run_cli, tomogram).exit_code == 0
    _paint(tomogram, "tomo_patch000", "Add1.nrrd", _box(slice(4, 12), MID, slice(4, 8)))
    assert _merge(run_cli, tomogram).exit_code == 0
    assert not (tomogram / "patches" / "previews").exists()
    assert not (tomogram / "train" / "previews").exists()


def test_merge_preview_shows_add_remove_and_ignore_in_their_colours(tomogram, run_cli):
    assert _extract(run_cli, tomogram).exit_code == 0
    # On the mid slices: Add a line of voxels beside the membrane plane, Remove part of it,
    # Ignore a small block; the second patch gets a Remove only.
    add = _box(slice(4, 12), MID - 3, slice(4, 8))
    remove = _box(slice(4, 12), MID, slice(9, 12))
    ignore = _box(slice(6, 9), slice(10, 13), slice(6, 9))
    _paint(tomogram, "tomo_patch000", "Add1.nrrd", add)
    _paint(tomogram, "tomo_patch000", "Remove1.nrrd", remove)
    _paint(tomogram, "tomo_patch000", "Ignore1.nrrd", ignore)
    _paint(tomogram, "tomo_patch001", "Remove1.nrrd", remove)
    result = _merge(run_cli, tomogram, "--preview")
    assert result.exit_code == 0, result.output
    folder = tomogram / "train" / "previews"
    assert sorted(p.name for p in folder.iterdir()) == ["tomo_patch000.png", "tomo_patch001.png"]
    assert imread(folder / "tomo_patch000.png").shape[:2] == _expected_shape("merge")

    first = _colours(folder / "tomo_patch000.png", "merge")
    start = _merged_row_start()
    for colour in ("green", "red", "blue"):
        assert first[colour][start:].sum() > 20, colour  # drawn in the merged row...
        assert not first[colour][:start].any(), colour  # ...and nowhere above it
    second = _colours(folder / "tomo_patch001.png", "merge")
    assert second["red"].sum() > 20
    assert not second["green"].any() and not second["blue"].any()

    summary = json.loads((tomogram / "train" / "merge_summary.json").read_text())
    assert [r["name"] for r in summary["patches"]] == ["tomo_patch000", "tomo_patch001"]
    assert "previews" not in json.dumps(summary)


def test_painted_voxels_get_their_colour_at_their_place():
    """The overlay of the mid slices, exactly: Add green where the merge made membrane,
    Remove red where it made background, Ignore blue; the rest as the labels say."""
    n = 8
    labels = np.zeros((n, n, n), np.uint8)
    labels[:, 4] = 1  # membrane plane y = 4
    labels[0] = 2
    add, remove, ignore = (np.zeros((n, n, n), bool) for _ in range(3))
    add[4, 2, 1:3] = True  # on the xy slice z = 4
    remove[4, 4, 5:7] = True
    ignore[4, 6, 6] = True
    merged = labels.copy()
    merged[remove], merged[add], merged[ignore] = 0, 1, 2
    image = np.zeros((n, n, n), np.float32)

    xy = [previews.mid_slices(a)[0] for a in (merged, add, remove, ignore)]
    codes = previews.merge_overlay(*xy)
    expected = np.zeros((n, n), np.uint8)
    expected[4, :] = previews.LABEL_MEMBRANE
    expected[2, 1:3] = previews.ADDED
    expected[4, 5:7] = previews.REMOVED
    expected[6, 6] = previews.IGNORED_PAINTED
    np.testing.assert_array_equal(codes, expected)

    rgb = previews.compose(image[4], codes, (-1.0, 1.0))  # grey 0.5 everywhere
    for (row, column), code in (((2, 1), previews.ADDED), ((4, 5), previews.REMOVED)):
        colour, alpha, _ = previews.PALETTE[code]
        np.testing.assert_allclose(rgb[row, column], 0.5 * (1 - alpha) + alpha * np.array(colour))
    np.testing.assert_allclose(rgb[0, 0], [0.5, 0.5, 0.5])
    # The xz slice (y = 4) cuts the membrane plane: membrane, but for the Remove voxels.
    xz = [previews.mid_slices(a)[1] for a in (merged, add, remove, ignore)]
    assert (previews.merge_overlay(*xz)[4, 5:7] == previews.REMOVED).all()
    assert (previews.merge_overlay(*xz)[0] == previews.LABEL_IGNORE).all()


def _no_matplotlib(monkeypatch):
    real_import = builtins.__import__

    def refuse(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    for module in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setattr(builtins, "__import__", refuse)


def test_preview_without_matplotlib_is_one_line_before_any_work(tomogram, run_cli, monkeypatch):
    assert _extract(run_cli, tomogram).exit_code == 0
    _paint(tomogram, "tomo_patch000", "Add1.nrrd", _box(slice(4, 12), MID, slice(4, 8)))
    _no_matplotlib(monkeypatch)
    with pytest.raises(InputError, match="pip install matplotlib"):
        ExtractSettings(preview=True)
    with pytest.raises(InputError, match="pip install matplotlib"):
        MergeSettings(preview=True)
    ExtractSettings(), MergeSettings()  # without --preview matplotlib is not needed

    before = all_files(tomogram)
    for result in (
        _merge(run_cli, tomogram, "--preview"),
        _extract(run_cli, tomogram, "--preview", "--overwrite"),
    ):
        assert result.exit_code == 1
        lines = result.output.strip().splitlines()
        assert len(lines) == 1, result.output
        assert lines[0].startswith("Error: --preview") and "pip install matplotlib" in lines[0]
    assert all_files(tomogram) == before
    assert not (tomogram / "train").exists()
    # Extraction and merging themselves still work.
    assert _merge(run_cli, tomogram).exit_code == 0


def test_overwrite_replaces_previews(tomogram, run_cli):
    assert _extract(run_cli, tomogram, "--preview").exit_code == 0
    previews_dir = tomogram / "patches" / "previews"
    old = (previews_dir / "tomo_patch000.png").read_bytes()
    result = _extract(run_cli, tomogram, "--preview")  # the same centres: nothing new
    assert result.exit_code == 0 and "Skipped 2" in result.output
    assert (previews_dir / "tomo_patch000.png").read_bytes() == old

    (tomogram / "one.csv").write_text("16 14 12\n")
    result = _extract(run_cli, tomogram, "--preview", "--overwrite", centres="one.csv")
    assert result.exit_code == 0, result.output
    assert [p.name for p in previews_dir.iterdir()] == ["tomo_patch000.png"]  # 001 went
    assert (previews_dir / "tomo_patch000.png").read_bytes() != old  # another centre
    # Re-extracted without --preview, the old patch's preview goes with it.
    assert _extract(run_cli, tomogram, "--overwrite", centres="one.csv").exit_code == 0
    assert list(previews_dir.iterdir()) == []

    _paint(tomogram, "tomo_patch000", "Add1.nrrd", _box(slice(4, 12), MID - 3, slice(4, 8)))
    assert _merge(run_cli, tomogram, "--preview").exit_code == 0
    merged_preview = tomogram / "train" / "previews" / "tomo_patch000.png"
    first = merged_preview.read_bytes()
    result = _merge(run_cli, tomogram, "--preview")
    assert result.exit_code == 1 and "already exists" in result.output
    _paint(tomogram, "tomo_patch000", "Remove1.nrrd", _box(slice(4, 12), MID, slice(4, 12)))
    assert _merge(run_cli, tomogram, "--preview", "--overwrite").exit_code == 0
    second = merged_preview.read_bytes()
    assert second != first and _colours(merged_preview, "merge")["red"].any()
    assert _merge(run_cli, tomogram, "--overwrite").exit_code == 0
    assert not merged_preview.exists()  # it would show the labels of the run before


def test_a_failed_merge_leaves_no_preview(tomogram, run_cli):
    assert _extract(run_cli, tomogram).exit_code == 0
    for name in ("tomo_patch000", "tomo_patch001"):
        _paint(tomogram, name, "Add1.nrrd", _box(slice(4, 12), MID, slice(4, 8)))
    # The second label patch holds a value merging refuses once the first is written.
    label = tomogram / "patches" / "labels" / "tomo_patch001.nrrd"
    data, info = read_volume(label)
    data[MID, MID, MID] = 7
    write_volume(label, data, info.geometry, overwrite=True)
    result = _merge(run_cli, tomogram, "--preview")
    assert result.exit_code == 1 and "label values" in result.output
    assert all_files(tomogram / "train") == []
