"""The merge summary, ``merge_summary.json``: one row per training pair of a training
folder, written by ``merge_corrections`` and ``simulate_sparse``, read by ``retrain`` (each
patch's tomogram statistics, border band and padding) and ``paste_corrections``."""

from __future__ import annotations

import json
from pathlib import Path

from ..constants import MERGE_SUMMARY_NAME
from ..errors import warn


def summary_path(folder: Path) -> Path:
    """Where the merge summary of a training folder lives."""
    return Path(folder) / MERGE_SUMMARY_NAME


def summary_rows(path: Path, unreadable: str) -> dict[str, dict]:
    """The per-patch rows of a ``merge_summary.json`` by patch name (empty without one);
    a file that cannot be read is a warning that ends with ``unreadable``."""
    if not path.exists():
        return {}
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["patches"]
        return {r["name"]: r for r in rows if isinstance(r, dict) and "name" in r}
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        warn(f"{path}: unreadable; {unreadable}")
        return {}


def merged_rows(path: Path, rows: list[dict]) -> list[dict]:
    """This run's rows, plus those of the summary at ``path`` (an earlier run into the
    same folder) for other patches, by name."""
    earlier = summary_rows(path, "replaced by this run's summary")
    names = {r["name"] for r in rows}
    kept = [r for name, r in earlier.items() if name not in names]
    return sorted(kept + rows, key=lambda r: r["name"])


def summary_text(rows: list[dict], **fields) -> str:
    """The content of a merge summary: the rows, then ``fields``."""
    return json.dumps({"patches": rows, **fields}, indent=2) + "\n"


def recorded_statistics(folder: Path) -> dict[str, dict]:
    """The tomogram statistics ``merge_corrections`` recorded per patch of a training
    folder (from the extraction manifest), by patch name; empty for other folders."""
    try:
        rows = json.loads(summary_path(folder).read_text(encoding="utf-8")).get("patches", [])
    except (OSError, ValueError, AttributeError):
        return {}
    return {
        row["name"]: row["intensity_statistics"]
        for row in rows
        if isinstance(row, dict) and isinstance(row.get("intensity_statistics"), dict)
    }
