"""Warnings from other libraries reach the user once and never stall a command."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
from conftest import write_mrc


def test_foreign_warning_is_passed_on_once_and_the_command_returns(tmp_path):
    # mrcfile warns (RuntimeWarning) when an MRC patch holding NaN is written.
    tomogram = np.zeros((12, 12, 12), np.float32)
    tomogram[:6] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        write_mrc(tmp_path / "tomo.mrc", tomogram)
    write_mrc(tmp_path / "seg.mrc", np.zeros((12, 12, 12), np.int8))
    command = [
        sys.executable,
        *("-W", "default"),
        *("-m", "patch_corrections", "extract_patches"),
        *("-t", tmp_path / "tomo.mrc", "-s", tmp_path / "seg.mrc", "-o", tmp_path / "out"),
        *("--x", "5", "--y", "5", "--z", "5", "--patch-size", "8", "--border", "1"),
        *("--format", "mrc"),
    ]
    run = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("RuntimeWarning: Data array contains NaN values") == 1
    assert "Extracted 1 patch pair(s)" in run.stdout
