"""Draw docs/napari_widget.png: the "Patch corrections" widget on the sample data.

Cuts the sample patches (96³) into a temporary folder with ``extract_patches``, opens
them in the widget, loads ``tomogram_patch000`` with the sample's painted corrections and
saves a screenshot of the whole napari window. Needs the ``napari`` extra and OpenGL: on a
machine without a display, run it under Xvfb::

    xvfb-run -a python docs/napari_screenshot.py [--widget-only]

(Qt's offscreen platform draws the window; Xvfb only lends it OpenGL.) ``--widget-only``
saves the dock widget alone.
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
        shot = viewer.screenshot(canvas_only=False, flash=False)
        viewer.close()
    import matplotlib.image

    # Quantised to 64 colours so the PNG stays small.
    rgb = (np.asarray(shot)[..., :3] // 4 * 4).astype(np.uint8)
    matplotlib.image.imsave(out, rgb)
    print(f"{out}: {out.stat().st_size // 1024} KB, {rgb.shape[1]}x{rgb.shape[0]}")


if __name__ == "__main__":
    import sys

    # --widget-only: the dock widget alone, for machines whose OpenGL draws a black canvas
    # (Mesa's software renderer under Xvfb did).
    main(widget_only="--widget-only" in sys.argv[1:])
