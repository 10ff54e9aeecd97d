"""How many CPU threads PyTorch computes with.

PyTorch's own default, every core, makes a run several times slower when other programs
already keep the cores busy: its threads wait on each other. So a run takes what it is
told (``--threads``, else ``$OMP_NUM_THREADS``), else the physical cores it may use less
those other programs keep busy now. PyTorch is imported only to set the number.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from ..errors import InputError


def check_threads(requested: int | None) -> None:
    """Refuse a ``--threads`` below 1 (also where no network runs, so it is never ignored)."""
    if requested is not None and requested < 1:
        raise InputError(f"--threads must be at least 1, got {requested}")


def set_threads(requested: int | None) -> str | None:
    """Set PyTorch's CPU threads: ``requested``; else ``$OMP_NUM_THREADS`` (a choice already
    made, by the user or the cluster); else :func:`usable_cores` less the load on them.

    Returns a line for the user when the load left fewer threads than cores, else ``None``
    (also when PyTorch is not installed: the command that needs it says what to install).
    """
    check_threads(requested)
    try:
        import torch
    except ImportError:
        return None
    if requested is None:
        given = os.environ.get("OMP_NUM_THREADS", "").strip()
        requested = int(given) if given.isdigit() and int(given) > 0 else None
    if requested is not None:
        torch.set_num_threads(requested)
        return None
    cores = usable_cores()
    load = load_on_our_cores()
    # Whole cores only: a program that keeps a core busy part of the time leaves it to us.
    threads = max(1, min(cores, cores - math.floor(load)))
    torch.set_num_threads(threads)
    if threads < cores:
        return (
            f"Using {threads} of {cores} CPU cores for PyTorch: other programs keep the "
            f"others busy ({load:.1f} CPUs busy now); --threads chooses."
        )
    return None


def load_on_our_cores() -> float:
    """CPUs busy now (:func:`busy_cpus`), when they are the cores this process may use: only
    when they are all the machine has. A job given some cores of a shared node (taskset, a
    SLURM allocation) does not share them with the node's other jobs, whatever their load."""
    try:
        mine = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on every platform
        return 0.0
    return busy_cpus() if mine >= (os.cpu_count() or mine) else 0.0


SAMPLE_SECONDS = 0.2
"""How long :func:`busy_cpus` watches the machine."""


def busy_cpus() -> float:
    """How many CPUs other programs keep busy now, over :data:`SAMPLE_SECONDS`.

    Not the load average: a run of this tool that ended a minute ago still weighs in it,
    so a second run on an idle machine took fewer threads (and trained a slightly
    different model). From ``/proc/stat`` where there is one, else the one-minute load.
    """
    first = _cpu_times()
    if first is not None:
        time.sleep(SAMPLE_SECONDS)
        second = _cpu_times()
        if second is not None and second[1] > first[1]:
            busy, total = second[0] - first[0], second[1] - first[1]
            return busy / total * (os.cpu_count() or 1)
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def _cpu_times() -> tuple[int, int] | None:
    """Busy and total jiffies of all CPUs since boot (``/proc/stat``'s ``cpu`` line)."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(v) for v in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    if len(fields) < 5:
        return None
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def usable_cores() -> int:
    """Physical CPU cores this process may use: its CPU affinity (what taskset or a SLURM
    allocation grant), hyperthreads of one core counted once (Linux), capped by a cgroup
    CPU quota (a container's ``--cpus``)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(topology.read_text().strip())
        except OSError:
            cores.add(str(cpu))
    count = len(cores)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)
