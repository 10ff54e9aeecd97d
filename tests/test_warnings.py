"""Warnings from other libraries reach the user once and never stall a command."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from conftest import write_mrc


def test_foreign_warning_is_passed_on_once_and_the_command_returns(tmp_path):
    # A library that warns while a patch is cut (as mrcfile does for some data): the
    # command is run through a wrapper that makes patch cutting emit a RuntimeWarning.
    write_mrc(tmp_path / "tomo.mrc", np.zeros((12, 12, 12), np.float32))
    write_mrc(tmp_path / "seg.mrc", np.zeros((12, 12, 12), np.int8))
    wrapper = (
        "import sys, warnings\n"
        "import patch_corrections.workflows.extraction as extraction\n"
        "cut = extraction.image_patch\n"
        "def noisy(*args, **kwargs):\n"
        "    warnings.warn('a library complains', RuntimeWarning)\n"
        "    return cut(*args, **kwargs)\n"
        "extraction.image_patch = noisy\n"
        "from patch_corrections.cli import main\n"
        "sys.argv[0] = 'patch_corrections'\n"
        "main()\n"
    )
    command = [
        sys.executable,
        *("-W", "default", "-c", wrapper, "extract_patches"),
        *("-t", tmp_path / "tomo.mrc", "-s", tmp_path / "seg.mrc", "-o", tmp_path / "out"),
        *("--x", "5", "--y", "5", "--z", "5", "--patch-size", "8", "--border", "1"),
        *("--format", "mrc"),
    ]
    run = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("RuntimeWarning: a library complains") == 1, run.stderr
    assert "Extracted 1 patch pair(s)" in run.stdout
