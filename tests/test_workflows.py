"""The workflows called from Python, as a notebook, a viewer plugin or a cluster job would."""

from __future__ import annotations

import inspect
import os
import signal
from dataclasses import fields
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from conftest import write_mrc

from patch_corrections import (
    DemoSettings,
    EvaluateSettings,
    ExtractSettings,
    InputError,
    Listener,
    MergeSettings,
    Progress,
    RetrainSettings,
    RunInterrupted,
    SegmentSettings,
    SparseSettings,
    demo,
    evaluate,
    extract_patches,
    merge_corrections,
    retrain,
    segment,
    simulate_sparse,
)
from patch_corrections.cli import evaluate as evaluate_cli
from patch_corrections.cli import extract, merge, sparse
from patch_corrections.cli import retrain as retrain_cli
from patch_corrections.cli import segment as segment_cli
from patch_corrections.io.volumes import Geometry, write_volume
from patch_corrections.metrics import counts, summarise
from patch_corrections.workflows.demo import DEMO_PATCH_SIZE, DEMO_SEGMENT

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"


class Recorder:
    """A listener that keeps everything it hears."""

    def __init__(self) -> None:
        self.events: list[Progress] = []
        self.messages: list[str] = []
        self.listener = Listener(progress=self.events.append, message=self.messages.append)

    def of(self, task: str) -> list[tuple[int, int]]:
        return [(e.done, e.total) for e in self.events if e.task == task]


def test_the_correction_loop_through_the_python_api(tmp_path):
    heard = Recorder()
    extracted = extract_patches(
        SAMPLE / "tomogram.mrc",
        SAMPLE / "prediction.mrc",
        tmp_path / "patches",
        SAMPLE / "centres.csv",
        settings=ExtractSettings(patch_size=DEMO_PATCH_SIZE),
        listener=heard.listener,
    )
    names = [p.name for p in extracted.patches]
    assert names == [f"tomogram_patch{i:03d}" for i in range(4)] and extracted.skipped == 0
    assert extracted.manifest.is_file() and extracted.warnings == []
    assert heard.of("Extracting patches") == [(i, 4) for i in range(5)]

    merged = merge_corrections(
        tmp_path / "patches", SAMPLE / "corrections", tmp_path / "train", listener=heard.listener
    )
    assert [r["name"] for r in merged.rows] == names and merged.summary.is_file()
    assert all(r["added"] + r["removed"] > 0 for r in merged.rows)
    assert heard.of("Merging corrections")[-1] == (4, 4)

    trained = retrain(
        tmp_path / "train",
        tmp_path / "model",
        SAMPLE / "starting_model.pt",
        settings=RetrainSettings(
            iterations=2, crop_size=48, optimizer="adamw", val_fraction=0.0, device="cpu"
        ),
        listener=heard.listener,
    )
    assert trained.step == 2 and trained.last.is_file() and trained.best is None
    assert np.isfinite(trained.final["train_loss"]) and trained.relabel is None
    assert heard.messages[0].startswith("Training ") and "4 training" in heard.messages[0]
    training = [e for e in heard.events if e.task == "Training"]
    assert [e.done for e in training] == [0, 1, 2] and training[-1].loss is not None
    assert trained.warnings == []  # no validation was asked for: nothing to warn about

    segmented = segment(
        SAMPLE / "tomogram.mrc",
        trained.last,
        tmp_path / "after",
        settings=DEMO_SEGMENT,
        listener=heard.listener,
    )
    windows = heard.of("Segmenting")
    assert windows[0] == (0, segmented.windows) and windows[-1][0] == segmented.windows
    labels = mrcfile.read(segmented.segmentation)
    assert labels.shape == (64, 224, 224) and set(np.unique(labels)) <= {0, 1}
    assert segmented.membrane_share == pytest.approx(labels.mean())

    scored = evaluate(segmented.segmentation, SAMPLE / "truth.mrc")
    assert 0 < scored.metrics["dice"] <= 1 and scored.warnings == []


def test_segment_through_the_api_gives_the_committed_prediction(tmp_path):
    # sample_data/make_sample_data.py makes prediction.mrc exactly this way.
    report = segment(
        SAMPLE / "tomogram.mrc", SAMPLE / "starting_model.pt", tmp_path, settings=DEMO_SEGMENT
    )
    ours = mrcfile.read(report.segmentation)
    committed = mrcfile.read(SAMPLE / "prediction.mrc")
    assert np.array_equal(ours != 0, committed != 0)
    assert report.device == "cpu" and report.probabilities.name == "tomogram_probabilities.mrc"


