"""How much host memory a run may take, and the up-front check of a size option against
it: a patch, window or batch too large for the machine is one line before anything is
allocated, not a traceback (or the kernel's out-of-memory killer) later."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError

_CGROUP = Path("/sys/fs/cgroup")


def available_memory() -> int | None:
    """Bytes of host memory this process may still take: the kernel's estimate of what
    is available, less where a container's memory limit leaves less; ``None`` where
    neither can be read."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = (_CGROUP / "memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int((_CGROUP / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    return max(0, min(found))


def size_text(nbytes: float) -> str:
    """``nbytes`` in the largest binary unit that keeps it at least 1 (``3.6 PiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(nbytes) < 1024:
            return f"{nbytes:.3g} {unit}"
        nbytes /= 1024
    return f"{nbytes:.3g} PiB"


def require_memory(needed: int, what: str, advice: str, free: int | None = None) -> None:
    """``InputError`` when ``what`` needs more than the ``free`` bytes (default: the host
    memory available now); ``advice`` says which option to change."""
    where = "" if free is not None else "host "
    free = available_memory() if free is None else free
    if free is not None and needed > free:
        raise InputError(
            f"{what} needs about {size_text(needed)} of {where}memory, more than the "
            f"{size_text(free)} free; {advice}"
        )
