"""Draw docs/napari_widget.png: the "Patch corrections" widget on the sample data.

Cuts the sample patches (96³) into a temporary folder with ``extract_patches``, opens
them in the widget, loads ``tomogram_patch000`` with the sample's painted corrections and
saves a screenshot of the whole napari window. Needs the ``napari`` extra and OpenGL: on a
machine without a display, run it under Xvfb with Mesa's software OpenGL (Debian:
``xvfb xauth libgl1-mesa-dri`` and the xcb libraries Qt needs, see the README)::

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/napari_screenshot.py [--widget-only]

Under a display Qt draws through X (xcb); without one, through its offscreen platform,
whose canvas stays black. ``--widget-only`` saves the dock widget alone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

import patch_corrections as pc

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data"
PATCH = "tomogram_patch000"


def main(out: Path = ROOT / "docs" / "napari_widget.png", widget_only: bool = False) -> None:
    if not os.environ.get("DISPLAY"):  # Qt's offscreen platform draws a black canvas
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import napari
        from qtpy.QtWidgets import QApplication

        from patch_corrections.napari_plugin import CorrectionsWidget

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pc.extract_patches(
            SAMPLE / "tomogram.mrc",
            SAMPLE / "prediction.mrc",
            work / "patches",
            SAMPLE / "centres.csv",
            settings=pc.ExtractSettings(patch_size=96),
        )
        shutil.copytree(SAMPLE / "corrections", work / "corrections")
        viewer = napari.Viewer(title="patch_corrections", show=True)
        viewer.window.resize(1400, 820)
        widget = CorrectionsWidget(viewer)
        viewer.window.add_dock_widget(widget, name="Patch corrections", area="right")
        widget.open_folder(work / "patches")
        widget.patch_list.setCurrentRow(0)  # as a click would: opens PATCH
        assert widget.current is not None and widget.current.patch.name == PATCH
        widget.layer("labels").visible = False
        for _ in range(20):
            QApplication.processEvents()
        if widget_only:
            widget.grab().save(str(out))
            viewer.close()
            print(f"{out}: {out.stat().st_size // 1024} KB (the widget alone)")
            return
        from napari._qt.dialogs.qt_notification import NapariQtNotification

        # napari's own deprecation notices would lie over the canvas as toasts.
        for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
            toast.hide()
        shot = viewer.screenshot(canvas_only=False, flash=False)
        viewer.close()
    import matplotlib.image

    # Quantised to 64 colours so the PNG stays small.
    rgb = (np.asarray(shot)[..., :3] // 4 * 4).astype(np.uint8)
    matplotlib.image.imsave(out, rgb)
    print(f"{out}: {out.stat().st_size // 1024} KB, {rgb.shape[1]}x{rgb.shape[0]}")


if __name__ == "__main__":
    import sys

    # --widget-only: the dock widget alone, for machines whose OpenGL draws a black canvas.
    main(widget_only="--widget-only" in sys.argv[1:])
