"""What a new user meets in the first hour (issue 14): help that reads at 80 columns,
``--version``, a tomogram given as the segmentation, ``demo --iterations 0``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_mrc
from typer.main import get_command

from patch_corrections._version import __version__
from patch_corrections.cli import app
from patch_corrections.cli._group import IDENTITY
from patch_corrections.io.volumes import read_volume

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"
COMMANDS = sorted(get_command(app).commands)  # type: ignore[attr-defined]


def _shell(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
    """Run the CLI as a user's shell would at 80 columns, output not a terminal."""
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "patch_corrections"]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "80", "TERM": "xterm-256color"},
        check=False,
    )


# --- help and --version -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "panels"),
    [
        ("segment", ("Input and output", "Windows", "Device", "More outputs", "Many tomograms")),
        ("merge_corrections", ("Input and output", "What the labels hold")),
    ],
)
def test_long_helps_are_grouped_into_panels(command, panels):
    text = _shell(command, "--help").stdout
    for panel in panels:
        assert re.search(rf"─ {panel}", text), panel


def test_the_command_list_follows_a_round():
    text = _shell("--help").stdout
    listed = re.findall(r"^│ (\w+) ", text, flags=re.MULTILINE)
    assert listed[:2] == ["suggest", "extract_patches"] and listed[-1] == "demo"


def test_retrain_help_reads_at_80_columns():
    done = _shell("retrain", "--help")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text  # no option name or type cut short
    for panel in ("Data", "Output", "Network", "Device", "Optimisation", "Relabeling"):
        assert re.search(rf"─ {panel}[ (]", text), panel
    retrain = get_command(app).commands["retrain"]  # type: ignore[attr-defined]
    names = [n for p in retrain.params for n in (*p.opts, *p.secondary_opts)]
    assert len(names) > 28
    for name in names:  # every name whole, e.g. --trust-checkpoint, --no-channels-last
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), name
    flat = " ".join(text.replace("│", " ").split())
    assert "--iterations or --epochs: one of them is required" in flat
    assert "One of --iterations and --epochs is required" in flat


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)], ids=["app", *COMMANDS])
def test_flags_show_no_value(run_cli, command):
    result = run_cli(*command, "--help")
    assert result.exit_code == 0
    assert "<bool>" not in result.output
    assert "<list[" not in result.output  # a Python type, not what to type
    assert str(SAMPLE) not in result.output  # no path of the machine it was installed on
    assert re.search(r"--help +Show this message", result.output)


