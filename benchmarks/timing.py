"""Running a whole command under ``/usr/bin/time -v``: wall time and peak RSS."""

from __future__ import annotations

import re
import subprocess
import time


def run_timed(command: list[str]) -> tuple[float, int, str]:
    """Run ``command``; return wall seconds, peak RSS in kB (mapped file pages included)
    and its standard output. Exits with the command's output if it fails."""
    started = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)[1])
    return wall, rss, done.stdout
