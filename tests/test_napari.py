"""The napari plugin: readers, and the widget's round (open, paint, save, merge, reopen).

Needs the ``napari-test`` extra (napari, a Qt binding, pytest-qt); skipped without it.
Runs offscreen unless QT_QPA_PLATFORM says otherwise. The widget's round runs on a viewer
model (layers, dims; no canvas), which needs no OpenGL; the tests on a whole napari window
(the round again, its canvas drawn) need an OpenGL context, e.g. ``xvfb-run`` with Mesa
on a machine without a display (see the README; with QT_QPA_PLATFORM=xcb the canvas is
checked too), and are skipped without one.
"""

from __future__ import annotations

import functools
import os
import shutil
import warnings
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest

# Before any QApplication exists. QT_QPA_PLATFORM=xcb under xvfb-run draws the canvas too
# (offscreen keeps it black); it is never chosen unasked: without X, Qt aborts the run.
if not os.environ.get("QT_QPA_PLATFORM"):
    os.environ["QT_QPA_PLATFORM"] = "offscreen"

with warnings.catch_warnings():
    # napari and npe2 import with pydantic deprecation warnings, errors under this suite.
    warnings.simplefilter("ignore")
    napari = pytest.importorskip("napari")
    pytest.importorskip("pytestqt")
    import npe2
    from napari.components import ViewerModel
    from napari.utils.notifications import notification_manager

    from patch_corrections.napari_plugin import get_reader, layer_data
    from patch_corrections.napari_plugin._widget import CorrectionsWidget

import patch_corrections as pc
from patch_corrections.constants import BORDER_WIDTH, IGNORE
from patch_corrections.io.geometry import Geometry

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:System theme detection:UserWarning"),
]

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"


@pytest.fixture(scope="module")
def extraction(tmp_path_factory) -> Path:
    """The sample extraction: four 96³ patches cut by the real workflow (read only)."""
    out = tmp_path_factory.mktemp("napari") / "patches"
    pc.extract_patches(
        SAMPLE / "tomogram.mrc",
        SAMPLE / "prediction.mrc",
        out,
        SAMPLE / "centres.csv",
        settings=pc.ExtractSettings(patch_size=96),
    )
    return out


@functools.cache
def _has_opengl() -> bool:
    """Whether Qt makes a working OpenGL context here (a display, Xvfb or a GPU; Qt's
    offscreen platform alone has none)."""
    from qtpy.QtGui import QOffscreenSurface, QOpenGLContext
    from vispy.gloo import gl

    context, surface = QOpenGLContext(), QOffscreenSurface()
    surface.create()
    if not (context.create() and context.makeCurrent(surface)):
        return False
    try:
        return bool(gl.glGetParameter(gl.GL_EXTENSIONS))
    except AttributeError:  # glGetString gave nothing: no GL behind the context
        return False
    finally:
        context.doneCurrent()


@pytest.fixture
def napari_window(qapp):
    """A whole napari window (canvas and docks), where OpenGL works. Made here: napari's
    own pytest plugin (``make_napari_viewer``) stays off, see pyproject.toml."""
    if not _has_opengl():
        pytest.skip("no OpenGL context: run under xvfb-run (or a display) for napari's window")
    viewer = napari.Viewer(show=False)
    yield viewer
    viewer.close()


@pytest.fixture
def widget(qtbot, extraction, tmp_path):
    """The widget on a viewer model: everything but drawing."""
    widget = CorrectionsWidget(ViewerModel())
    qtbot.addWidget(widget)
    widget.corrections_edit.setText(str(tmp_path / "corrections"))
    widget.out_edit.setText(str(tmp_path / "train"))
    assert widget.open_folder(extraction)
    return widget


def _record(extraction: Path, name: str) -> dict:
    return next(r for r in pc.io.load_manifest(extraction) if r["name"] == name)


