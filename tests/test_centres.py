"""Centre files: the layouts users have, and errors that name the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from patch_corrections.errors import InputError
from patch_corrections.io.centres import parse_centres, read_centres

FILE = Path("c.csv")


@pytest.mark.parametrize(
    "text",
    [
        "10,20,30\n1.5,2.5,3.5\n",
        "x,y,z\n10,20,30\n1.5,2.5,3.5\n",
        "10 20 30\n1.5\t2.5   3.5\n",
        "# picked in IMOD\n\nX Y Z\n10 20 30\n\n1.5 2.5 3.5\n",
        "z,x,y,score\n30,10,20,0.9\n3.5,1.5,2.5,0.1\n",
        # napari: index column, then axis-0..2 = z, y, x
        "index,axis-0,axis-1,axis-2\n0,30,20,10\n1,3.5,2.5,1.5\n",
    ],
)
def test_layouts_give_xyz(text):
    centres = parse_centres(text, FILE)
    assert [c.xyz for c in centres] == [(10, 20, 30), (1.5, 2.5, 3.5)]


def test_source_names_file_and_line():
    centres = parse_centres("x,y,z\n\n1,2,3\n", FILE)
    assert centres[0].source == "c.csv:3"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,2,3\n4,5\n", "c.csv:2: expected 3 values x, y, z, found 2"),
        ("1,2,3\n4,five,6\n", "c.csv:2: not a number"),
        ("a,b,c\n1,2,3\n", "c.csv:1: header a, b, c names no x, y, z columns"),
        ("1,2,nan\n", "c.csv:1: coordinates must be finite"),
        ("# nothing\n\n", "c.csv: no centres found"),
        ("x,y,z,extra\n1,2\n", "c.csv:2: expected 4 columns as the header names, found 2"),
    ],
)
def test_bad_rows(text, message):
    with pytest.raises(InputError, match=message):
        parse_centres(text, FILE)


def test_read_centres_missing_file(tmp_path):
    with pytest.raises(InputError, match="centres file not found"):
        read_centres(tmp_path / "none.csv")


def test_read_centres_with_byte_order_mark(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes("\ufeffx,y,z\n1,2,3\n".encode())
    assert read_centres(path)[0].xyz == (1, 2, 3)


def test_comma_file_keeps_spaces_inside_fields():
    centres = parse_centres("name,x,y,z\nves 1,10,20,5\n", FILE)
    assert centres[0].xyz == (10, 20, 5)


def test_empty_field_is_not_skipped():
    with pytest.raises(InputError, match=r"c\.csv:1: expected 3 values x, y, z, found 4"):
        parse_centres("1,,2,3\n", FILE)