def test_version(run_cli):
    result = run_cli("--version")
    assert result.exit_code == 0
    assert result.output == f"patch_corrections {__version__} ({IDENTITY})\n"
    assert "not MemBrain-seg's" in IDENTITY
    done = _shell("--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, result.output, "")


# --- a tomogram given as the segmentation ---------------------------------------------------

SHAPE = (32, 40, 48)  # z, y, x
CENTRES = "x,y,z\n20,20,16\n30,18,12\n"


@pytest.fixture
def tomogram(tmp_path):
    """A noisy tomogram with a dark membrane slab, and where to cut patches."""
    rng = np.random.default_rng(0)
    density = rng.normal(0.0, 1.0, SHAPE).astype(np.float32)
    density[:, 18:21] -= 3.0
    write_mrc(tmp_path / "tomo.mrc", density)
    (tmp_path / "c.csv").write_text(CENTRES)
    return density


def _extract(run_cli, tmp_path, segmentation, *extra):
    return run_cli(
        "extract_patches",
        "-t",
        tmp_path / "tomo.mrc",
        "-s",
        segmentation,
        "-c",
        tmp_path / "c.csv",
        "-o",
        tmp_path / "out",
        "--patch-size",
        16,
        "--border",
        2,
        *extra,
    )


@pytest.mark.parametrize(
    ("values", "clue"),
    [
        (lambda d: d, "would be membrane"),  # the tomogram itself, centred on 0
        (lambda d: d * 40 + 500, "100% of the patches' voxels would be membrane"),
        (lambda d: -d - 100, "values follow the tomogram's (correlation -1.00)"),  # all < 0
        (lambda d: np.clip(np.round(d * 40), -127, 127).astype(np.int8), "would be membrane"),
    ],
)
def test_a_tomogram_as_the_segmentation_is_refused_before_any_work(
    tmp_path, run_cli, tomogram, values, clue
):
    write_mrc(tmp_path / "seg.mrc", values(tomogram))
    result = _extract(run_cli, tmp_path, tmp_path / "seg.mrc")
    assert result.exit_code == 1
    line = result.output.strip()
    assert "\n" not in line
    assert line.startswith(f"Error: {tmp_path / 'seg.mrc'}: looks like a tomogram (density")
    assert clue in line and "--threshold" in line
    assert not (tmp_path / "out").exists()


def test_the_same_file_twice_is_refused(tmp_path, run_cli, tomogram):
    result = _extract(run_cli, tmp_path, tmp_path / "tomo.mrc")
    assert result.exit_code == 1 and "looks like a tomogram (density values)" in result.output


def test_a_threshold_binarises_density_values_as_told(tmp_path, run_cli, tomogram):
    result = _extract(run_cli, tmp_path, tmp_path / "tomo.mrc", "--threshold", "-2")
    assert result.exit_code == 0, result.output
    labels, _ = read_volume(tmp_path / "out" / "labels" / "tomo_patch000.nrrd")
    inner = (slice(2, 14),) * 3
    window = (slice(10, 22), slice(14, 26), slice(14, 26))  # around z=16, y=20, x=20
    np.testing.assert_array_equal(labels[inner], tomogram[window] > -2)


@pytest.mark.parametrize(
    ("make", "rule"),
    [
        # A network's scores (logits): many values, mostly well below 0, following the
        # density only loosely.
        (lambda d, rng: -6 + 9 * (d < -2.5) + rng.normal(0, 2, SHAPE), "scores (logits)"),
        (lambda d, rng: rng.beta(0.3, 3, SHAPE), "probabilities"),  # any values in [0, 1]
        (lambda d, rng: np.clip(d + 0.5, 0, 1), "probabilities"),
        (lambda d, rng: rng.integers(0, 6, SHAPE), "label values"),  # a few classes
        (lambda d, rng: rng.integers(1, 200, SHAPE) * (d < -2), "label values"),  # instances
    ],
)
def test_segmentations_of_many_kinds_are_still_accepted(tmp_path, run_cli, tomogram, make, rule):
    values = make(tomogram, np.random.default_rng(1))
    dtype = np.int16 if values.dtype.kind in "iu" else np.float32
    write_mrc(tmp_path / "seg.mrc", values.astype(dtype))
    result = _extract(run_cli, tmp_path, tmp_path / "seg.mrc")
    assert result.exit_code == 0, result.output
    assert f"read as {rule}" in result.output


def test_the_sample_tomogram_as_the_segmentation(tmp_path, run_cli):
    # The mistake as a user makes it with the README's data (int8 densities).
    result = run_cli(
        "extract_patches",
        "-t",
        SAMPLE / "tomogram.mrc",
        "-s",
        SAMPLE / "tomogram.mrc",
        "-c",
        SAMPLE / "centres.csv",
        "-o",
        tmp_path / "out",
        "--patch-size",
        96,
    )
    assert result.exit_code == 1
    assert "tomogram.mrc: looks like a tomogram (density values)" in result.output
    ok = run_cli(
        "extract_patches",
        "-t",
        SAMPLE / "tomogram.mrc",
        "-s",
        SAMPLE / "prediction.mrc",
        "-c",
        SAMPLE / "centres.csv",
        "-o",
        tmp_path / "out",
        "--patch-size",
        96,
    )
    assert ok.exit_code == 0, ok.output


# --- demo --iterations 0 --------------------------------------------------------------------


@pytest.mark.parametrize("iterations", ["0", "-5"])
def test_demo_refuses_no_iterations_before_any_work(tmp_path, iterations):
    # PyTorch made unimportable: a check that came after any step would say so instead.
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from patch_corrections.cli import main\n"
        "sys.argv[0] = 'patch_corrections'; main()\n"
    )
    out = tmp_path / "demo"
    done = _shell("demo", "--out-dir", str(out), "--iterations", iterations, code=code)
    assert done.returncode == 1
    assert done.stderr == f"Error: --iterations must be at least 1, got {iterations}\n"
    assert done.stdout == "" and not out.exists()


def test_threads_follow_the_load_unless_chosen(monkeypatch, capsys):
    # Under load, PyTorch's default of every core ran a demo 3x slower than one thread.
    import torch

    from patch_corrections.cli.options import use_threads
    from patch_corrections.errors import InputError
    from patch_corrections.network import threads

    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        monkeypatch.setattr(threads, "busy_cpus", lambda: 3.2)
        use_threads(None)
        assert torch.get_num_threads() == 1
        assert capsys.readouterr().err == (
            "Using 1 of 4 CPU cores for PyTorch: other programs keep the others busy "
            "(3.2 CPUs busy now); --threads chooses.\n"
        )
        # Whole cores only: a program that keeps a core busy part of the time leaves it.
        monkeypatch.setattr(threads, "busy_cpus", lambda: 0.9)
        use_threads(None)
        assert torch.get_num_threads() == 4 and capsys.readouterr().err == ""
        use_threads(3)  # chosen: no second guess
        assert torch.get_num_threads() == 3 and capsys.readouterr().err == ""
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        use_threads(None)
        assert torch.get_num_threads() == 2
        with pytest.raises(InputError, match="--threads must be at least 1, got 0"):
            use_threads(0)
    finally:
        torch.set_num_threads(before)


