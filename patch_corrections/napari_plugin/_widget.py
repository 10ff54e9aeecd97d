"""The "Patch corrections" dock widget: one correction round inside napari.

Cut patches at the points of a points layer (clicked, or ``suggest``'s centres loaded
into one), open an extraction folder (``extract_patches`` output), pick a patch, paint
Add / Remove / Ignore, watch the merged labels update, save the masks where
``merge_corrections`` looks for them, merge, and retrain, all through the same functions
the command line calls, the long ones in a worker thread. Every layer it opens carries
its volume's voxel size and origin, so patches overlay on the full tomogram.

This module wires the controls to what they do. The controls are laid out in
:mod:`._layout`; the patch being painted, and what it is saved and previewed by, is
:mod:`._state` (no Qt); its napari layers are made in :mod:`._layers`; workflows run in
:mod:`._worker`'s thread.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFileDialog, QListWidgetItem

from ..constants import CORRECTION_KINDS
from ..errors import InputError
from ..io.centres import read_centres
from ..io.names import RoundFolders
from ..io.patch_folders import LabelPatch, find_label_patches
from ..workflows import (
    ExtractReport,
    MergeReport,
    MergeSettings,
    RetrainReport,
    RetrainSettings,
    extract_patches,
    merge_corrections,
    retrain,
)
from ._layers import add_centres, add_patch_layers, points_layer, remove_layers
from ._layout import CorrectionsPanel
from ._state import (
    OpenPatch,
    corrected_names,
    crop_size,
    extract_settings,
    patch_line,
    point_centres,
    tomogram_geometry,
)
from ._worker import WorkflowRunner

_PREVIEW_DELAY_MS = 150
"""Strokes within this time are merged into one preview update."""
_NAME_ROLE = 256
"""Qt.UserRole: where a patch list item keeps its patch's name."""