def _expected(base, add, remove, record) -> np.ndarray:
    """base − Remove + Add, then the 16-voxel band and the padding as ignore, by hand."""
    expected = base.copy()
    expected[remove] = 0
    expected[add] = 1
    b = BORDER_WIDTH
    expected[:b], expected[-b:] = IGNORE, IGNORE
    expected[:, :b], expected[:, -b:] = IGNORE, IGNORE
    expected[:, :, :b], expected[:, :, -b:] = IGNORE, IGNORE
    for axis, (before, after) in enumerate(record["padding_xyz"][::-1]):
        index = [slice(None)] * 3
        index[axis] = slice(0, before)
        expected[tuple(index)] = IGNORE
        index[axis] = slice(expected.shape[axis] - after, None)
        expected[tuple(index)] = IGNORE
    return expected


def _strokes(base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An Add stroke on background (crossing into the border band) and a Remove stroke on
    membrane, ``(z, y, x)``."""
    add = np.zeros(base.shape, dtype=np.uint8)
    add[40:44, 5:60, 50:53] = 1
    remove = np.zeros(base.shape, dtype=np.uint8)
    centre = np.zeros(base.shape, dtype=bool)
    centre[30:66, 30:66, 30:66] = True
    remove[centre & (base == 1)] = 1
    assert remove.any() and (add.astype(bool) & (base == 0)).any()
    return add, remove


def test_paint_save_merge_gives_the_expected_voxels(widget, extraction, tmp_path, qtbot):
    assert widget.patch_list.count() == 4
    name = widget.patches[1].name
    assert widget.select_patch(name)
    viewer = widget.viewer
    record = _record(extraction, name)
    names = [layer.name for layer in viewer.layers]
    assert {"Add", "Remove", "Ignore", "merged preview", f"{name} image"} <= set(names)
    zyx_size = tuple(record["voxel_size_xyz"][::-1])
    for kind in ("add", "remove", "ignore", "image", "preview"):
        assert tuple(widget.layer(kind).scale) == pytest.approx(zyx_size)
        assert tuple(widget.layer(kind).translate) == pytest.approx(record["origin_xyz"][::-1])
    colours = {tuple(widget.layer(k).colormap.map([1])[0]) for k in ("add", "remove", "ignore")}
    assert len(colours) == 3

    base, label_info = pc.read_volume(extraction / record["label"])
    add, remove = _strokes(base)
    widget.layer("add").data = add
    widget.layer("remove").data = remove
    expected = _expected(base, add.astype(bool), remove.astype(bool), record)
    qtbot.waitUntil(lambda: np.array_equal(widget.layer("preview").data, expected), timeout=3000)

    written = widget.save()
    folder = tmp_path / "corrections" / name
    assert written == [folder / "Remove1.nrrd", folder / "Add1.nrrd"]
    for path, painted in zip(written, (remove, add)):
        data, info = pc.read_volume(path)
        np.testing.assert_array_equal(data != 0, painted != 0)
        assert info.geometry.agrees_with(label_info.geometry)
    assert "✔ corrected" in widget.patch_list.item(1).text()
    assert widget.save() == []  # nothing new: nothing written

    worker = widget.merge()
    assert worker is not None and widget.busy
    qtbot.waitUntil(lambda: not widget.busy, timeout=30000)
    assert widget.merge_report is not None, widget.status.text()
    assert [r["name"] for r in widget.merge_report.rows] == [name]
    merged, _ = pc.read_volume(tmp_path / "train" / "labelsTr" / f"{name}.nii.gz")
    np.testing.assert_array_equal(merged, expected)
    assert "Merged 1 patch" in widget.status.text()
    assert not widget.progress.isVisible()


def test_reopen_shows_saved_masks_and_saves_the_next_number(widget, extraction, tmp_path):
    name = widget.patches[0].name
    record = _record(extraction, name)
    base, info = pc.read_volume(extraction / record["label"])
    add, remove = _strokes(base)
    folder = tmp_path / "corrections" / name
    folder.mkdir(parents=True)
    pc.write_volume(folder / "add1.nrrd", add * 255, info.geometry)  # 0/255, lower case
    pc.write_volume(folder / "Remove1.nrrd", remove, info.geometry)
    widget.refresh_list()
    assert "✔ corrected" in widget.patch_list.item(0).text()

    assert widget.select_patch(name)
    np.testing.assert_array_equal(widget.layer("add").data != 0, add != 0)
    np.testing.assert_array_equal(widget.layer("remove").data != 0, remove != 0)
    assert not widget.layer("ignore").data.any()
    np.testing.assert_array_equal(
        widget.layer("preview").data, _expected(base, add != 0, remove != 0, record)
    )

    more = widget.layer("add").data.copy()
    more[60:62, 40:50, 40:50] = 1
    widget.layer("add").data = more
    assert widget.save() == [folder / "Add2.nrrd"]
    assert sorted(p.name for p in folder.iterdir()) == ["Add2.nrrd", "Remove1.nrrd", "add1.nrrd"]


def test_strokes_are_saved_before_their_patch_is_left_or_merged(
    widget, extraction, tmp_path, qtbot, monkeypatch
):
    """Nothing painted is lost: choosing another patch, opening a folder again or merging
    first saves the open patch's new strokes, as Save masks would."""
    first, second = widget.patches[0].name, widget.patches[1].name
    assert widget.select_patch(first)
    base, _ = pc.read_volume(extraction / _record(extraction, first)["label"])
    add, remove = _strokes(base)
    widget.layer("add").data = add
    assert widget.select_patch(second)  # not saved by hand
    saved, _ = pc.read_volume(tmp_path / "corrections" / first / "Add1.nrrd")
    np.testing.assert_array_equal(saved != 0, add != 0)
    assert "✔ corrected" in widget.patch_list.item(0).text()

    widget.layer("remove").data = _strokes(
        pc.read_volume(extraction / _record(extraction, second)["label"])[0]
    )[1]
    assert widget.open_folder(extraction)
    assert (tmp_path / "corrections" / second / "Remove1.nrrd").exists()

    assert widget.select_patch(first)  # its saved strokes load back; a new one is painted
    more = widget.layer("remove").data.copy()
    more[remove != 0] = 1
    widget.layer("remove").data = more
    widget.merge()
    qtbot.waitUntil(lambda: not widget.busy, timeout=30000)
    assert (tmp_path / "corrections" / first / "Remove1.nrrd").exists()
    assert sorted(r["name"] for r in widget.merge_report.rows) == sorted([first, second])

    # A save that fails keeps the patch open and says why, instead of dropping the strokes.
    extra = widget.layer("add").data.copy()
    extra[50:52, 50:52, 50:52] = 1
    widget.layer("add").data = extra
    from patch_corrections.napari_plugin import _state

    def full_disk(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_state, "write_volume", full_disk)
    assert not widget.select_patch(second)
    assert widget.current.patch.name == first and "Not saved" in widget.status.text()
    assert widget.merge() is None


def test_wrong_geometry_is_a_message_not_a_traceback(widget, extraction, tmp_path, qtbot):
    name = widget.patches[2].name
    record = _record(extraction, name)
    base, info = pc.read_volume(extraction / record["label"])
    folder = tmp_path / "corrections" / name
    folder.mkdir(parents=True)
    pc.write_volume(folder / "Add1.nrrd", np.ones((8, 8, 8), np.uint8), info.geometry)
    shifted = Geometry(info.geometry.voxel_size, tuple(o + 500.0 for o in info.geometry.origin))
    pc.write_volume(folder / "Remove1.nrrd", np.ones(base.shape, np.uint8), shifted)
    seen = len(notification_manager.records)

    assert widget.select_patch(name)  # opens, without the masks that do not fit
    text = widget.status.text()
    assert "Add1.nrrd: shape x,y,z=(8, 8, 8) differs" in text
    assert "Remove1.nrrd: origin/spacing" in text and "differ from its patch's" in text
    assert any("Add1.nrrd" in str(n.message) for n in notification_manager.records[seen:])
    assert not widget.layer("add").data.any() and not widget.layer("remove").data.any()

    widget.merge()  # merge_corrections refuses the folder: a message again
    qtbot.waitUntil(lambda: not widget.busy, timeout=30000)
    assert widget.merge_report is None
    assert widget.status.text().startswith("Not merged: ")
    assert not (tmp_path / "train" / "labelsTr").exists()

    assert not widget.open_folder(tmp_path / "nowhere")
    assert "labels folder not found" in widget.status.text()


def test_readers_give_scale_translate_and_layer_type(extraction, tmp_path):
    record = _record(extraction, pc.io.load_manifest(extraction)[3]["name"])
    size, origin = record["voxel_size_xyz"][::-1], record["origin_xyz"][::-1]

    data, kwargs, kind = layer_data(extraction / record["label"])
    assert kind == "labels" and data.shape == (96, 96, 96)
    assert kwargs["scale"] == pytest.approx(size) and kwargs["translate"] == pytest.approx(origin)
    assert layer_data(extraction / record["image"])[2] == "image"

    geometry = Geometry((2.0, 3.0, 4.0), (10.0, 20.0, 30.0))
    volume = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    for suffix in (".mrc", ".nii.gz", ".nrrd"):
        path = tmp_path / f"volume{suffix}"
        pc.write_volume(path, volume, geometry)
        reader = get_reader(str(path))
        assert reader is not None
        [(data, kwargs, kind)] = reader(str(path))
        np.testing.assert_array_equal(data, volume)
        assert kind == "image"
        assert kwargs["scale"] == pytest.approx((2.0, 3.0, 4.0))
        assert kwargs["translate"] == pytest.approx((10.0, 20.0, 30.0))
    (tmp_path / "notes.txt").write_text("x")
    assert get_reader(str(tmp_path / "notes.txt")) is None

    # Through napari and the installed manifest, as a user opens a file.
    assert "patch_corrections" in {e.name for e in entry_points(group="napari.manifest")}
    plugins = npe2.PluginManager.instance()
    plugins.discover(include_npe1=False)  # napari's window does this on start
    assert plugins.get_manifest("patch_corrections").display_name == "Patch corrections"
    viewer = ViewerModel()
    [layer] = viewer.open(str(extraction / record["label"]), plugin="patch_corrections")
    assert layer.__class__.__name__ == "Labels"
    assert tuple(layer.scale) == pytest.approx(size)
    assert tuple(layer.translate) == pytest.approx(origin)


def test_an_ome_zarr_opens_lazily_as_a_multiscale_layer_with_its_geometry(tmp_path):
    """A copick or Data Portal tomogram opens as all its scale levels, read only where
    napari looks; a binary segmentation written by the package opens as labels."""
    zarr = pytest.importorskip("zarr")
    volume = np.random.default_rng(0).normal(size=(32, 48, 64)).astype(np.float32)
    group = zarr.open_group(str(tmp_path / "tomo.zarr"), mode="w")
    make = getattr(group, "create_array", None) or group.create_dataset  # zarr 3, zarr 2
    datasets = []
    for level in range(3):
        step = 2**level
        data = volume[::step, ::step, ::step]
        make(str(level), shape=data.shape, chunks=(16,) * 3, dtype=data.dtype)[...] = data
        transforms = [
            {"type": "scale", "scale": [10.0 * step] * 3},
            {"type": "translation", "translation": [5.0, 6.0, 7.0]},
        ]
        datasets.append({"path": str(level), "coordinateTransformations": transforms})
    axes = [{"name": n, "type": "space", "unit": "angstrom"} for n in "zyx"]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": datasets}]

    reader = get_reader(str(tmp_path / "tomo.zarr"))
    assert reader is not None
    [(levels, kwargs, kind)] = reader(str(tmp_path / "tomo.zarr"))
    assert kind == "image" and kwargs["multiscale"]
    assert [level.shape for level in levels] == [(32, 48, 64), (16, 24, 32), (8, 12, 16)]
    assert not isinstance(levels[0], np.ndarray)  # not read whole
    np.testing.assert_array_equal(np.asarray(levels[1][3]), volume[6, ::2, ::2])
    assert kwargs["scale"] == pytest.approx((10.0,) * 3)
    assert kwargs["translate"] == pytest.approx((5.0, 6.0, 7.0))
    # One level named inside the image is one plain layer at that level's voxel size.
    [(level, kwargs, _)] = get_reader(str(tmp_path / "tomo.zarr" / "1"))(
        str(tmp_path / "tomo.zarr" / "1")
    )
    assert level.shape == (16, 24, 32) and kwargs["scale"] == pytest.approx((20.0,) * 3)

    seg = tmp_path / "membrane.zarr"
    pc.write_volume(seg, (volume > 1).astype(np.uint8), Geometry((10.0,) * 3, (0.0,) * 3))
    plugins = npe2.PluginManager.instance()
    plugins.discover(include_npe1=False)
    viewer = ViewerModel()
    [image] = viewer.open(str(tmp_path / "tomo.zarr"), plugin="patch_corrections")
    [labels] = viewer.open(str(seg), plugin="patch_corrections")
    assert image.multiscale and tuple(image.translate) == pytest.approx((5.0, 6.0, 7.0))
    assert labels.__class__.__name__ == "Labels" and not labels.multiscale
    np.testing.assert_array_equal(np.asarray(labels.data), volume > 1)
    (tmp_path / "empty.zarr").mkdir()
    assert get_reader(str(tmp_path / "empty.zarr")) is None  # no Zarr metadata: not ours


def test_the_widget_docks_in_a_napari_window(napari_window, extraction, tmp_path):
    widget = CorrectionsWidget(napari_window)
    napari_window.window.add_dock_widget(widget, name="Patch corrections")
    widget.corrections_edit.setText(str(tmp_path / "corrections"))
    assert widget.open_folder(extraction)
    assert widget.select_patch(widget.patches[0].name)
    assert napari_window.layers.selection.active is widget.layer("add")
    assert {"Add", "Remove", "Ignore", "merged preview"} <= {x.name for x in napari_window.layers}
    assert widget.isVisibleTo(napari_window.window._qt_window)


def test_a_whole_round_in_a_napari_window(napari_window, extraction, tmp_path, qtbot, monkeypatch):
    from patch_corrections.napari_plugin import _state

    monkeypatch.setattr(_state, "PATCH_SIZE", 32)  # crops of 32³ rather than the patches' 96³
    shutil.copytree(extraction, tmp_path / "patches")
    widget = CorrectionsWidget(napari_window)
    napari_window.window.add_dock_widget(widget, name="Patch corrections")
    assert widget.open_folder(tmp_path / "patches")
    name = widget.patches[1].name
    assert widget.select_patch(name)
    base, _ = pc.read_volume(tmp_path / "patches" / _record(extraction, name)["label"])
    add, remove = _strokes(base)
    widget.layer("add").data = add  # painted
    widget.layer("remove").data = remove
    folder = tmp_path / "corrections" / name
    assert widget.save() == [folder / "Remove1.nrrd", folder / "Add1.nrrd"]
    widget.merge()
    qtbot.waitUntil(lambda: not widget.busy, timeout=30000)
    assert [r["name"] for r in widget.merge_report.rows] == [name], widget.status.text()
    widget.checkpoint_edit.setText(str(SAMPLE / "starting_model.pt"))
    widget.steps_box.setValue(2)
    widget.retrain()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60000)
    assert widget.retrain_report is not None, widget.status.text()
    assert widget.retrain_report.last == tmp_path / "model" / "last.pt"
    if os.environ.get("QT_QPA_PLATFORM") != "offscreen":  # X draws the canvas; offscreen not
        napari_window.window.show()
        qtbot.wait(200)
        shot = np.asarray(napari_window.screenshot(canvas_only=True, flash=False))[..., :3]
        assert shot.std() > 10  # the patch and its layers, not a black canvas


