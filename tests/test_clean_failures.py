"""Failures users meet end cleanly: a huge --tolerance, a damaged checkpoint, a command line
that does not parse. Each gives a result or one line, never a crash, a panel or a
misleading hint."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import all_files, save_tiny_checkpoint, write_mrc

from patch_corrections.errors import InputError
from patch_corrections.io.volumes import Geometry, write_volume
from patch_corrections.metrics import _dilate, counts, summarise
from patch_corrections.network.checkpoints import read_checkpoint

# --- evaluate --tolerance: any size, memory proportional to the volume ---------------------


def _near_by_brute_force(mask: np.ndarray, radius: int) -> np.ndarray:
    """Voxels whose squared distance to some mask voxel is at most ``radius`` squared."""
    voxels = np.indices(mask.shape).reshape(3, -1).T
    marked = np.argwhere(mask)
    if radius == 0 or len(marked) == 0:
        return mask.copy()
    squared = ((voxels[:, None, :] - marked[None, :, :]) ** 2).sum(-1).min(1)
    return (squared <= radius**2).reshape(mask.shape)


@pytest.mark.parametrize("shape", [(3, 4, 5), (9, 6, 11), (1, 4, 10)])
@pytest.mark.parametrize("radius", [0, 1, 2, 3, 4, 5, 6, 7, 13])
def test_dilation_is_the_euclidean_ball_at_every_radius(shape, radius):
    rng = np.random.default_rng(radius)
    for density in (0.02, 0.2):
        mask = rng.random(shape) < density
        mask.flat[0] = True  # from a corner, the far corner is the last voxel reached
        expected = _near_by_brute_force(mask, radius)
        for slab_voxels in (1, 40, 10**9):  # slabs one plane thick, a few planes, one slab
            assert np.array_equal(_dilate(mask, radius, slab_voxels), expected)


def test_counts_with_a_tolerance_far_beyond_the_volume():
    reference = np.zeros((4, 5, 6), np.uint8)
    reference[0, 0, 0] = 1
    reference[3, 4, 5] = 2  # the far corner is ignore
    prediction = np.zeros(reference.shape, bool)
    prediction[3, 4, 4] = True  # at squared distance 9 + 16 + 16 = 41 from the truth
    for tolerance in (6, 10**5, 10**30):  # 6² = 36 < 41, then far beyond the diagonal
        result = summarise(counts(prediction, reference, tolerance), tolerance)
        expected = 0.0 if tolerance == 6 else 1.0
        assert result[f"tolerant_dice_{tolerance}"] == expected


def test_evaluate_cli_with_a_huge_tolerance(tmp_path, run_cli):
    reference = np.zeros((2, 8, 10), np.uint8)
    reference[0, 1, :] = 1
    prediction = np.zeros(reference.shape, np.int8)
    prediction[1, 6, :5] = 1  # far from the membrane for a normal tolerance
    write_volume(tmp_path / "pred.mrc", prediction, Geometry((1.0, 1.0, 1.0)))
    write_volume(tmp_path / "ref.nrrd", reference, Geometry((1.0, 1.0, 1.0)))
    args = ["evaluate", "-p", tmp_path / "pred.mrc", "-r", tmp_path / "ref.nrrd", "--json"]
    result = run_cli(*args, "--tolerance", 100000)
    assert result.exit_code == 0, result.output
    values = json.loads(result.stdout)
    assert values["tolerant_dice_100000"] == 1.0 and values["dice"] == 0.0
    assert result.stderr.strip() == (
        "Warning: --tolerance 100000 is larger than the compared volume's largest side "
        "(10 voxels): almost every voxel counts as near; use a few voxels"
    )
    result = run_cli(*args, "--tolerance", 10)  # as long as the volume: allowed, no warning
    assert result.exit_code == 0 and result.stderr == ""
    assert json.loads(result.stdout)["tolerant_dice_10"] == 1.0
    result = run_cli(*args, "--tolerance", 2)
    assert result.exit_code == 0 and result.stderr == ""
    assert json.loads(result.stdout)["tolerant_dice_2"] == 0.0


# --- checkpoints that are neither a torch zip nor a torch pickle ---------------------------


def _save(path, content, legacy=False):
    torch.save(content, path, _use_new_zipfile_serialization=not legacy)
    return path


def _damaged(tmp_path, kind):
    path = tmp_path / f"{kind}.ckpt"
    if kind == "pk_header":  # random bytes behind a zip signature
        path.write_bytes(b"PK" + np.random.default_rng(0).bytes(300))
    elif kind == "local_header":
        path.write_bytes(b"PK\x03\x04" + bytes(100))
    elif kind == "truncated":
        whole = _save(tmp_path / "whole.ckpt", {"model": torch.zeros(100)}).read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    elif kind == "foreign_zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("notes.txt", "not a checkpoint")
    elif kind == "damaged_data_pkl":  # torch's layout, its pickle garbled
        whole = _save(tmp_path / "whole.ckpt", {"model": torch.zeros(3)})
        with zipfile.ZipFile(whole) as source, zipfile.ZipFile(path, "w") as archive:
            for name in source.namelist():
                garbled = b"\x80\x02\xff garbled"
                archive.writestr(name, garbled if name.endswith("data.pkl") else source.read(name))
    elif kind == "damaged_pickle":  # a pre-zip checkpoint's protocol byte, then junk
        path.write_bytes(b"\x80\x02" + np.random.default_rng(1).bytes(300))
    return path


@pytest.mark.parametrize(
    ("kind", "what"),
    [
        ("pk_header", "zip file"),
        ("local_header", "zip file"),
        ("truncated", "zip file"),
        ("foreign_zip", "zip file"),
        ("damaged_data_pkl", "zip file"),
        ("damaged_pickle", "pickle"),
    ],
)
@pytest.mark.parametrize("trust", [False, True])
def test_a_damaged_checkpoint_is_not_called_pickled_objects(tmp_path, kind, what, trust):
    path = _damaged(tmp_path, kind)
    with pytest.raises(InputError) as raised:
        read_checkpoint(path, trust=trust)
    assert str(raised.value) == (
        f"{path}: not a readable PyTorch checkpoint (a damaged or foreign {what})"
    )


@pytest.mark.parametrize("legacy", [False, True])
def test_pickled_objects_still_ask_for_trust(tmp_path, legacy):
    content = {"model": torch.ones(2), "args": argparse.Namespace(lr=1e-4)}
    path = _save(tmp_path / "pickled.ckpt", content, legacy)
    with pytest.raises(InputError, match="if you trust its source, pass --trust-checkpoint"):
        read_checkpoint(path)
    assert read_checkpoint(path, trust=True)["args"].lr == 1e-4
    plain = _save(tmp_path / "plain.ckpt", {"model": torch.ones(2)}, legacy)
    assert torch.equal(read_checkpoint(plain)["model"], torch.ones(2))


def test_segment_with_a_damaged_checkpoint_says_so_in_one_line(tmp_path, run_cli):
    write_mrc(tmp_path / "tomo.mrc", np.zeros((8, 8, 8), np.float32))
    checkpoint = _damaged(tmp_path, "pk_header")
    args = ["segment", "-t", tmp_path / "tomo.mrc", "--checkpoint", checkpoint]
    result = run_cli(*args, "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {checkpoint}: not a readable PyTorch checkpoint (a damaged or foreign zip file)\n"
    )
    assert not (tmp_path / "out").exists()


# --- command lines that do not parse: one line, exit code 2 --------------------------------


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["extract_patches", "--patch-size", "abc"],
            "Error: --patch-size abc: Input should be a valid integer",
        ),
        (
            ["extract_patches", "--format", "png"],
            "Error: --format: 'png' is not one of 'nrrd', 'mrc', 'nii.gz'.",
        ),
        (["segment", "--window", "abc"], "Error: --window abc: "),
        (["evaluate", "-p", "a", "-r", "b", "--tolerance", "1.5"], "Error: --tolerance 1.5: "),
        (["segment", "-o", "out"], "Error: --checkpoint: missing; this option is required"),
        (["segment", "--tomog", "t.mrc"], "Error: --tomog: no such option (did you mean --tomo"),
        (["segment", "--bogus"], "Error: --bogus: no such option"),
        (["evaluate", "-p"], "Error: -p: Option '-p' requires an argument."),
        (["--bogus"], "Error: --bogus: no such option"),
        (["segmnet", "-t", "t.mrc"], "Error: No such command 'segmnet'."),
    ],
)
def test_a_bad_command_line_is_one_line(run_cli, args, line):
    result = run_cli(*args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith(line) and result.stderr.count("\n") == 1


@pytest.mark.parametrize("args", [["--help"], [], ["segment"], ["segment", "--help"]])
def test_help_is_unchanged(run_cli, args):
    result = run_cli(*args)
    assert result.exit_code == (0 if "--help" in args else 2)  # no arguments: click's 2
    assert "Usage:" in result.output and "--help" in result.output
    assert ("Commands" in result.output) == (args[:1] != ["segment"])


def test_a_bad_command_line_is_one_line_in_a_shell():
    environment = {**os.environ, "COLUMNS": "80", "TERM": "xterm-256color"}
    done = subprocess.run(
        [sys.executable, "-m", "patch_corrections", "extract_patches", "--patch-size", "abc"],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("Error: --patch-size abc: ")
    assert done.stderr.count("\n") == 1


@pytest.mark.parametrize("command", [["segment"], ["retrain"], ["demo"]])
def test_without_pytorch_the_training_commands_say_what_to_install(tmp_path, command):
    # A machine with `pip install -e .` alone: torch cannot be imported.
    sample = Path(__file__).resolve().parent.parent / "sample_data"
    arguments = {
        "segment": [
            "-t",
            sample / "tomogram.mrc",
            "--checkpoint",
            sample / "starting_model.pt",
            "-o",
            tmp_path / "seg",
        ],
        "retrain": ["-t", tmp_path, "-o", tmp_path / "run", "--iterations", "1"],
        "demo": ["--out-dir", tmp_path / "demo"],
    }[command[0]]
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from patch_corrections.cli import main\n"
        "sys.argv[0] = 'patch_corrections'; main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *command, *map(str, arguments)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: this command needs torch") and "[train]" in lines[-1]
    assert "Traceback" not in done.stderr


def test_without_a_terminal_progress_is_a_line_now_and_then(tmp_path, run_cli, monkeypatch):
    # Cluster jobs write to a log: no bar would ever be seen there.
    from patch_corrections.cli import _console
    from patch_corrections.workflows.events import Progress

    monkeypatch.setattr(_console, "LOG_EVERY_S", 0.0)
    sample = Path(__file__).resolve().parent.parent / "sample_data"
    result = run_cli(
        "segment",
        "-t",
        sample / "tomogram.mrc",
        "--checkpoint",
        sample / "starting_model.pt",
        "-o",
        tmp_path / "seg",
        "--window",
        64,
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Segmenting: ")]
    assert lines[0] == "Segmenting: 0/36" and lines[-1].startswith("Segmenting: 36/36, ")
    assert any(" left" in line for line in lines[1:-1])

    monkeypatch.setattr(_console, "LOG_EVERY_S", 3600.0)  # only the first and the last
    printed = []
    monkeypatch.setattr(_console.typer, "echo", lambda text, err=False: printed.append(text))
    bars = _console._Bars(terminal=False)
    for step in range(0, 11):
        bars.update(Progress("Training", step, 10, loss=0.5 if step >= 5 else None))
    assert printed[0] == "Training: 0/10"
    assert printed[-1].startswith("Training: 10/10, ") and printed[-1].endswith("loss 0.5000")
    assert len(printed) == 2


def test_output_cut_short_by_its_reader_is_not_an_error(tmp_path):
    # `patch_corrections evaluate ... | head -1`: the reader goes away after what it needed.
    sample = Path(__file__).resolve().parent.parent / "sample_data"
    command = [
        sys.executable,
        "-m",
        "patch_corrections",
        "evaluate",
        "--prediction",
        sample / "prediction.mrc",
        "--reference",
        sample / "truth.mrc",
    ]
    process = subprocess.Popen(
        [str(c) for c in command], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    process.stdout.close()  # before the command prints anything
    errors = process.stderr.read().decode()
    process.stderr.close()
    assert process.wait(timeout=120) == 141  # as a process ended by SIGPIPE
    assert errors == ""


@pytest.mark.parametrize(("threshold", "every"), [(5.0, "background"), (-1.0, "membrane")])
def test_a_threshold_outside_the_predictions_values_is_said(threshold, every):
    from patch_corrections import EvaluateSettings, evaluate

    sample = Path(__file__).resolve().parent.parent / "sample_data"
    report = evaluate(
        sample / "prediction.mrc",
        sample / "truth.mrc",
        settings=EvaluateSettings(threshold=threshold),
    )
    assert any(
        w.startswith(f"--threshold {threshold:g} is outside") and w.endswith(every)
        for w in report.warnings
    ), report.warnings
    inside = evaluate(
        sample / "prediction.mrc", sample / "truth.mrc", settings=EvaluateSettings(threshold=0)
    )
    assert inside.warnings == []


# --- a full disk or a file-size limit: one line naming the file, nothing half-written -------


def _full_disk_nrrd(monkeypatch) -> None:
    """NRRD files run out of disk part-way: a few bytes land, then ``ENOSPC``, as from
    ``write()`` (which names no file)."""
    import errno

    import nrrd

    def filling_up(path, *args, **kwargs):
        Path(path).write_bytes(b"NRRD0004\n")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nrrd, "write", filling_up)


def _round(tmp_path: Path) -> None:
    """A tomogram, its segmentation, and an Add mask for the patch ``tomo_patch000`` that
    ``extract_patches --x 5 --y 5 --z 5 --patch-size 8`` cuts of them."""
    rng = np.random.default_rng(0)
    write_mrc(tmp_path / "tomo.mrc", rng.normal(size=(12, 14, 16)).astype(np.float32))
    write_mrc(tmp_path / "seg.mrc", (rng.random((12, 14, 16)) < 0.2).astype(np.int8))
    add = np.zeros((8, 8, 8), np.uint8)
    add[4, 4, 4] = 1
    (tmp_path / "corr" / "tomo_patch000").mkdir(parents=True)
    write_volume(tmp_path / "corr" / "tomo_patch000" / "Add1.mrc", add, Geometry((1.0,) * 3))


_EXTRACT = ("extract_patches", "--x", 5, "--y", 5, "--z", 5, "--patch-size", 8, "--border", 1)


def test_extract_patches_onto_a_full_disk_names_the_file(tmp_path, run_cli, monkeypatch):
    _round(tmp_path)
    _full_disk_nrrd(monkeypatch)
    out = tmp_path / "patches"
    result = run_cli(*_EXTRACT, "-t", tmp_path / "tomo.mrc", "-s", tmp_path / "seg.mrc", "-o", out)
    assert result.exit_code == 1
    assert (
        result.stderr
        == f"Error: {out / 'images' / 'tomo_patch000.nrrd'}: no space left on device\n"
    )
    assert all_files(out) == []


def test_merge_corrections_onto_a_full_disk_names_the_file(tmp_path, run_cli, monkeypatch):
    _round(tmp_path)
    patches, train = tmp_path / "patches", tmp_path / "train"
    args = ("-t", tmp_path / "tomo.mrc", "-s", tmp_path / "seg.mrc", "-o", patches)
    assert run_cli(*_EXTRACT, "--format", "mrc", *args).exit_code == 0
    _full_disk_nrrd(monkeypatch)
    result = run_cli(
        "merge_corrections",
        "--labels-dir",
        patches,
        "--corrections-dir",
        tmp_path / "corr",
        "--out-dir",
        train,
        "--format",
        "nrrd",
    )
    assert result.exit_code == 1
    image = train / "imagesTr" / "tomo_patch000_0000.nrrd"
    assert result.stderr == f"Error: {image}: no space left on device\n"
    assert all_files(train) == []


def test_simulate_sparse_onto_a_full_disk_names_its_output_not_its_input(
    tmp_path, run_cli, monkeypatch
):
    import errno

    dense = tmp_path / "dense"
    for sub in ("imagesTr", "labelsTr"):
        (dense / sub).mkdir(parents=True)
    labels = np.zeros((8, 8, 8), np.uint8)
    labels[3:5] = 1
    write_volume(dense / "labelsTr" / "p.nii.gz", labels, Geometry((1.0,) * 3))
    write_volume(dense / "imagesTr" / "p_0000.nii.gz", labels * 1.5, Geometry((1.0,) * 3))

    def full(*args):  # the kernel's copy, as shutil.copyfile makes it on Linux
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "sendfile", full)
    out = tmp_path / "sparse"
    result = run_cli("simulate_sparse", "-t", dense, "-o", out)
    assert result.exit_code == 1
    image = out / "imagesTr" / "p_0000.nii.gz"
    assert result.stderr == f"Error: {image}: no space left on device\n"
    assert all_files(out) == []


def test_segment_past_a_file_size_limit_names_the_file(tmp_path):

    write_mrc(tmp_path / "tomo.mrc", np.zeros((16, 20, 20), np.float32))
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "seg"
    # ulimit -f: write() past the limit fails with EFBIG once SIGXFSZ is ignored. The
    # limit is set after the imports, which may write caches.
    code = (
        "import resource, signal, sys\n"
        "import torch\n"
        "from patch_corrections.cli import main\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (8192, resource.RLIM_INFINITY))\n"
        "sys.argv[0] = 'patch_corrections'; main()\n"
    )
    arguments = ["segment", "-t", tmp_path / "tomo.mrc", "--checkpoint", checkpoint, "-o", out]
    arguments += ["--window", "16", "--device", "cpu"]
    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, arguments)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr == f"Error: {out / 'tomo_probabilities.mrc'}: file too large\n"
    assert all_files(out) == []


# --- segment: a tomogram already segmented is skipped, alone or in a folder ------------------


def test_segment_skips_a_finished_tomogram_given_alone_as_in_a_folder(tmp_path, run_cli):
    (tmp_path / "tomograms").mkdir()
    tomogram = tmp_path / "tomograms" / "tomo.mrc"
    write_mrc(tomogram, np.random.default_rng(1).normal(size=(8, 16, 16)).astype(np.float32))
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "seg"
    common = ("--checkpoint", checkpoint, "-o", out, "--window", 16, "--device", "cpu")
    first = run_cli("segment", "-t", tomogram, *common)
    assert first.exit_code == 0, first.output
    written = {p: p.stat().st_mtime_ns for p in all_files(out)}
    skipped = (
        f"Skipped 1 tomogram(s) already segmented in {out} (--overwrite redoes them): tomo.mrc"
    )
    for given in (tomogram, tomogram.parent):  # alone, as a job array resubmits it; a folder
        again = run_cli("segment", "-t", given, *common)
        assert again.exit_code == 0, again.output
        assert skipped in again.stdout and again.stderr == ""
        assert {p: p.stat().st_mtime_ns for p in all_files(out)} == written
    redone = run_cli("segment", "-t", tomogram, *common, "--overwrite")
    assert redone.exit_code == 0 and "Segmented tomo.mrc" in redone.stdout
    assert all(p.stat().st_mtime_ns > written[p] for p in written)