def test_usable_cores_counts_what_this_process_may_use():
    from patch_corrections.network.threads import usable_cores

    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    assert 1 <= usable_cores() <= (allowed or os.cpu_count() or 1)


def test_the_load_of_a_shared_node_is_not_on_a_job_s_own_cores(monkeypatch):
    # A SLURM job given 8 of a node's 64 cores keeps them while other jobs load the rest.
    from patch_corrections.network import threads

    monkeypatch.setattr(threads, "busy_cpus", lambda: 56.0)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 64)
    assert threads.load_on_our_cores() == 0.0
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 8)  # the whole machine: shared
    assert threads.load_on_our_cores() == 56.0


def test_cpus_busy_now_not_a_minute_ago(monkeypatch):
    # A run of this tool that just ended left a load average of about 1 on an idle machine;
    # the second run took 1 of 2 cores and trained a slightly different model.
    from patch_corrections.network import threads

    if Path("/proc/stat").exists():
        busy, total = threads._cpu_times()  # type: ignore[misc]
        assert 0 <= busy <= total
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (1.0, 0.6, 0.3))
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(threads, "SAMPLE_SECONDS", 0.0)
    samples = iter([(1000, 4000), (1010, 4400)])  # busy, total jiffies: 10 of 400 busy
    monkeypatch.setattr(threads, "_cpu_times", lambda: next(samples))
    assert threads.busy_cpus() == pytest.approx(0.1)
    samples = iter([(1000, 4000), (1300, 4400)])  # 3 of 4 CPUs busy
    assert threads.busy_cpus() == pytest.approx(3.0)
    monkeypatch.setattr(threads, "_cpu_times", lambda: None)  # no /proc/stat: the average
    assert threads.busy_cpus() == 1.0


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["segment", "--ckpt-path", "x"], "that is MemBrain-seg's name: here, --checkpoint"),
        (["segment", "--sliding-window-size", "160"], "here, --window"),
        (["segment", "--store-probabilities"], "not needed here: <stem>_probabilities.mrc"),
        (["extract_patches", "--coords-file", "c.csv"], "here, --centres"),
        (["retrain", "--finetune-learning-rate", "1e-5"], "here, --lr"),
        (["extract_patches", "--ckpt-path", "x"], "--ckpt-path: no such option"),
    ],
)
def test_membrain_seg_option_names_point_to_ours(run_cli, args, said):
    result = run_cli(*args)
    assert result.exit_code == 2 and len(result.output.splitlines()) == 1
    assert said in result.output
    if args[0] == "extract_patches" and args[1] == "--ckpt-path":
        assert "MemBrain-seg" not in result.output  # extract_patches takes no checkpoint


def test_without_pytorch_the_error_gives_an_install_command_that_works(tmp_path):
    code = (
        "import sys; sys.modules['torch'] = None; sys.argv[0] = 'patch_corrections'; "
        "from patch_corrections.cli import main; main()"
    )
    write_mrc(tmp_path / "t.mrc", np.zeros((8, 8, 8), np.float32))
    args = [
        "segment",
        "-t",
        str(tmp_path / "t.mrc"),
        "--checkpoint",
        str(SAMPLE / "starting_model.pt"),
    ]
    done = _shell(*args, "-o", str(tmp_path / "out"), code=code)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("Error: this command needs torch, which is not installed: ")
    assert (
        'pip install -e ".[train]"' in done.stderr
        and "patch_corrections[train]" not in done.stderr
    )


@pytest.mark.parametrize(
    ("checkpoint", "said"),
    [
        (
            Path(__file__).parent / "fixtures" / "membrain" / "membrain_tiny.ckpt",
            "recognised as MemBrain-seg's (filters 4…8); fed each tomogram's mean and "
            "standard deviation (z-score), axes x,y,z, trained at 10 Å.",
        ),
        (SAMPLE / "starting_model.pt", "trained with patch_corrections (filters 4…32)"),
    ],
    ids=["membrain", "ours"],
)
def test_segment_says_first_whose_network_it_runs_and_how_it_is_fed(
    tmp_path, run_cli, checkpoint, said
):
    write_mrc(tmp_path / "t.mrc", np.zeros((16, 16, 16), np.float32))
    args = ["-t", tmp_path / "t.mrc", "--checkpoint", checkpoint, "-o", tmp_path / "out"]
    result = run_cli("segment", *args, "--window", 64, "--device", "cpu")
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first.startswith(f"Network: {checkpoint.name}, ") and said in first
