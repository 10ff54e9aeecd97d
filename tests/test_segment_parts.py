"""``segment`` over many tomograms on a cluster: parts of a job array, failures that do not
stop the others, and several runs sharing one output folder."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_tiny_checkpoint

from patch_corrections import InputError, SegmentSettings, segment, segment_many
from patch_corrections.io.volumes import Geometry, read_volume, write_volume
from patch_corrections.workflows.events import Listener, Progress

SETTINGS = SegmentSettings(window=16, device="cpu")
NAMES = ["a", "b", "c", "d", "e", "g"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("net") / "tiny.pt", normalisation=None)


def _tomograms(folder: Path, names) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(folder)))
    paths = []
    for name in names:
        volume = rng.normal(size=(8, 16, 16)).astype(np.float32)
        write_volume(folder / f"{name}.mrc", volume, Geometry((5.0,) * 3))
        paths.append(folder / f"{name}.mrc")
    return paths


def _names(paths) -> list[str]:
    return [Path(p).name.removesuffix(".mrc") for p in paths]


def _hidden(folder: Path) -> list[str]:
    """Temporary files, lock files: what a finished run must not leave."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_parts_cover_every_tomogram_once_whatever_the_order_of_the_folders(tmp_path, checkpoint):
    first = tmp_path / "first"
    _tomograms(first, ["a", "c", "e"])
    second = tmp_path / "second"
    _tomograms(second, ["d", "b"])
    (single,) = _tomograms(tmp_path / "third", ["g"])
    out = tmp_path / "out"
    # Two parts into one folder: each writes its own tomograms, together all of them.
    reports = [
        segment_many([first, second, single], checkpoint, out, settings=SETTINGS, part=i, parts=2)
        for i in range(2)
    ]
    assert [_names(r.tomogram for r in report.done) for report in reports] == [
        ["a", "c", "e"],
        ["b", "d", "g"],
    ]
    assert all(not r.skipped and not r.failed and r.total == 6 for r in reports)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{n}_{kind}.mrc" for n in NAMES for kind in ("probabilities", "segmented")
    )
    # Every order of the folders (one file named twice among them) splits them alike: now
    # that all are done, a part's tomograms are the ones it skips, and it loads no network.
    orders = [
        [first, second, single],
        [single, second, first],
        [second, first / "c.mrc", Path(os.path.relpath(single)), first, single],
    ]
    for parts in (1, 2, 3):
        for order in orders:
            seen = []
            for part in range(parts):
                report = segment_many(
                    order, tmp_path / "no.pt", out, settings=SETTINGS, part=part, parts=parts
                )
                assert not report.done and not report.failed and report.total == 6
                assert _names(report.skipped) == NAMES[part::parts]
                seen += _names(report.skipped)
            assert sorted(seen) == NAMES  # each exactly once


