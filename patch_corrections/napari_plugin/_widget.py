"""The "Patch corrections" dock widget: one correction round inside napari.

Cut patches at the points of a points layer (clicked, or ``suggest``'s centres loaded
into one), open an extraction folder (``extract_patches`` output), pick a patch, paint
Add / Remove / Ignore, watch the merged labels update, save the masks where
``merge_corrections`` looks for them, merge, and retrain, all through the same functions
the command line calls, the long ones in a worker thread. Every layer it opens carries
its volume's voxel size and origin, so patches overlay on the full tomogram.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..constants import BORDER_WIDTH, CORRECTION_KINDS, IGNORE, MEMBRANE, PATCH_SIZE
from ..corrections import merge_labels, union_mask
from ..errors import InputError
from ..io.centres import read_centres
from ..io.folders import LabelPatch, find_label_patches, scan_corrections
from ..io.geometry import Geometry
from ..io.manifest import as_xyz, padding_zyx
from ..io.volumes import read_info, read_volume, write_volume
from ..workflows import (
    ExtractReport,
    ExtractSettings,
    Listener,
    MergeReport,
    MergeSettings,
    Progress,
    RetrainReport,
    RetrainSettings,
    extract_patches,
    merge_corrections,
    retrain,
)
from ..workflows.merging import geometry_mismatch
from ._reader import geometry_kwargs

KIND_NAMES = {"add": "Add", "remove": "Remove", "ignore": "Ignore"}
"""Layer name and file prefix of each correction kind (MemBrain-seg's file names)."""
KIND_COLOURS = {"add": "lime", "remove": "magenta", "ignore": "yellow"}
MASK_FORMAT = ".nrrd"
"""Masks are saved as NRRD: MITK reads them, and merging checks their geometry."""
PREVIEW_NAME = "merged preview"
CENTRES_NAME = "centres"
"""The points layer that ``load_centres`` makes."""
_LABEL_COLOURS = {None: "transparent", 0: "transparent", MEMBRANE: "cyan", IGNORE: "gray"}
_PREVIEW_COLOURS = {None: "transparent", 0: "transparent", MEMBRANE: "orange", IGNORE: "gray"}
_PREVIEW_DELAY_MS = 150
"""Strokes within this time are merged into one preview update."""


@dataclass
class OpenPatch:
    """The patch being painted: its files, labels, geometry and what is saved for it."""

    patch: LabelPatch
    base: np.ndarray
    """The network's label patch ``(z, y, x)``."""
    geometry: Geometry
    border: int
    padding: tuple[tuple[int, int], ...] | None
    saved: dict[str, np.ndarray]
    """Per kind, the union ``(z, y, x)`` of the masks already saved for the patch."""


class _Relay(QObject):
    """Carries a workflow's progress from its worker thread to the widget's thread."""

    progress = Signal(int, int)


class CorrectionsWidget(QWidget):
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
        self.busy = False
        """A workflow runs in the worker thread (one at a time)."""
        self._layers: dict[str, object] = {}
        self._relay = _Relay()
        self._relay.progress.connect(self._on_progress)
        self._preview_timer = QTimer(self)
        self._preview_timer.setSingleShot(True)
        self._preview_timer.setInterval(_PREVIEW_DELAY_MS)
        self._preview_timer.timeout.connect(self.update_preview)
        self._build()

    # ----------------------------------------------------------------- layout
    def _build(self) -> None:
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("extract_patches output folder")
        self.corrections_edit = QLineEdit()
        self.corrections_edit.setPlaceholderText("default: corrections/ beside it")
        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText("default: train/ beside it")
        browse = QPushButton("Open…")
        browse.clicked.connect(self._browse)
        load = QPushButton("Load")
        load.clicked.connect(lambda: self.open_folder(self.folder_edit.text()))
        self.folder_edit.returnPressed.connect(load.click)

        paths = QGridLayout()
        paths.addWidget(QLabel("Patches"), 0, 0)
        paths.addWidget(self.folder_edit, 0, 1)
        buttons = QHBoxLayout()
        buttons.addWidget(browse)
        buttons.addWidget(load)
        paths.addLayout(buttons, 0, 2)
        paths.addWidget(QLabel("Corrections"), 1, 0)
        paths.addWidget(self.corrections_edit, 1, 1, 1, 2)
        paths.addWidget(QLabel("Merge into"), 2, 0)
        paths.addWidget(self.out_edit, 2, 1, 1, 2)

        self.tomogram_edit = QLineEdit()
        self.tomogram_edit.setPlaceholderText("tomogram to cut patches from (the manifest's)")
        self.segmentation_edit = QLineEdit()
        self.segmentation_edit.setPlaceholderText("its segmentation (the manifest's)")
        paths.addWidget(QLabel("Tomogram"), 3, 0)
        paths.addWidget(self.tomogram_edit, 3, 1, 1, 2)
        paths.addWidget(QLabel("Segmentation"), 4, 0)
        paths.addWidget(self.segmentation_edit, 4, 1, 1, 2)
        self.centres_button = QPushButton("Load centres…")
        self.centres_button.setToolTip(
            "A centres file (suggest's, or x, y, z rows) as a points layer on the tomogram"
        )
        self.centres_button.clicked.connect(self._browse_centres)
        self.extract_button = QPushButton("Extract at points")
        self.extract_button.setToolTip(
            "Cut patches of the tomogram at the points of the selected points layer into the "
            "Patches folder (added to it, as extract_patches does)"
        )
        self.extract_button.clicked.connect(self.extract_at_points)
        cutting = QHBoxLayout()
        cutting.addWidget(self.centres_button)
        cutting.addWidget(self.extract_button)

        self.patch_list = QListWidget()
        self.patch_list.currentItemChanged.connect(self._on_patch_chosen)

        self.save_button = QPushButton("Save masks")
        self.save_button.setToolTip(
            "Write the painted Add / Remove / Ignore layers as <corrections>/<patch>/"
            "Add<n>.nrrd etc., never overwriting"
        )
        self.save_button.clicked.connect(self.save)
        self.merge_button = QPushButton("Merge")
        self.merge_button.setToolTip("Run merge_corrections on every corrected patch")
        self.merge_button.clicked.connect(self.merge)
        self.overwrite_box = QCheckBox("replace an earlier merge")
        actions = QHBoxLayout()
        actions.addWidget(self.save_button)
        actions.addWidget(self.merge_button)
        actions.addWidget(self.overwrite_box)

        self.checkpoint_edit = QLineEdit()
        self.checkpoint_edit.setPlaceholderText("starting weights (.pt, MemBrain-seg .ckpt)")
        self.steps_box = QSpinBox()
        self.steps_box.setRange(1, 10_000_000)
        self.steps_box.setValue(300)
        self.steps_box.setToolTip("Fine-tuning steps")
        self.retrain_button = QPushButton("Retrain")
        self.retrain_button.setToolTip(
            "Fine-tune the starting weights on the merged patches into model/ beside the "
            "Patches folder (retrain's defaults; crops no larger than the patches)"
        )
        self.retrain_button.clicked.connect(self.retrain)
        training = QHBoxLayout()
        training.addWidget(self.checkpoint_edit)
        training.addWidget(self.steps_box)
        training.addWidget(self.retrain_button)

        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.status = QLabel("Open an extraction folder.")
        self.status.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.addLayout(paths)
        layout.addLayout(cutting)
        layout.addWidget(self.patch_list)
        layout.addLayout(actions)
        layout.addLayout(training)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        self._enable_actions()

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

    # ----------------------------------------------------------------- messages
    def show_message(self, text: str, *, problem: bool = False) -> None:
        """Show ``text`` under the widget and as a napari notification."""
        self.status.setText(text)
        (show_warning if problem else show_info)(text)

    # ----------------------------------------------------------------- folders
    @property
    def corrections_dir(self) -> Path:
        """Where masks are saved and merged from: the field, else ``corrections/`` beside
        the extraction folder."""
        text = self.corrections_edit.text().strip()
        if text:
            return Path(text)
        if self.folder is None:
            raise InputError("open an extraction folder first")
        return self.folder.parent / "corrections"

    @property
    def out_dir(self) -> Path:
        """Where merging writes training pairs: the field, else ``train/`` beside the
        extraction folder."""
        text = self.out_edit.text().strip()
        if text:
            return Path(text)
        if self.folder is None:
            raise InputError("open an extraction folder first")
        return self.folder.parent / "train"

    def open_folder(self, folder: str | Path) -> bool:
        """List the patches of an extraction folder; ``False`` (and a message) if refused."""
        try:
            patches = find_label_patches(Path(folder))
            if not patches:
                raise InputError(f"{folder}: no label patches found")
        except InputError as exc:
            self.show_message(str(exc), problem=True)
            return False
        self._close_patch()
        self.folder = Path(folder)
        self.folder_edit.setText(str(folder))
        self.patches = patches
        record = patches[0].record or {}
        fields = ((self.tomogram_edit, "tomogram"), (self.segmentation_edit, "segmentation"))
        for edit, key in fields:
            if not edit.text().strip() and record.get(key):
                edit.setText(str(record[key]))
        self.refresh_list()
        self._enable_actions()
        self.show_message(f"{len(patches)} patches in {folder}; choose one to paint.")
        return True

    def _corrected_names(self) -> set[str]:
        if not self.corrections_dir.is_dir():
            return set()
        return {
            name
            for name, entry in scan_corrections(self.corrections_dir).items()
            if any(entry.masks.values())
        }

    def refresh_list(self) -> None:
        """Redraw the patch list: name, centre ``x, y, z`` and whether it is corrected."""
        try:
            corrected = self._corrected_names()
        except InputError as exc:
            corrected = set()
            self.show_message(str(exc), problem=True)
        chosen = self.current.patch.name if self.current else None
        self.patch_list.blockSignals(True)
        self.patch_list.clear()
        for patch in self.patches:
            centre = (patch.record or {}).get("centre_xyz")
            where = f"  centre {', '.join(map(str, centre))}" if centre else ""
            mark = "  ✔ corrected" if patch.name in corrected else ""
            item = QListWidgetItem(f"{patch.name}{where}{mark}")
            item.setData(256, patch.name)  # Qt.UserRole
            self.patch_list.addItem(item)
            if patch.name == chosen:
                self.patch_list.setCurrentItem(item)
        self.patch_list.blockSignals(False)

    # ----------------------------------------------------------------- one patch
    def _on_patch_chosen(self, item, _previous=None) -> None:
        if item is not None:
            self.select_patch(item.data(256))

    def select_patch(self, name: str) -> bool:
        """Open patch ``name``: image, labels, preview and the Add / Remove / Ignore layers,
        preloaded with the masks saved for it. ``False`` (and a message) if refused."""
        patch = next((p for p in self.patches if p.name == name), None)
        if patch is None:
            self.show_message(f"{name}: no such patch in {self.folder}", problem=True)
            return False
        try:
            opened, problems = self._read_patch(patch)
        except InputError as exc:
            self.show_message(str(exc), problem=True)
            return False
        self._close_patch()
        self.current = opened
        self._add_layers(patch)
        self.update_preview()
        self._enable_actions()
        if problems:
            self.show_message(" ".join(problems), problem=True)
        else:
            saved = sum(int(m.any()) for m in opened.saved.values())
            self.status.setText(
                f"{name}: paint into Add, Remove and Ignore, then Save masks."
                + (f" Loaded the saved masks of {saved} kind(s)." if saved else "")
            )
        return True

    def _read_patch(self, patch: LabelPatch) -> tuple[OpenPatch, list[str]]:
        base, info = read_volume(patch.label)
        geometry = info.geometry or Geometry((1.0, 1.0, 1.0))
        record = patch.record or {}
        saved = {kind: np.zeros(base.shape, dtype=bool) for kind in CORRECTION_KINDS}
        problems: list[str] = []
        folders = scan_corrections(self.corrections_dir) if self.corrections_dir.is_dir() else {}
        entry = folders.get(patch.name)
        for kind, paths in (entry.masks if entry else {}).items():
            accepted = []
            for path in paths:
                problem = _mask_problem(path, info.shape, info.geometry)
                if problem:
                    problems.append(problem)
                else:
                    accepted.append(read_volume(path)[0])
            saved[kind] = union_mask(accepted, base.shape)
        opened = OpenPatch(
            patch=patch,
            base=base,
            geometry=geometry,
            border=int(record.get("border", BORDER_WIDTH)),
            padding=padding_zyx(record),
            saved=saved,
        )
        return opened, problems

    def _add_layers(self, patch: LabelPatch) -> None:
        assert self.current is not None
        place = geometry_kwargs(self.current.geometry)
        if patch.image is not None and patch.image.exists():
            try:
                image, _ = read_volume(patch.image)
                self._layers["image"] = self.viewer.add_image(
                    image, name=f"{patch.name} image", **place
                )
            except InputError as exc:
                self.show_message(str(exc), problem=True)
        self._layers["labels"] = self.viewer.add_labels(
            self.current.base,
            name=f"{patch.name} labels",
            colormap=DirectLabelColormap(color_dict=_LABEL_COLOURS),
            opacity=0.4,
            visible=False,
            **place,
        )
        self._layers["preview"] = self.viewer.add_labels(
            np.zeros_like(self.current.base, dtype=np.uint8),
            name=PREVIEW_NAME,
            colormap=DirectLabelColormap(color_dict=_PREVIEW_COLOURS),
            opacity=0.5,
            **place,
        )
        for kind in ("ignore", "remove", "add"):  # Add ends on top and selected
            layer = self.viewer.add_labels(
                self.current.saved[kind].astype(np.uint8),
                name=KIND_NAMES[kind],
                colormap=DirectLabelColormap(
                    color_dict={None: "transparent", 0: "transparent", 1: KIND_COLOURS[kind]}
                ),
                opacity=0.7,
                **place,
            )
            layer.events.paint.connect(self._schedule_preview)
            layer.events.data.connect(self._schedule_preview)
            self._layers[kind] = layer
        add = self._layers["add"]
        add.selected_label = 1
        add.brush_size = 5
        self.viewer.layers.selection.active = add
        centre = [s // 2 for s in self.current.base.shape]
        world = [o + c * v for o, c, v in zip(place["translate"], centre, place["scale"])]
        self.viewer.reset_view()
        ndim = self.viewer.dims.ndim  # the patch's axes are the viewer's last three
        self.viewer.dims.set_point(range(ndim - 3, ndim), world)

    def _close_patch(self) -> None:
        for layer in self._layers.values():
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self._layers = {}
        self.current = None
        self._enable_actions()

    def layer(self, kind: str):
        """The open patch's layer of ``kind``: ``add``, ``remove``, ``ignore``, ``image``,
        ``labels`` or ``preview``."""
        return self._layers[kind]

    def painted(self, kind: str) -> np.ndarray:
        """The voxels ``(z, y, x)`` marked in the ``kind`` layer (any non-zero label)."""
        return union_mask([np.asarray(self._layers[kind].data)], self.current.base.shape)

    # ----------------------------------------------------------------- preview
    def _schedule_preview(self, _event=None) -> None:
        self._preview_timer.start()

    def update_preview(self) -> None:
        """Recompute the merged labels from the painted layers, as ``merge_corrections``
        will: Remove, then Add, then Ignore, then the border band and any padding."""
        if self.current is None:
            return
        merged, counts = merge_labels(
            self.current.base,
            add=self.painted("add"),
            remove=self.painted("remove"),
            ignore=self.painted("ignore"),
            border=self.current.border,
            padding=self.current.padding,
        )
        self._layers["preview"].data = merged
        self._counts = counts

    # ----------------------------------------------------------------- save
    def save(self) -> list[Path]:
        """Write each painted layer that holds new voxels as ``<corrections>/<patch>/
        <Kind><n>.nrrd`` (n: the next free number) with the patch's geometry."""
        if self.current is None:
            self.show_message("Choose a patch first.", problem=True)
            return []
        opened = self.current
        folder = self.corrections_dir / opened.patch.name
        written: list[Path] = []
        notes: list[str] = []
        try:
            for kind in CORRECTION_KINDS:
                mask = self.painted(kind)
                erased = int(np.count_nonzero(opened.saved[kind] & ~mask))
                if erased:
                    notes.append(
                        f"{erased} voxel(s) erased from {KIND_NAMES[kind]} stay marked in the "
                        f"files saved before in {folder} (never overwritten: delete a file "
                        "there to drop its strokes)."
                    )
                if not (mask & ~opened.saved[kind]).any():
                    continue
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"{KIND_NAMES[kind]}{_next_number(folder, kind)}{MASK_FORMAT}"
                write_volume(path, mask.astype(np.uint8), opened.geometry)
                opened.saved[kind] = opened.saved[kind] | mask
                written.append(path)
        except (InputError, OSError) as exc:
            self.show_message(f"Not saved: {exc}", problem=True)
            return written
        self.refresh_list()
        if written:
            names = ", ".join(p.name for p in written)
            self.show_message(" ".join([f"Saved {names} in {folder}.", *notes]))
        else:
            self.show_message(" ".join(["Nothing new to save.", *notes]))
        return written

    # ----------------------------------------------------------------- merge
    def merge(self):
        """Run ``merge_corrections`` on the folder in a worker thread; returns the worker
        (``None`` if refused). The report lands in ``merge_report``."""
        if self.folder is None:
            self.show_message("Open an extraction folder first.", problem=True)
            return None
        try:
            settings = MergeSettings(overwrite=self.overwrite_box.isChecked())
            args = (self.folder, self.corrections_dir, self.out_dir)
        except InputError as exc:
            self.show_message(str(exc), problem=True)
            return None
        self.merge_report = None
        return self._run(merge_corrections, args, {"settings": settings}, self._on_merged,
                         f"Merging into {self.out_dir}…")  # fmt: skip

    # ----------------------------------------------------------------- extract
    def tomogram_geometry(self) -> tuple[Path, Geometry]:
        """The tomogram of the Tomogram field and its geometry."""
        text = self.tomogram_edit.text().strip()
        if not text:
            raise InputError("give the tomogram to cut patches from (Tomogram field)")
        info = read_info(Path(text))
        return Path(text), info.geometry or Geometry((1.0, 1.0, 1.0))

    def load_centres(self, path: str | Path):
        """Read a centres file (``suggest``'s, or any ``extract_patches`` reads, in voxels)
        into a points layer on the tomogram's grid; the layer, or ``None`` if refused."""
        try:
            centres = read_centres(Path(path))
            _, geometry = self.tomogram_geometry()
        except InputError as exc:
            self.show_message(str(exc), problem=True)
            return None
        zyx = np.array([c.xyz[::-1] for c in centres], dtype=float).reshape(-1, 3)
        layer = self.viewer.add_points(
            zyx, name=CENTRES_NAME, size=8, face_color="cyan", **geometry_kwargs(geometry)
        )
        self.viewer.layers.selection.active = layer
        self.show_message(f"{len(centres)} centre(s) from {path}: Extract at points cuts them.")
        return layer

    def points_layer(self):
        """The points to cut at: the selected layer if it is a points layer, else the last
        points layer added."""
        active = self.viewer.layers.selection.active
        if active is not None and active.__class__.__name__ == "Points":
            return active
        layers = [x for x in self.viewer.layers if x.__class__.__name__ == "Points"]
        return layers[-1] if layers else None

    def extract_at_points(self):
        """Cut patches at the points of :meth:`points_layer` with ``extract_patches`` into
        the Patches folder, in a worker thread; returns the worker (``None`` if refused).
        A point's world position becomes the tomogram's voxel index; patches keep the
        folder's size and border (160 and 16 for a new folder)."""
        layer = self.points_layer()
        try:
            if layer is None or not len(layer.data):
                raise InputError("add a points layer and click the centres (or Load centres…)")
            folder_text = self.folder_edit.text().strip()
            if not folder_text:
                raise InputError("give the folder to cut patches into (Patches field)")
            tomogram, geometry = self.tomogram_geometry()
            segmentation = self.segmentation_edit.text().strip()
            if not segmentation:
                raise InputError("give the tomogram's segmentation (Segmentation field)")
            points = []
            for point in np.asarray(layer.data, dtype=float):
                world = np.asarray(layer.data_to_world(point), dtype=float)[-3:]
                index = (world - np.array(geometry.origin)) / np.array(geometry.voxel_size)
                points.append(tuple(float(v) for v in np.round(index)[::-1]))  # x, y, z
            record = self.patches[0].record if self.patches else None
            size = (record or {}).get("size_xyz", [PATCH_SIZE])[0]
            border = (record or {}).get("border", BORDER_WIDTH)
            settings = ExtractSettings(patch_size=int(size), border=int(border))
        except InputError as exc:
            self.show_message(str(exc), problem=True)
            return None
        self.extract_report = None
        args = (tomogram, Path(segmentation), Path(folder_text))
        return self._run(extract_patches, args, {"points": points, "settings": settings},
                         self._on_extracted, f"Cutting {len(points)} patch(es)…")  # fmt: skip

    def _on_extracted(self, outcome: ExtractReport | str) -> None:
        if isinstance(outcome, str):
            self.show_message(f"Not extracted: {outcome}", problem=True)
            return
        self.extract_report = outcome
        self.open_folder(outcome.out_dir)
        text = f"Cut {len(outcome.patches)} patch(es) into {outcome.out_dir}."
        if outcome.warnings:
            text += " Warnings: " + " ".join(outcome.warnings)
        self.show_message(text, problem=bool(outcome.warnings))

    # ----------------------------------------------------------------- retrain
    @property
    def model_dir(self) -> Path:
        """Where Retrain writes its run: ``model/`` beside the extraction folder."""
        if self.folder is None:
            raise InputError("open an extraction folder first")
        return self.folder.parent / "model"

    def retrain(self):
        """Fine-tune the Checkpoint field's weights on the merged patches (``retrain``'s
        defaults, crops no larger than the patches) into ``model_dir``, in a worker thread;
        returns the worker (``None`` if refused)."""
        try:
            checkpoint = self.checkpoint_edit.text().strip()
            sizes = [min((p.record or {}).get("size_xyz", [PATCH_SIZE])) for p in self.patches]
            settings = RetrainSettings(
                iterations=self.steps_box.value(),
                crop_size=min([PATCH_SIZE, *sizes]),
                overwrite=self.overwrite_box.isChecked(),
            )
            args = (self.out_dir, self.model_dir, Path(checkpoint) if checkpoint else None)
        except InputError as exc:
            self.show_message(str(exc), problem=True)
            return None
        self.retrain_report = None
        return self._run(retrain, args, {"settings": settings}, self._on_retrained,
                         f"Retraining into {self.model_dir}…")  # fmt: skip

    def _on_retrained(self, outcome: RetrainReport | str) -> None:
        if isinstance(outcome, str):
            self.show_message(f"Not retrained: {outcome}", problem=True)
            return
        self.retrain_report = outcome
        loss = outcome.final.get("train_loss")
        text = f"Retrained {outcome.step} steps into {outcome.last}"
        text += f" (train loss {loss:.4f})." if loss is not None else "."
        self.show_message(text)

    # ----------------------------------------------------------------- worker
    def _run(self, function, args: tuple, kwargs: dict, on_done, status: str):
        """Run a workflow in a worker thread with the progress bar; ``on_done`` gets its
        report, or the one-line message of an input it refused."""
        listener = Listener(progress=self._relay_progress)
        worker = create_worker(
            _or_refusal,
            function,
            *args,
            **kwargs,
            listener=listener,
            _start_thread=False,
            _connect={
                "returned": on_done,
                "errored": self._on_failed,
                "finished": self._on_finished,
            },
        )
        self.busy = True
        self.progress.setRange(0, 0)
        self.progress.setVisible(True)
        self._enable_actions()
        self.status.setText(status)
        worker.start()
        return worker

    def _relay_progress(self, progress: Progress) -> None:
        # Called in the worker thread: a queued signal moves it to the widget's thread.
        self._relay.progress.emit(progress.done, progress.total)

    def _on_progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)

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
        if report.warnings:
            text += " Warnings: " + " ".join(report.warnings)
        self.show_message(text, problem=bool(report.warnings))

    def _on_failed(self, exc: Exception) -> None:
        # Not a refusal of the input but a defect: napari also keeps its traceback.
        self.status.setText(f"Failed: {type(exc).__name__}: {exc}")

    def _on_finished(self) -> None:
        self.busy = False
        self.progress.setVisible(False)
        self._enable_actions()


def _or_refusal(function, *args, **kwargs):
    """``function(*args, **kwargs)``, with a refused input returned as its one-line
    message: the worker's errors reach napari as tracebacks, a user's mistake must not."""
    try:
        return function(*args, **kwargs)
    except (InputError, OSError) as exc:
        return str(exc)


def _next_number(folder: Path, kind: str) -> int:
    """One more than the highest ``<Kind><n>`` among the files of ``folder`` (any case,
    any format), so a save never overwrites."""
    pattern = re.compile(rf"^{kind}(\d+)", re.IGNORECASE)
    numbers = [int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name))]
    return max(numbers, default=0) + 1


def _mask_problem(path: Path, shape, geometry: Geometry | None) -> str | None:
    """Why the saved mask ``path`` cannot belong to a patch of ``shape`` and ``geometry``
    (``None`` when it can), by the rules ``merge_corrections`` applies."""
    try:
        info = read_info(path)
    except InputError as exc:
        return str(exc)
    if info.shape != shape:
        return (
            f"{path}: shape x,y,z={tuple(as_xyz(info.shape))} differs from its patch's "
            f"x,y,z={tuple(as_xyz(shape))}; not loaded (painted on another patch?)."
        )
    mismatch = geometry_mismatch(path, info.geometry, geometry)
    return None if mismatch is None else f"{mismatch}; not loaded (painted on another patch?)."
