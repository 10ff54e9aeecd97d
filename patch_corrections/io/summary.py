"""The merge summary, ``merge_summary.json``: one row per training pair of a training
folder, written by ``merge_corrections`` and ``simulate_sparse``, read by ``retrain`` (each
patch's tomogram statistics, border band and padding) and ``paste_corrections``. A row's
``painted_in_band`` says whether its band kept the voxels painted in it as labels."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..constants import MERGE_SUMMARY_NAME
from ..errors import InputError, warn
from .names import is_plain_name


def summary_path(folder: Path) -> Path:
    """Where the merge summary of a training folder lives."""
    return Path(folder) / MERGE_SUMMARY_NAME


def summary_rows(path: Path, unreadable: str) -> dict[str, dict]:
    """The per-patch rows of a ``merge_summary.json`` by patch name (empty without one);
    a file that cannot be read is a warning that ends with ``unreadable``.

    Raises
    ------
    InputError
        For a row whose name is not a plain file name or whose ``image`` or ``label``
        names a path outside the summary's folder.
    """
    if not path.exists():
        return {}
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["patches"]
        rows = [r for r in rows if isinstance(r, dict) and "name" in r]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        warn(f"{path}: unreadable; {unreadable}")
        return {}
    for index, row in enumerate(rows):
        _check_row(path, index, row)
    return {r["name"]: r for r in rows}


def _check_row(path: Path, index: int, row: dict) -> None:
    # Rows are copied into the next summary of the folder: nothing may point out of it.
    if not is_plain_name(row["name"]):
        raise InputError(
            f"{path}: row {index} has the name {row['name']!r}; a patch name must be a plain "
            "file name"
        )
    for key in ("image", "label"):
        value = row.get(key)
        if value is not None and not _names_inside(path.parent, value):
            raise InputError(
                f"{path}: patch {row['name']!r} names the {key} {row[key]!r}, outside the "
                "folder; a summary may only name files inside it"
            )


def _names_inside(folder: Path, value: object) -> bool:
    """Whether ``value`` names a path inside ``folder`` as written (links are the rule of
    the trees' readers: followed with a warning); summaries written before paths were
    relative name the folder absolutely."""
    if not isinstance(value, str) or not value:
        return False
    if not Path(value).is_absolute():
        return not os.path.normpath(value).startswith("..")
    path = Path(os.path.normpath(value))
    return any(
        path.is_relative_to(root) for root in (Path(os.path.abspath(folder)), folder.resolve())
    )


def row_files(folder: Path, image: Path, label: Path) -> dict[str, str]:
    """A row's ``image`` and ``label`` fields: the pair's files relative to the summary's
    ``folder``, so that the folder can be moved."""
    root = Path(folder).resolve()
    return {
        key: (file.parent.resolve() / file.name).relative_to(root).as_posix()
        for key, file in (("image", Path(image)), ("label", Path(label)))
    }


def earlier_rows(folder: Path) -> dict[str, dict]:
    """The rows of the summary an earlier run left in the training ``folder`` a run is
    about to write, read (and checked) before anything is written."""
    return summary_rows(summary_path(folder), "replaced by this run's summary")


def merged_rows(earlier: dict[str, dict], rows: list[dict]) -> list[dict]:
    """This run's rows, plus the ``earlier`` ones (see :func:`earlier_rows`) of other
    patches, by name."""
    names = {r["name"] for r in rows}
    kept = [r for name, r in earlier.items() if name not in names]
    return sorted(kept + rows, key=lambda r: r["name"])


def painted_in_band(row: dict) -> bool:
    """Whether the merge of a summary row kept the Add and Remove voxels painted inside
    the border band as labels (``merge_corrections --painted-in-band``); rows written
    before merges recorded it had the band cover them."""
    return bool(row.get("painted_in_band", False))


def warn_other_band_choice(folder: Path, earlier: dict[str, dict], names, chosen: bool) -> None:
    """Warn of the ``earlier`` rows (see :func:`earlier_rows`) of the training ``folder``
    that a merge of the patches ``names`` keeps although they were merged with the other
    band choice than its ``chosen`` one, where that mattered: a corrected patch with
    voxels painted in the band (or not counted)."""
    other = [
        name
        for name, row in earlier.items()
        if name not in names
        and painted_in_band(row) != chosen
        and row.get("corrected", True)
        and row.get("band_painted") != 0
    ]
    if other:
        was, now = ("without", "with") if chosen else ("with", "without")
        warn(
            f"{summary_path(folder)}: {len(other)} earlier patch(es) ({', '.join(other[:3])}) "
            f"stay as merged {was} --painted-in-band, this run's {now}; each row records its "
            "choice (merge them again with --overwrite to make the folder one)"
        )


def summary_text(rows: list[dict], **fields) -> str:
    """The content of a merge summary: the rows, then ``fields``."""
    return json.dumps({"patches": rows, **fields}, indent=2) + "\n"


def recorded_statistics(folder: Path) -> dict[str, dict]:
    """The tomogram statistics ``merge_corrections`` recorded per patch of a training
    folder (from the extraction manifest), by patch name; empty for other folders."""
    rows = summary_rows(summary_path(folder), "patches are normalised with their own statistics")
    return {
        name: row["intensity_statistics"]
        for name, row in rows.items()
        if isinstance(row.get("intensity_statistics"), dict)
    }