def test_a_failing_tomogram_is_reported_and_the_others_are_written(tmp_path, checkpoint, run_cli):
    folder = tmp_path / "tomograms"
    _tomograms(folder, ["a", "c"])
    (folder / "b.mrc").write_bytes(b"not an MRC file, but named like one" * 40)
    out = tmp_path / "out"
    args = ["segment", "-t", folder, "--checkpoint", checkpoint, "-o", out, "--window", 16]
    result = run_cli(*args, "--device", "cpu")
    assert result.exit_code == 1
    assert "Segmented 2 tomogram(s), skipped 0, failed 1." in result.stdout
    assert result.stderr.splitlines()[0].startswith("Failed 1 tomogram(s); nothing of theirs")
    assert result.stderr.splitlines()[1].startswith(f"  - {folder / 'b.mrc'}: not a readable MRC")
    assert len(result.stderr.splitlines()) == 2 and "Traceback" not in result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "a_probabilities.mrc",
        "a_segmented.mrc",
        "c_probabilities.mrc",
        "c_segmented.mrc",
    ]
    # Run again as it was: the two done are skipped, the broken one fails again.
    result = run_cli(*args, "--device", "cpu")
    assert result.exit_code == 1
    assert "Skipped 2 tomogram(s) already segmented" in result.stdout
    assert "Segmented 0 tomogram(s), skipped 2, failed 1." in result.stdout
    (folder / "b.mrc").unlink()
    result = run_cli(*args, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "Segmented 0 tomogram(s), skipped 2, failed 0." in result.stdout


def test_a_tomogram_that_breaks_midway_keeps_its_earlier_outputs_and_leaves_nothing(
    tmp_path, checkpoint
):
    tomograms = _tomograms(tmp_path / "tomograms", ["a", "b", "c"])
    out = tmp_path / "out"
    segment_many(tomograms, checkpoint, out, settings=SETTINGS)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    current: list[str] = []

    def cut_b_once_its_outputs_are_staged(event: Progress) -> None:
        if current[-1].endswith("b.mrc") and event.done == 0:
            with open(tomograms[1], "r+b") as file:
                file.truncate(1100)  # the header stays: the sections cannot be read

    listener = Listener(progress=cut_b_once_its_outputs_are_staged, message=current.append)
    again = SegmentSettings(window=16, device="cpu", overwrite=True)
    report = segment_many(tomograms, checkpoint, out, settings=again, listener=listener)
    assert _names(r.tomogram for r in report.done) == ["a", "c"]
    assert [(path, "short read" in reason) for path, reason in report.failed] == [
        (tomograms[1], True)
    ]
    assert f"Failed: {report.failed[0][1]}" in current
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after.keys() == before.keys()  # no temporary or lock file left
    for name in ("b_probabilities.mrc", "b_segmented.mrc"):
        assert after[name] == before[name]


def test_two_runs_into_one_folder_never_segment_the_same_tomogram(tmp_path, checkpoint):
    tomograms = _tomograms(tmp_path / "tomograms", ["a", "b", "c"])
    out = tmp_path / "out"
    other: list = []

    def second_run_while_the_first_segments_a(event: Progress) -> None:
        if other:
            return
        other.append(segment_many(tomograms, checkpoint, out, settings=SETTINGS))
        with pytest.raises(InputError, match="another segment run is writing its outputs"):
            segment(tomograms[0], checkpoint, out, settings=SETTINGS)

    listener = Listener(progress=second_run_while_the_first_segments_a)
    first = segment_many(tomograms, checkpoint, out, settings=SETTINGS, listener=listener)
    (second,) = other
    assert _names(second.busy) == ["a"] and _names(r.tomogram for r in second.done) == ["b", "c"]
    # The first run finds b and c done by the time it gets there.
    assert _names(r.tomogram for r in first.done) == ["a"] and _names(first.skipped) == ["b", "c"]
    assert not first.busy and not first.failed and not second.failed
    assert len(list(out.glob("*_segmented.mrc"))) == 3 and _hidden(out) == []


@pytest.mark.parametrize(
    ("options", "line"),
    [
        (["--part", "3", "--parts", "3"], "Error: --part 3: must be 0 … 2 for --parts 3"),
        (["--part", "-1", "--parts", "2"], "Error: --part -1: must be 0 … 1 for --parts 2"),
        (["--parts", "0"], "Error: --parts must be at least 1, got 0"),
        (["--part", "1"], "Error: --part 1: give --parts too"),
    ],
)
def test_a_bad_part_is_one_line(tmp_path, run_cli, options, line):
    args = ["segment", "-t", tmp_path / "t.mrc", "--checkpoint", tmp_path / "no.pt"]
    result = run_cli(*args, "-o", tmp_path / "out", *options)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith(line) and result.stderr.count("\n") == 1
    result = run_cli(*args, "-o", tmp_path / "out", "--part", "one", "--parts", "2")
    assert result.exit_code == 2 and result.stderr.startswith("Error: --part one: ")


def test_a_part_without_tomograms_says_so(tmp_path, run_cli):
    folder = tmp_path / "tomograms"
    _tomograms(folder, ["a", "b"])
    result = run_cli(
        "segment",
        "-t",
        folder,
        "--checkpoint",
        tmp_path / "no.pt",
        "-o",
        tmp_path / "out",
        "--part",
        2,
        "--parts",
        3,
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "Part 2 of 3 holds no tomogram (2 given in all); nothing to do.\n"
    assert not (tmp_path / "out").exists()


def test_a_file_system_that_cannot_lock_segments_anyway_and_says_so(
    tmp_path, checkpoint, monkeypatch
):
    fcntl = pytest.importorskip("fcntl")

    def no_locks(descriptor, operation):
        raise OSError(errno.ENOLCK, "No locks available")  # NFS without its lock daemon

    monkeypatch.setattr(fcntl, "flock", no_locks)
    tomograms = _tomograms(tmp_path / "tomograms", ["a", "b"])
    report = segment_many(tomograms, checkpoint, tmp_path / "out", settings=SETTINGS)
    assert _names(r.tomogram for r in report.done) == ["a", "b"] and not report.busy
    assert report.warnings == [
        f"{tmp_path / 'out'}: its file system cannot lock files; runs sharing this folder "
        "must split the tomograms with --part/--parts"
    ]
    assert _hidden(tmp_path / "out") == []


def test_compile_compiles_the_network_once_per_run(tmp_path, checkpoint, monkeypatch, run_cli):
    # torch.compile itself is exercised on CUDA (tests/test_cuda.py); here, that --compile
    # reaches it, once for all the tomograms of a run, and the outputs stay the same.
    compiled, batches = [], set()

    def spy(function, *args, **kwargs):
        compiled.append(function.__name__)

        def forward(x):
            batches.add(len(x))
            return function(x)

        return forward

    monkeypatch.setattr(torch, "compile", spy)
    tomograms = _tomograms(tmp_path / "tomograms", ["a", "b"])
    result = run_cli(
        "segment",
        "-t",
        str(tmp_path / "tomograms"),
        "--checkpoint",
        str(checkpoint),
        "-o",
        str(tmp_path / "compiled"),
        "--window",
        "16",
        "--device",
        "cpu",
        "--compile",
        "--batch-size",
        "3",
    )
    assert result.exit_code == 0, result.output
    assert compiled == ["forward_zyx"]
    assert batches == {3}  # a row's last batch (2 windows of 8 per row) padded: one shape
    plain = SegmentSettings(window=16, device="cpu", batch_size=3)
    segment_many(tomograms, checkpoint, tmp_path / "plain", settings=plain)
    for name in ("a", "b"):
        # The padded batch rounds a few values one float16 step apart.
        compiled, _ = read_volume(tmp_path / "compiled" / f"{name}_probabilities.mrc")
        plain, _ = read_volume(tmp_path / "plain" / f"{name}_probabilities.mrc")
        np.testing.assert_allclose(compiled, plain, atol=1e-3)


def test_running_out_of_memory_on_one_tomogram_fails_it_alone(tmp_path, checkpoint, monkeypatch):
    from patch_corrections.workflows import segmentation

    real = segmentation._segment_one

    def hungry(tomogram, *args):
        if tomogram.stem == "b":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")
        return real(tomogram, *args)

    monkeypatch.setattr(segmentation, "_segment_one", hungry)
    tomograms = _tomograms(tmp_path / "tomograms", ["a", "b", "c"])
    report = segment_many(tomograms, checkpoint, tmp_path / "out", settings=SETTINGS)
    assert _names(r.tomogram for r in report.done) == ["a", "c"]
    [(tomogram, reason)] = report.failed
    assert tomogram.stem == "b" and reason == (
        f"{tomogram}: out of GPU memory with 16³ windows, batch 1; try a smaller --window"
    )  # batch 1 cannot be smaller
