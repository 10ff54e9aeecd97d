"""Patch centres in text files: read (any layout below), and written as ``suggest`` writes
them.

Accepted layouts, one centre per row:

- ``x, y, z`` values separated by commas or white space, with or without a header line
  (a header naming ``x``, ``y`` and ``z`` may put them in any order and carry other columns);
- napari's points CSV, whose columns ``axis-0, axis-1, axis-2`` are ``z, y, x``.

Blank lines and lines starting with ``#`` are skipped. Centres are returned as ``x, y, z``
floats with the place they came from, for error messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError


@dataclass(frozen=True)
class Centre:
    """A requested patch centre as the user gave it.

    Attributes
    ----------
    xyz
        Coordinates ``(x, y, z)``, in voxels or Å as the command was told.
    source
        Where it came from, e.g. ``centres.csv:4`` or ``--x/--y/--z``.
    """

    xyz: tuple[float, float, float]
    source: str


def _delimiter(line: str) -> str | None:
    """The file's field separator, from its first line; ``None`` means runs of white space."""
    for candidate in (",", ";", "\t"):
        if candidate in line:
            return candidate
    return None


def _fields(line: str, delimiter: str | None) -> list[str]:
    return [f.strip().strip('"').strip("'") for f in line.strip().split(delimiter)]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _columns_from_header(path: Path, number: int, names: list[str]) -> tuple[int, int, int]:
    """Column indices of ``x, y, z`` given a header line."""
    lowered = [n.lower() for n in names]
    if all(a in lowered for a in ("axis-0", "axis-1", "axis-2")):
        # napari: axis-0 is z, axis-2 is x.
        return (lowered.index("axis-2"), lowered.index("axis-1"), lowered.index("axis-0"))
    if all(a in lowered for a in ("x", "y", "z")):
        return (lowered.index("x"), lowered.index("y"), lowered.index("z"))
    raise InputError(
        f"{path}:{number}: header {', '.join(names)} names no x, y, z columns; "
        "use 'x,y,z' or napari's 'axis-0,axis-1,axis-2' (z,y,x), or no header"
    )


def parse_centres(text: str, path: Path) -> list[Centre]:
    """Parse the contents of a centres file; ``path`` is only used in messages."""
    centres: list[Centre] = []
    columns: tuple[int, int, int] | None = None
    header: list[str] | None = None
    delimiter: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if header is None and not centres:
            delimiter = _delimiter(line)
        fields = _fields(line, delimiter)
        if columns is None and not centres and not all(_is_number(f) for f in fields if f):
            columns = _columns_from_header(path, number, fields)
            header = fields
            continue
        if columns is None:
            columns = (0, 1, 2)
        if header is None and len(fields) != 3:
            raise InputError(
                f"{path}:{number}: expected 3 values x, y, z, found {len(fields)}: "
                f"{line.strip()!r}"
            )
        if len(fields) <= max(columns):
            raise InputError(
                f"{path}:{number}: expected {len(header or ())} columns as the header "
                f"names, found {len(fields)}: {line.strip()!r}"
            )
        try:
            x, y, z = (float(fields[c]) for c in columns)
        except ValueError:
            raise InputError(f"{path}:{number}: not a number in {line.strip()!r}") from None
        if not all(abs(v) < float("inf") for v in (x, y, z)):
            raise InputError(f"{path}:{number}: coordinates must be finite: {line.strip()!r}")
        centres.append(Centre((x, y, z), f"{path}:{number}"))
    if not centres:
        raise InputError(f"{path}: no centres found (expected rows of x, y, z)")
    return centres


def read_centres(path: Path) -> list[Centre]:
    """Read centres from a CSV or whitespace-separated text file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: centres file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file of x, y, z rows") from None
    return parse_centres(text, path)


def centres_tables(rows: list[tuple[tuple[int, int, int], float, str]]) -> tuple[str, str]:
    """A centres file and a napari points CSV of ranked centres ``(x, y, z)``, each with
    its score and reason (no commas in it), best first: ``x,y,z,score,reason`` rows, which
    :func:`read_centres` reads, and napari's ``index,axis-0,axis-1,axis-2,score`` (``axis-0``
    is ``z``)."""
    centres = ["x,y,z,score,reason"]
    points = ["index,axis-0,axis-1,axis-2,score"]
    for index, ((x, y, z), score, reason) in enumerate(rows):
        centres.append(f"{x},{y},{z},{score:.5g},{reason}")
        points.append(f"{index},{z},{y},{x},{score:.5g}")
    return "\n".join(centres) + "\n", "\n".join(points) + "\n"
