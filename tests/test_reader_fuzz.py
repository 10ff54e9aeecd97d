"""Damaged files, generated: every read either gives the declared shape or one InputError.

Each format's small file is mutated by a seeded generator (cuts, bit flips, random bytes,
header fields set to extreme values; for gzip files, both the compressed stream and the
file inside it). Reading a mutant may succeed (a flipped bit in raw data cannot be seen) or
raise InputError with one line naming the file; any other exception is a reader bug.
"""

from __future__ import annotations

import gzip
import tracemalloc
import warnings
import zlib
from pathlib import Path

import nrrd
import numpy as np
import pytest

from patch_corrections.errors import InputError
from patch_corrections.io.volumes import Geometry, read_volume, write_volume

SHAPE = (6, 7, 8)  # z, y, x
MUTANTS = 30
FORMATS = ["v.mrc", "v.nrrd", "gzip.nrrd", "v.nii", "v.nii.gz"]
EXTREMES = (0, 1, -1, 2, 3, 4, 101, 352, 1024, 2**15 - 1, -(2**15), 2**31 - 1, -(2**31))
NRRD_TOKENS = (
    b"-1",
    b"0",
    b"2",
    b"99999999999",
    b"1e400",
    b"nan",
    b"raw",
    b"gzip",
    b"bzip2",
    b"ascii",
    b"double",
    b"big",
    b"(1,0,0)",
    b"none",
    b"/dev/null",
    b"\xff\xfe",
)
NRRD_FIELDS = (b"byte skip", b"line skip", b"data file", b"encoding", b"endian", b"sizes")


def _data() -> np.ndarray:
    return np.random.default_rng(5).normal(size=SHAPE).astype(np.float32)


def _write(path: Path) -> None:
    if path.name == "gzip.nrrd":  # write_volume stores float data raw
        nrrd.write(str(path), _data(), {"encoding": "gzip"}, index_order="C")
    else:
        write_volume(path, _data(), Geometry((1.0, 2.0, 3.0), (4.0, 5.0, 6.0)))


def _header_length(name: str, blob: bytes) -> int:
    if name.endswith(".mrc"):
        return 1024
    if name.endswith(".nrrd"):
        return blob.index(b"\n\n") + 2
    return 352


def _set_field(rng: np.random.Generator, name: str, blob: bytearray) -> bytearray:
    """One header field set to an extreme value, in the way the format stores it."""
    value = int(rng.choice(EXTREMES))
    if name.endswith(".mrc"):  # 56 four-byte words before the labels
        at = 4 * int(rng.integers(56))
        blob[at : at + 4] = np.int32(value).tobytes()
    elif name.endswith(".nii"):  # dims, datatype, bitpix, pixdims, vox_offset, scaling
        at = 2 * int(rng.integers(20, 62))
        if at < 76:
            blob[at : at + 2] = np.int16(np.clip(value, -(2**15), 2**15 - 1)).tobytes()
        else:
            at -= at % 4
            number = rng.choice([0.0, -1.0, 1e30, np.nan, np.inf, 352.5, float(value)])
            blob[at : at + 4] = np.float32(number).tobytes()
    else:
        end = blob.index(b"\n\n")
        lines = bytes(blob[:end]).split(b"\n")
        token = NRRD_TOKENS[int(rng.integers(len(NRRD_TOKENS)))]
        row = int(rng.integers(1, len(lines)))
        if rng.integers(3) == 0:
            field = NRRD_FIELDS[int(rng.integers(len(NRRD_FIELDS)))]
            lines.insert(row, field + b": " + token)
        else:
            key, _, values = lines[row].partition(b": ")
            words = values.split(b" ")
            words[int(rng.integers(len(words)))] = token
            lines[row] = key + b": " + b" ".join(words)
        blob = bytearray(b"\n".join(lines) + blob[end:])
    return blob


def _mutant(rng: np.random.Generator, name: str, original: bytes) -> tuple[str, bytes]:
    """A mutation of ``original`` (a file called ``name``) and what was done."""
    blob = bytearray(original)
    kind = ("cut", "flips", "header flips", "random bytes", "field")[int(rng.integers(5))]
    if kind == "cut":
        return kind, bytes(blob[: int(rng.integers(len(blob)))])
    if kind == "field" and not name.endswith(".gz"):
        return kind, bytes(_set_field(rng, name, blob))
    if kind == "random bytes":
        at, count = int(rng.integers(256)), int(rng.integers(1, 17))
        blob[at : at + count] = rng.integers(0, 256, count, dtype=np.uint8).tobytes()
        return kind, bytes(blob)
    end = len(blob) if kind != "header flips" else min(_header_length(name, blob), len(blob))
    for _ in range(int(rng.integers(1, 9))):
        blob[int(rng.integers(end))] ^= 1 << int(rng.integers(8))
    return kind, bytes(blob)


def _problem(path: Path, checked: bool) -> str | None:
    """What is wrong with reading ``path``, or None. ``checked``: its gzip is damaged, so
    a read must give the original data."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data, info = read_volume(path)
    except InputError as exc:
        text = str(exc)
        if "\n" in text or str(path) not in text:
            return f"InputError not one line naming the file: {text!r}"
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    if not isinstance(data, np.ndarray) or data.shape != info.shape:
        return f"read shape {getattr(data, 'shape', None)}, declared {info.shape}"
    if checked and not np.array_equal(data, _data(), equal_nan=True):
        return "damaged gzip data read without error"
    return None


@pytest.mark.parametrize("name", FORMATS)
def test_damaged_files_read_or_give_one_input_error(tmp_path, name):
    original_path = tmp_path / f"original_{name}"
    _write(original_path)
    original = original_path.read_bytes()
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    path = tmp_path / name
    problems = []
    for i in range(MUTANTS):
        inner = name.endswith(".gz") and i % 2 == 0
        if inner:  # the file inside the gzip stream, compressed again
            kind, mutant = _mutant(rng, name[:-3], gzip.decompress(original))
            kind, mutant = f"inner {kind}", gzip.compress(mutant)
        else:
            kind, mutant = _mutant(rng, name, original)
        path.write_bytes(mutant)
        problem = _problem(path, checked=name.endswith(".gz") and not inner)
        if problem:
            problems.append(f"mutant {i} ({kind}): {problem}")
    assert problems == []


def _huge(name: str, blob: bytes) -> bytes:
    """``blob`` with its header declaring 1500 x 1600 x 1700 voxels (16 GB of float32)."""
    if name.endswith(".mrc"):
        sizes = np.array([1700, 1600, 1500], "<i4").tobytes()
        return sizes + blob[12:]
    if name.endswith(".nrrd"):
        return blob.replace(b"sizes: 8 7 6", b"sizes: 1700 1600 1500", 1)
    if name.endswith(".gz"):
        return gzip.compress(_huge(name[:-3], gzip.decompress(blob)))
    return blob[:42] + np.array([1700, 1600, 1500], "<i2").tobytes() + blob[48:]


@pytest.mark.parametrize("name", FORMATS)
def test_a_huge_declared_shape_is_refused_before_allocating(tmp_path, name):
    path = tmp_path / name
    _write(path)
    blob = path.read_bytes()
    path.write_bytes(_huge(name, blob))
    assert path.read_bytes() != blob
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=name):
            read_volume(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20