class CorrectionsWidget(CorrectionsPanel):
    """Open an extraction folder, paint corrections on its patches, save and merge them.

    Parameters
    ----------
    napari_viewer
        The viewer the layers go into (napari passes it).
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.folder: Path | None = None
        self.patches: list[LabelPatch] = []
        self.current: OpenPatch | None = None
        self.merge_report: MergeReport | None = None
        self.extract_report: ExtractReport | None = None
        self.retrain_report: RetrainReport | None = None
        self._layers: dict[str, object] = {}
        self._runner = WorkflowRunner(self.progress, self.status, self._enable_actions)
        self._preview_timer = QTimer(self)
        self._preview_timer.setSingleShot(True)
        self._preview_timer.setInterval(_PREVIEW_DELAY_MS)
        self._connect()
        self._enable_actions()

    def _connect(self) -> None:
        self.browse_button.clicked.connect(self._browse)
        self.load_button.clicked.connect(lambda: self.open_folder(self.folder_edit.text()))
        self.folder_edit.returnPressed.connect(self.load_button.click)
        self.centres_button.clicked.connect(self._browse_centres)
        self.extract_button.clicked.connect(self.extract_at_points)
        self.patch_list.currentItemChanged.connect(self._on_patch_chosen)
        self.save_button.clicked.connect(self.save)
        self.merge_button.clicked.connect(self.merge)
        self.retrain_button.clicked.connect(self.retrain)
        self._preview_timer.timeout.connect(self.update_preview)

    @property
    def busy(self) -> bool:
        """A workflow runs in the worker thread (one at a time)."""
        return self._runner.busy

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Extraction folder")
        if folder:
            self.folder_edit.setText(folder)
            self.open_folder(folder)

    def _browse_centres(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Centres file")
        if path:
            self.load_centres(path)

    def _enable_actions(self) -> None:
        self.save_button.setEnabled(self.current is not None and not self.busy)
        self.merge_button.setEnabled(self.folder is not None and not self.busy)
        self.extract_button.setEnabled(not self.busy)
        self.retrain_button.setEnabled(self.folder is not None and not self.busy)

    def show_message(self, text: str, *, problem: bool = False) -> None:
        """Show ``text`` under the widget and as a napari notification."""
        self.status.setText(text)
        (show_warning if problem else show_info)(text)

    def _round(self) -> RoundFolders:
        if self.folder is None:
            raise InputError("open an extraction folder first")
        return RoundFolders.beside(self.folder)

    @property
    def corrections_dir(self) -> Path:
        """Where masks are saved and merged from: the field, else the round's
        ``corrections/`` beside the extraction folder."""
        text = self.corrections_edit.text().strip()
        return Path(text) if text else self._round().corrections

    @property
    def out_dir(self) -> Path:
        """Where merging writes training pairs: the field, else the round's ``train/``."""
        text = self.out_edit.text().strip()
        return Path(text) if text else self._round().train

    @property
    def model_dir(self) -> Path:
        """Where Retrain writes its run: the round's ``model/``."""
        return self._round().model

    def open_folder(self, folder: str | Path) -> bool:
        """List the patches of an extraction folder; ``False`` (and a message) if refused."""
        try:
            patches = find_label_patches(Path(folder))
            if not patches:
                raise InputError(f"{folder}: no label patches found")
        except InputError as exc:
            self.show_message(str(exc), problem=True)
            return False
        if not self._keep_strokes():
            return False
        self._close_patch()
        self.folder = Path(folder)
        self.folder_edit.setText(str(folder))
        self.patches = patches
        record = patches[0].record
        if record is not None:
            for edit, recorded in (
                (self.tomogram_edit, record.tomogram),
                (self.segmentation_edit, record.segmentation),
            ):
                if not edit.text().strip() and recorded:
                    edit.setText(recorded)
        self.refresh_list()
        self._enable_actions()
        self.show_message(f"{len(patches)} patches in {folder}; choose one to paint.")
        return True

    def refresh_list(self) -> None:
        """Redraw the patch list: name, centre ``x, y, z`` and whether it is corrected."""
        try:
            corrected = corrected_names(self.corrections_dir)
        except InputError as exc:
            corrected = set()
            self.show_message(str(exc), problem=True)
        chosen = self.current.patch.name if self.current else None
        self.patch_list.blockSignals(True)
        self.patch_list.clear()
        for patch in self.patches:
            item = QListWidgetItem(patch_line(patch, patch.name in corrected))
            item.setData(_NAME_ROLE, patch.name)
            self.patch_list.addItem(item)
            if patch.name == chosen:
                self.patch_list.setCurrentItem(item)
        self.patch_list.blockSignals(False)

    def _on_patch_chosen(self, item, _previous=None) -> None:
        if item is not None:
            self.select_patch(item.data(_NAME_ROLE))

    def select_patch(self, name: str) -> bool:
        """Open patch ``name``: image, labels, preview and the Add / Remove / Ignore layers,
        preloaded with the masks saved for it, once the open patch's new strokes are saved.
        ``False`` (and a message) if refused."""
        patch = next((p for p in self.patches if p.name == name), None)
        if patch is None:
            self.show_message(f"{name}: no such patch in {self.folder}", problem=True)
            return False
        if not self._keep_strokes():
            return False
        try:
            opened, problems = OpenPatch.read(patch, self.corrections_dir)
        except InputError as exc:
            self.show_message(str(exc), problem=True)
            return False
        self._close_patch()
        self.current = opened
        self._layers, unread = add_patch_layers(self.viewer, opened, self._schedule_preview)
        for problem in unread:
            self.show_message(problem, problem=True)
        self.update_preview()
        self._enable_actions()
        if problems:
            self.show_message(" ".join(problems), problem=True)
        else:
            self.status.setText(opened.opened_line())
        return True

    def _keep_strokes(self) -> bool:
        """Save the open patch's strokes that no saved mask holds, before the patch is
        closed or the folder merged; ``False`` (the message says why) if they could not be."""
        if self.current is None:
            return True
        painted = {kind: self.painted(kind) for kind in CORRECTION_KINDS}
        if self.current.unsaved(painted):
            self.save()
        return not self.current.unsaved(painted)

    def _close_patch(self) -> None:
        remove_layers(self.viewer, self._layers)
        self._layers = {}
        self.current = None
        self._enable_actions()

    def layer(self, kind: str):
        """The open patch's layer of ``kind``: ``add``, ``remove``, ``ignore``, ``image``,
        ``labels`` or ``preview``."""
        return self._layers[kind]

    def painted(self, kind: str) -> np.ndarray:
        """The voxels ``(z, y, x)`` marked in the ``kind`` layer (any non-zero label)."""
        return self.current.marked(self._layers[kind].data)

    def _schedule_preview(self, _event=None) -> None:
        self._preview_timer.start()

    def update_preview(self) -> None:
        """Recompute the merged labels from the painted layers, as ``merge_corrections``
        will: Remove, then Add, then Ignore, then the border band and any padding."""
        if self.current is None:
            return
        painted = {kind: self.painted(kind) for kind in CORRECTION_KINDS}
        self._layers["preview"].data = self.current.preview(painted)

    def save(self) -> list[Path]:
        """Write each painted layer that holds new voxels as ``<corrections>/<patch>/
        <Kind><n>.nrrd`` (n: the next free number) with the patch's geometry."""
        if self.current is None:
            self.show_message("Choose a patch first.", problem=True)
            return []
        painted = {kind: self.painted(kind) for kind in CORRECTION_KINDS}
        result = self.current.save(self.corrections_dir, painted)
        if result.failure is not None:
            self.show_message(f"Not saved: {result.failure}", problem=True)
            return result.written
        self.refresh_list()
        if result.written:
            names = ", ".join(p.name for p in result.written)
            self.show_message(" ".join([f"Saved {names} in {result.folder}.", *result.notes]))
        else:
            self.show_message(" ".join(["Nothing new to save.", *result.notes]))
        return result.written

    def merge(self):
        """Save the open patch's new strokes, then run ``merge_corrections`` on the folder in
        a worker thread; returns the worker (``None`` if refused). The report lands in
        ``merge_report``."""
        if self.folder is None:
            self.show_message("Open an extraction folder first.", problem=True)
            return None
        if not self._keep_strokes():
            return None
        try:
            settings = MergeSettings(overwrite=self.overwrite_box.isChecked())
            args = (self.folder, self.corrections_dir, self.out_dir)
        except InputError as exc:
            self.show_message(str(exc), problem=True)
            return None
        self.merge_report = None
        status = f"Merging into {self.out_dir}…"
        return self._runner.start(
            merge_corrections, args, {"settings": settings}, self._on_merged, status
        )

    def _on_merged(self, outcome: MergeReport | str) -> None:
        if isinstance(outcome, str):
            self.show_message(f"Not merged: {outcome}", problem=True)
            return
        report = self.merge_report = outcome
        added = sum(r["added"] for r in report.rows)
        removed = sum(r["removed"] for r in report.rows)
        text = (
            f"Merged {len(report.rows)} patch(es) into {report.out_dir}: {added} voxel(s) "
            f"added, {removed} removed."
        )
        self._show_report(text, report.warnings)

    def load_centres(self, path: str | Path):
        """Read a centres file (``suggest``'s, or any ``extract_patches`` reads, in voxels)
        into a points layer on the tomogram's grid; the layer, or ``None`` if refused."""
        try:
            centres = read_centres(Path(path))
            _, geometry, warned = tomogram_geometry(self.tomogram_edit.text())
        except InputError as exc:
            self.show_message(str(exc), problem=True)
            return None
        layer = add_centres(self.viewer, centres, geometry)
        text = f"{len(centres)} centre(s) from {path}: Extract at points cuts them."
        self.show_message(" ".join([text, *warned]), problem=bool(warned))
        return layer

    def extract_at_points(self):
        """Cut patches with ``extract_patches`` into the Patches folder at the points of the
        selected points layer (else the last one), in a worker thread; returns the worker
        (``None`` if refused). A point's world position becomes the tomogram's voxel index;
        patches keep the folder's size and border (160 and 16 for a new folder)."""
        layer = points_layer(self.viewer)
        try:
            if layer is None or not len(layer.data):
                raise InputError("add a points layer and click the centres (or Load centres…)")
            folder_text = self.folder_edit.text().strip()
            if not folder_text:
                raise InputError("give the folder to cut patches into (Patches field)")
            # A header without voxel size: the report's warnings say so once patches are cut.
            tomogram, geometry, _ = tomogram_geometry(self.tomogram_edit.text())
            segmentation = self.segmentation_edit.text().strip()
            if not segmentation:
                raise InputError("give the tomogram's segmentation (Segmentation field)")
            world = [layer.data_to_world(p)[-3:] for p in np.asarray(layer.data, dtype=float)]
            points = point_centres(np.asarray(world, dtype=float), geometry)
            settings = extract_settings(self.patches)
        except InputError as exc:
            self.show_message(str(exc), problem=True)
            return None
        self.extract_report = None
        args = (tomogram, Path(segmentation), Path(folder_text))
        kwargs = {"points": points, "settings": settings}
        status = f"Cutting {len(points)} patch(es)…"
        return self._runner.start(extract_patches, args, kwargs, self._on_extracted, status)

    def _on_extracted(self, outcome: ExtractReport | str) -> None:
        if isinstance(outcome, str):
            self.show_message(f"Not extracted: {outcome}", problem=True)
            return
        self.extract_report = outcome
        self.open_folder(outcome.out_dir)
        text = f"Cut {len(outcome.patches)} patch(es) into {outcome.out_dir}."
        self._show_report(text, outcome.warnings)

    def retrain(self):
        """Fine-tune the Checkpoint field's weights on the merged patches (``retrain``'s
        defaults, crops no larger than the patches) into ``model_dir``, in a worker thread;
        returns the worker (``None`` if refused)."""
        try:
            checkpoint = self.checkpoint_edit.text().strip()
            settings = RetrainSettings(
                iterations=self.steps_box.value(),
                crop_size=crop_size(self.patches),
                overwrite=self.overwrite_box.isChecked(),
            )
            args = (self.out_dir, self.model_dir, Path(checkpoint) if checkpoint else None)
        except InputError as exc:
            self.show_message(str(exc), problem=True)
            return None
        self.retrain_report = None
        status = f"Retraining into {self.model_dir}…"
        return self._runner.start(
            retrain, args, {"settings": settings}, self._on_retrained, status
        )

    def _on_retrained(self, outcome: RetrainReport | str) -> None:
        if isinstance(outcome, str):
            self.show_message(f"Not retrained: {outcome}", problem=True)
            return
        self.retrain_report = outcome
        loss = outcome.final.get("train_loss")
        text = f"Retrained {outcome.step} steps into {outcome.last}"
        text += f" (train loss {loss:.4f})." if loss is not None else "."
        self.show_message(text)

    def _show_report(self, text: str, warnings: list[str]) -> None:
        if warnings:
            text += " Warnings: " + " ".join(warnings)
        self.show_message(text, problem=bool(warnings))