def test_the_package_does_not_import_napari(tmp_path):
    """The plugin is a caller: importing the package and its workflows never pulls napari."""
    import subprocess
    import sys

    code = "import sys, patch_corrections, patch_corrections.cli; print('napari' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_extract_at_clicked_points_and_at_loaded_centres(qtbot, tmp_path, extraction):
    widget = CorrectionsWidget(ViewerModel())
    qtbot.addWidget(widget)
    tomogram = SAMPLE / "tomogram.mrc"
    geometry = pc.read_info(tomogram).geometry
    folder = tmp_path / "patches"
    widget.folder_edit.setText(str(folder))
    widget.tomogram_edit.setText(str(tomogram))
    widget.segmentation_edit.setText(str(SAMPLE / "prediction.mrc"))
    assert widget.extract_at_points() is None  # no points layer yet: a message
    assert "points layer" in widget.status.text()

    # A point clicked on the tomogram's layer lies in its world (Å) coordinates.
    clicked = widget.viewer.add_points(
        [[35, 83, 104]], scale=geometry.voxel_size, translate=geometry.origin
    )
    widget.viewer.layers.selection.active = clicked
    assert widget.extract_at_points() is not None
    qtbot.waitUntil(lambda: not widget.busy, timeout=30000)
    report = widget.extract_report
    assert report is not None, widget.status.text()
    assert [p.centre_xyz for p in report.patches] == [(104, 83, 35)]
    assert widget.folder == folder and widget.patch_list.count() == 1
    assert "Cut 1 patch(es)" in widget.status.text()

    # suggest's (or any) centres file, as a points layer on the tomogram: the same patches
    # as extract_patches --centres cuts (the folder's size, 160, is kept).
    layer = widget.load_centres(SAMPLE / "centres.csv")
    assert layer.name == "centres" and len(layer.data) == 4
    assert tuple(layer.scale) == pytest.approx(geometry.voxel_size)
    widget.extract_at_points()
    qtbot.waitUntil(lambda: not widget.busy, timeout=30000)
    cut = {p.centre_xyz for p in widget.extract_report.patches}
    expected = {tuple(r["centre_xyz"]) for r in pc.io.load_manifest(extraction)}
    # (104, 83, 35) was cut above: a centre already extracted is skipped, as the CLI does.
    assert cut == expected - {(104, 83, 35)} and widget.patch_list.count() == 4
    assert {r["size_xyz"][0] for r in pc.io.load_manifest(folder)} == {160}

    assert widget.load_centres(tmp_path / "missing.csv") is None
    assert "centres file not found" in widget.status.text()


