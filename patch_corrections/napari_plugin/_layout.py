"""The "Patch corrections" widget's fields, buttons, patch list and status line, laid out.

Nothing here is connected: :class:`~._widget.CorrectionsWidget` wires the buttons to what
they do. Top to bottom: the round's folders and the tomogram to cut from, cutting,
the patch list, saving and merging, retraining, progress and the status line.
"""

from __future__ import annotations

from qtpy.QtWidgets import (
    QCheckBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

DEFAULT_STEPS = 300
"""Fine-tuning steps Retrain offers."""


class CorrectionsPanel(QWidget):
    """The widget's controls, laid out and not yet connected."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_list = QListWidget()
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.status = QLabel("Open an extraction folder.")
        self.status.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addLayout(self._paths_section())
        layout.addLayout(self._cutting_row())
        layout.addWidget(self.patch_list)
        layout.addLayout(self._actions_row())
        layout.addLayout(self._training_row())
        layout.addWidget(self.progress)
        layout.addWidget(self.status)

    def _paths_section(self) -> QGridLayout:
        """The folders of the round, and the tomogram and segmentation to cut from."""
        self.folder_edit = _edit("extract_patches output folder")
        self.corrections_edit = _edit("default: corrections/ beside it")
        self.out_edit = _edit("default: train/ beside it")
        self.tomogram_edit = _edit("tomogram to cut patches from (the manifest's)")
        self.segmentation_edit = _edit("its segmentation (the manifest's)")
        self.browse_button = QPushButton("Open…")
        self.load_button = QPushButton("Load")
        paths = QGridLayout()
        paths.addWidget(QLabel("Patches"), 0, 0)
        paths.addWidget(self.folder_edit, 0, 1)
        paths.addLayout(_row(self.browse_button, self.load_button), 0, 2)
        rows = (
            ("Corrections", self.corrections_edit),
            ("Merge into", self.out_edit),
            ("Tomogram", self.tomogram_edit),
            ("Segmentation", self.segmentation_edit),
        )
        for row, (label, edit) in enumerate(rows, start=1):
            paths.addWidget(QLabel(label), row, 0)
            paths.addWidget(edit, row, 1, 1, 2)
        return paths

    def _cutting_row(self) -> QHBoxLayout:
        self.centres_button = _button(
            "Load centres…",
            "A centres file (suggest's, or x, y, z rows) as a points layer on the tomogram",
        )
        self.extract_button = _button(
            "Extract at points",
            "Cut patches of the tomogram at the points of the selected points layer into the "
            "Patches folder (added to it, as extract_patches does)",
        )
        return _row(self.centres_button, self.extract_button)

    def _actions_row(self) -> QHBoxLayout:
        self.save_button = _button(
            "Save masks",
            "Write the painted Add / Remove / Ignore layers as <corrections>/<patch>/"
            "Add<n>.nrrd etc., never overwriting",
        )
        self.merge_button = _button("Merge", "Run merge_corrections on every corrected patch")
        self.overwrite_box = QCheckBox("replace an earlier merge")
        return _row(self.save_button, self.merge_button, self.overwrite_box)

    def _training_row(self) -> QHBoxLayout:
        self.checkpoint_edit = _edit("starting weights (.pt, MemBrain-seg .ckpt)")
        self.steps_box = QSpinBox()
        self.steps_box.setRange(1, 10_000_000)
        self.steps_box.setValue(DEFAULT_STEPS)
        self.steps_box.setToolTip("Fine-tuning steps")
        self.retrain_button = _button(
            "Retrain",
            "Fine-tune the starting weights on the merged patches into model/ beside the "
            "Patches folder (retrain's defaults; crops no larger than the patches)",
        )
        return _row(self.checkpoint_edit, self.steps_box, self.retrain_button)


def _edit(placeholder: str) -> QLineEdit:
    edit = QLineEdit()
    edit.setPlaceholderText(placeholder)
    return edit


def _button(text: str, tooltip: str) -> QPushButton:
    button = QPushButton(text)
    button.setToolTip(tooltip)
    return button


def _row(*widgets: QWidget) -> QHBoxLayout:
    row = QHBoxLayout()
    for widget in widgets:
        row.addWidget(widget)
    return row