def test_sparse_simulation_and_warnings_reach_the_report(tmp_path):
    image = np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)
    labels = (image > 1).astype(np.int8)
    write_mrc(tmp_path / "tomo.mrc", image, voxel_size=(0.0, 0.0, 0.0))
    write_mrc(tmp_path / "seg.mrc", labels)
    report = extract_patches(
        tmp_path / "tomo.mrc",
        tmp_path / "seg.mrc",
        tmp_path / "out",
        points=[(8, 8, 8)],
        settings=ExtractSettings(patch_size=12, border=2, format="nii.gz"),
    )
    assert report.warnings == [
        f"{tmp_path / 'tomo.mrc'}: header has no voxel size; patches are written with 1 Å"
    ]
    merge_corrections(
        tmp_path / "out",
        tmp_path / "out",
        tmp_path / "train",
        settings=MergeSettings(include_uncorrected=True),
    )
    sparse_report = simulate_sparse(
        tmp_path / "train", tmp_path / "sparse", settings=SparseSettings(fraction=0.5, seed=1)
    )
    (row,) = sparse_report.rows
    assert row["annotated"] < row["annotated_before"] and row["simulated"]["axis"] == "z"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ExtractSettings(patch_size=8, border=4), "border"),
        (lambda: ExtractSettings(token="a b"), "--token 'a b': use letters"),
        (lambda: ExtractSettings(format="png"), "--format png: expected one of"),
        (lambda: MergeSettings(keep_slices=("z=1",)), "add --sparse"),
        (lambda: MergeSettings(border=-1), "--border must be 0 or more"),
        (lambda: SparseSettings(fraction=0), "--fraction must be in (0, 1]"),
        (lambda: SparseSettings(mode="lines"), "--mode must be slices or boxes"),
        (lambda: RetrainSettings(iterations=1, epochs=1), "--iterations or --epochs, not both"),
        (lambda: RetrainSettings(relabel_max=0.3), "add --relabel-rounds"),
        (lambda: RetrainSettings(optimizer="adam"), "--optimizer must be sgd or adamw"),
        (lambda: SegmentSettings(overlap=1), "--overlap must be in [0, 1)"),
        (lambda: SegmentSettings(threshold=1), "--threshold must be a probability"),
        (lambda: EvaluateSettings(tolerance=-1), "--tolerance must be 0 or more"),
    ],
)
def test_settings_are_checked_when_made(make, message):
    with pytest.raises(InputError) as error:
        make()
    assert message in str(error.value)


# Options whose settings field has another name.
_RENAMED = {"output_format": "format", "optimiser": "optimizer", "compile_network": "compile"}


@pytest.mark.parametrize(
    ("command", "settings"),
    [
        (extract.extract_patches_command, ExtractSettings),
        (merge.merge_corrections_command, MergeSettings),
        (sparse.simulate_sparse_command, SparseSettings),
        (retrain_cli.retrain_command, RetrainSettings),
        (segment_cli.segment_command, SegmentSettings),
        (evaluate_cli.evaluate_command, EvaluateSettings),
    ],
)
def test_command_defaults_are_the_settings_defaults(command, settings):
    defaults = {f.name: f.default for f in fields(settings)}
    compared = 0
    for name, parameter in inspect.signature(command).parameters.items():
        field = _RENAMED.get(name, name)
        if name == "no_augment":
            assert parameter.default is (not defaults["augment"])
            compared += 1
        elif field in defaults:
            default = getattr(parameter.default, "value", parameter.default)
            expected = defaults[field]
            assert default == (list(expected) or None if isinstance(expected, tuple) else expected)
            compared += 1
    assert compared == len(defaults)


def test_ctrl_c_in_a_training_run_is_reported_and_the_run_resumes(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(16, 16, 16)).astype(np.float32)
    labels = (image > 0.5).astype(np.uint8)
    geometry = Geometry((1.0, 1.0, 1.0))
    for folder in ("imagesTr", "labelsTr"):
        (tmp_path / "train" / folder).mkdir(parents=True)
    write_volume(tmp_path / "train" / "imagesTr" / "p_0000.nii.gz", image, geometry)
    write_volume(tmp_path / "train" / "labelsTr" / "p.nii.gz", labels, geometry)

    def press_ctrl_c(progress: Progress) -> None:
        if progress.task == "Training" and progress.done == 2:
            os.kill(os.getpid(), signal.SIGINT)  # honoured before the next step

    settings = RetrainSettings(
        iterations=4, preset="tiny", crop_size=16, val_fraction=0.0, device="cpu"
    )
    with pytest.raises(RunInterrupted) as stopped:
        retrain(
            tmp_path / "train",
            tmp_path / "model",
            settings=settings,
            listener=Listener(progress=press_ctrl_c),
        )
    assert str(stopped.value) == (
        f"Interrupted at iteration 2; saved {tmp_path / 'model' / 'last.pt'}. "
        "Run again with --resume to continue."
    )
    resumed = retrain(
        tmp_path / "train", tmp_path / "model", settings=RetrainSettings(resume=True, device="cpu")
    )
    assert resumed.step == 4 and resumed.last.is_file()


def test_the_demo_reports_each_step_as_it_finishes(tmp_path):
    stages: list[str] = []
    steps: list[object] = []
    report = demo(
        tmp_path / "demo",
        settings=DemoSettings(iterations=2),
        listener=Listener(stage=stages.append, step_done=steps.append),
    )
    assert [title.split(".")[0] for title in stages] == ["1", "2", "3", "4", "5", "6"]
    assert [type(s).__name__ for s in steps] == [
        "SegmentReport",
        "ExtractReport",
        "MergeReport",
        "RetrainReport",
        "SegmentReport",
    ]
    assert report.steps == steps and report.out_dir == tmp_path / "demo"
    assert set(report.metrics) == {"before", "after"}
    # The first segmentation is the committed prediction, voxel for voxel.
    prediction, truth = (mrcfile.read(SAMPLE / name) for name in ("prediction.mrc", "truth.mrc"))
    committed = summarise(counts(prediction != 0, truth.astype(np.uint8), 2), 2)
    assert report.metrics["before"]["dice"] == committed["dice"]
    with pytest.raises(InputError, match="holds an earlier run"):
        demo(tmp_path / "demo", settings=DemoSettings(iterations=2))