def test_retrain_fine_tunes_on_the_merged_patches(qtbot, tmp_path, monkeypatch):
    from patch_corrections.napari_plugin import _state

    monkeypatch.setattr(_state, "PATCH_SIZE", 32)  # crops of 32³ rather than the patches' 96³
    folder = tmp_path / "patches"
    pc.extract_patches(
        SAMPLE / "tomogram.mrc",
        SAMPLE / "prediction.mrc",
        folder,
        SAMPLE / "centres.csv",
        settings=pc.ExtractSettings(patch_size=96),
    )
    widget = CorrectionsWidget(ViewerModel())
    qtbot.addWidget(widget)
    assert widget.open_folder(folder)
    assert widget.tomogram_edit.text() == str(SAMPLE / "tomogram.mrc")  # from the manifest
    widget.retrain()  # nothing merged yet: the workflow's one line, no traceback
    qtbot.waitUntil(lambda: not widget.busy, timeout=30000)
    assert widget.retrain_report is None
    assert widget.status.text().startswith("Not retrained: ")

    widget.corrections_edit.setText(str(SAMPLE / "corrections"))
    widget.merge()
    qtbot.waitUntil(lambda: not widget.busy, timeout=30000)
    assert widget.merge_report is not None, widget.status.text()
    widget.checkpoint_edit.setText(str(SAMPLE / "starting_model.pt"))
    widget.steps_box.setValue(2)
    widget.retrain()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60000)
    report = widget.retrain_report
    assert report is not None, widget.status.text()
    assert report.step == 2 and report.last == tmp_path / "model" / "last.pt"
    assert report.last.exists() and "Retrained 2 steps" in widget.status.text()
