"""Damaged and quirky volume files: gzip checks (NIfTI, NRRD) and permissive MRC headers."""

from __future__ import annotations

import gzip
import warnings
import zlib

import mrcfile
import nibabel
import nrrd
import numpy as np
import pytest
from conftest import write_mrc

from patch_corrections.errors import InputError, PatchCorrectionsWarning
from patch_corrections.io.volumes import (
    Geometry,
    open_volume,
    read_info,
    read_volume,
    write_volume,
)

SHAPE = (6, 7, 8)  # z, y, x
GEOMETRY = Geometry((3.0, 2.0, 1.5), (30.0, -20.0, 10.0))


def _image() -> np.ndarray:
    return np.random.default_rng(3).normal(size=SHAPE).astype(np.float32)


def _mask() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 4, size=(8, 16, 16)).astype(np.uint8)


def _silently_corrupted(blob: bytes, start: int) -> bytes:
    """``blob`` with one byte flipped in the second half of its gzip stream (from byte
    ``start`` on), so that the stream still decompresses to data of the same length but
    other values: only its CRC tells."""
    original = gzip.decompress(blob[start:])
    for i in range(start + (len(blob) - start) // 2, len(blob) - 8):
        damaged = bytearray(blob)
        damaged[i] ^= 0x10
        try:
            inflated = zlib.decompressobj(31).decompress(damaged[start:-8])  # without checks
        except zlib.error:
            continue
        if len(inflated) == len(original) and inflated != original:
            with pytest.raises(gzip.BadGzipFile, match="CRC check failed"):
                gzip.decompress(damaged[start:])
            return bytes(damaged)
    raise AssertionError("no byte flip that only the CRC catches")


def _one_warning(caught: list[warnings.WarningMessage]) -> str:
    assert [w.category for w in caught] == [PatchCorrectionsWarning]
    text = str(caught[0].message)
    assert "\n" not in text
    return text


def test_corrupt_nii_gz_is_refused(tmp_path):
    path = tmp_path / "image.nii.gz"
    write_volume(path, _image(), GEOMETRY)
    path.write_bytes(_silently_corrupted(path.read_bytes(), 0))
    # nibabel stops before the CRC: it reads other data without a word.
    changed = np.asarray(nibabel.load(str(path)).dataobj)
    assert changed.shape == SHAPE[::-1] and not np.array_equal(changed, _image().transpose())

    with pytest.raises(InputError) as caught:
        read_volume(path)
    message = str(caught.value)
    assert message == f"{path}: corrupt gzip data (CRC check failed); the file is damaged"
    with pytest.raises(InputError, match="CRC check failed"):
        open_volume(path)
    assert read_info(path).shape == SHAPE  # header-only reads do not decompress it all


@pytest.mark.parametrize(
    ("cut", "message"),
    [
        (4, "its gzip data ends early; the file is truncated"),  # no ISIZE
        (8, "its gzip data ends early; the file is truncated"),  # no CRC nor ISIZE
    ],
)
def test_nii_gz_without_its_gzip_trailer(tmp_path, cut, message):
    path = tmp_path / "image.nii.gz"
    write_volume(path, _image(), GEOMETRY)
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(InputError) as caught:
        read_volume(path)
    assert str(caught.value) == f"{path}: {message}"


def test_nii_gz_wrong_length_in_trailer(tmp_path):
    path = tmp_path / "image.nii.gz"
    write_volume(path, _image(), GEOMETRY)
    blob = bytearray(path.read_bytes())
    blob[-4] ^= 0x01  # ISIZE
    path.write_bytes(bytes(blob))
    with pytest.raises(InputError, match=r"image\.nii\.gz: corrupt gzip data \(length check"):
        read_volume(path)


def test_nii_gz_in_several_gzip_members_is_read(tmp_path):
    path = tmp_path / "image.nii.gz"
    write_volume(path, _image(), GEOMETRY)
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:500]) + gzip.compress(raw[500:]))
    data, info = read_volume(path)
    np.testing.assert_array_equal(data, _image())
    assert info.geometry == GEOMETRY


def test_truncated_nii_is_refused_when_opened(tmp_path):
    path = tmp_path / "image.nii"
    write_volume(path, _image(), GEOMETRY)
    path.write_bytes(path.read_bytes()[:-4])
    expected = f"{path}: cannot read its data (the file is truncated: 1692 bytes, the header"
    for read in (read_info, open_volume, read_volume):
        with pytest.raises(InputError) as caught:
            read(path)
        assert str(caught.value).startswith(expected)


def _gzip_nrrd(tmp_path):
    path = tmp_path / "mask.nrrd"
    write_volume(path, _mask(), GEOMETRY)
    blob = path.read_bytes()
    start = blob.index(b"\n\n") + 2
    assert nrrd.read_header(str(path))["encoding"] == "gzip"
    assert blob[start : start + 2] == b"\x1f\x8b"
    return path, blob, start


def test_gzip_nrrd_with_a_bad_crc(tmp_path):
    path, blob, _ = _gzip_nrrd(tmp_path)
    damaged = bytearray(blob)
    damaged[-8] ^= 0x01  # the CRC itself
    path.write_bytes(bytes(damaged))
    with pytest.raises(InputError) as caught:
        read_volume(path)
    assert (
        str(caught.value) == f"{path}: corrupt gzip data (CRC check failed); the file is damaged"
    )


def test_gzip_nrrd_without_its_trailer(tmp_path):
    # Damaged data whose stream lacks the CRC: pynrrd reads other data without a word.
    path, blob, start = _gzip_nrrd(tmp_path)
    damaged = _silently_corrupted(blob, start)[:-8]
    path.write_bytes(damaged)
    changed, _ = nrrd.read(str(path), index_order="C")
    assert changed.shape == _mask().shape and not np.array_equal(changed, _mask())

    with pytest.raises(InputError) as caught:
        read_volume(path)
    assert str(caught.value) == f"{path}: its gzip data ends early; the file is truncated"


def test_gzip_nrrd_with_more_data_than_its_header_says(tmp_path):
    path, blob, start = _gzip_nrrd(tmp_path)
    extra = gzip.compress(gzip.decompress(blob[start:]) + bytes(10))
    path.write_bytes(blob[:start] + extra)
    with pytest.raises(InputError) as caught:
        read_volume(path)
    assert str(caught.value) == f"{path}: its gzip data holds 2058 bytes, the header says 2048"


def test_detached_gzip_nrrd_names_its_damaged_data_file(tmp_path):
    path = tmp_path / "mask.nhdr"
    nrrd.write(str(path), _mask(), {"encoding": "gzip"}, detached_header=True, index_order="C")
    data_file = tmp_path / "mask.raw.gz"
    damaged = bytearray(data_file.read_bytes())
    damaged[-8] ^= 0x01
    data_file.write_bytes(bytes(damaged))
    with pytest.raises(InputError) as caught:
        read_volume(path)
    assert str(caught.value) == (
        f"{data_file}: corrupt gzip data (CRC check failed); the file is damaged"
    )


@pytest.mark.parametrize("encoding", ["raw", "gzip"])
def test_detached_nrrd_data_file_must_be_a_file(tmp_path, encoding):
    path = tmp_path / "mask.nhdr"
    nrrd.write(str(path), _mask(), {"encoding": encoding}, detached_header=True, index_order="C")
    text = path.read_text()
    name = next(line for line in text.splitlines() if line.startswith("data file:"))
    # A device would be read forever.
    path.write_text(text.replace(name, "data file: /dev/zero"))
    with pytest.raises(InputError, match=r"mask\.nhdr: its data file /dev/zero is not a file"):
        read_volume(path)


def _patched_mrc(tmp_path, data, patches, name="quirk.mrc"):
    path = write_mrc(tmp_path / name, data, voxel_size=(1.5, 2.0, 3.0), origin=(10, -20, 30))
    blob = bytearray(path.read_bytes())
    for offset, value in patches:
        blob[offset : offset + len(value)] = value
    path.write_bytes(bytes(blob))
    return path


@pytest.mark.parametrize(
    ("patches", "quirks"),
    [
        ([(212, bytes(4))], ["Unrecognised machine stamp: 0x00 0x00 0x00 0x00"]),
        ([(212, b"\x12\x34\x00\x00")], ["Unrecognised machine stamp: 0x12 0x34 0x00 0x00"]),
        ([(208, bytes(4))], ["Map ID string not found"]),
        ([(208, b"    "), (212, bytes(4))], ["Map ID string not found", "machine stamp"]),
    ],
)
def test_mrc_header_quirks_are_read_with_one_warning(tmp_path, patches, quirks):
    path = _patched_mrc(tmp_path, _image(), patches)
    with pytest.raises(ValueError):  # as mrcfile itself refuses it
        with mrcfile.open(path, permissive=False):
            pass
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data, info = read_volume(path)
    text = _one_warning(caught)
    assert text.startswith(f"{path}: MRC header quirks (")
    assert all(quirk in text for quirk in quirks) and "little-endian" in text
    np.testing.assert_array_equal(data, _image())
    assert info.geometry == GEOMETRY


def test_a_deprecation_inside_mrcfile_is_no_header_quirk(tmp_path, monkeypatch):
    # NumPy 2.5 deprecates the ``header.dtype = ...`` that mrcfile runs on every header:
    # that says nothing about the user's file, which reads without a warning.
    import mrcfile.mrcinterpreter

    original = mrcfile.mrcinterpreter.MrcInterpreter._read_header

    def deprecated(self, *args, **kwargs):
        message = "Setting the dtype on a NumPy array has been deprecated"
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        return original(self, *args, **kwargs)

    path = write_mrc(tmp_path / "clean.mrc", _image(), voxel_size=(1.5, 2.0, 3.0))
    quirky = _patched_mrc(tmp_path, _image(), [(212, bytes(4))])
    monkeypatch.setattr(mrcfile.mrcinterpreter.MrcInterpreter, "_read_header", deprecated)
    data, _ = read_volume(path)  # the suite turns any warning into an error
    np.testing.assert_array_equal(data, _image())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_volume(quirky)
    assert "deprecated" not in _one_warning(caught)


@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.int8])
def test_big_endian_mrc_without_machine_stamp(tmp_path, dtype):
    data = (_image() * 20).astype(dtype)
    path = write_mrc(tmp_path / "big.mrc", data, voxel_size=(1.5, 2.0, 3.0))
    blob = bytearray(path.read_bytes())
    header = np.frombuffer(blob[:1024], mrcfile.dtypes.HEADER_DTYPE)
    blob[:1024] = header.astype(header.dtype.newbyteorder(">")).tobytes()
    blob[1024:] = data.astype(data.dtype.newbyteorder(">")).tobytes()
    blob[212:216] = b"\x11\x11\x00\x00"
    path.write_bytes(bytes(blob))
    read, info = read_volume(path)  # with its stamp: native byte order in memory
    np.testing.assert_array_equal(read, data)
    assert read.dtype == dtype and info.dtype == dtype

    blob[212:216] = bytes(4)
    path.write_bytes(bytes(blob))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read, info = read_volume(path)
    assert "big-endian" in _one_warning(caught)
    np.testing.assert_array_equal(read, data)
    assert read.dtype == dtype and info.geometry == Geometry((3.0, 2.0, 1.5))


@pytest.mark.parametrize("stamp", [b"\x44\x44\x00\x00", bytes(4)])
def test_mrc_with_an_unknown_mode_is_refused(tmp_path, stamp):
    path = _patched_mrc(tmp_path, _image(), [(12, np.int32(3).tobytes()), (212, stamp)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(InputError) as refused:
            read_volume(path)
    assert caught == []
    message = str(refused.value)
    assert message == f"{path}: unsupported MRC data mode (Unrecognised mode '3')"


def test_mrc_without_map_id_that_describes_no_volume(tmp_path):
    path = _patched_mrc(tmp_path, _image(), [(208, bytes(4)), (12, np.int32(99).tobytes())])
    with pytest.raises(InputError) as refused:
        read_volume(path)
    assert str(refused.value) == (
        f"{path}: not a readable MRC file (Map ID string not found - not an MRC file, or file "
        "is corrupt; unsupported MRC data mode (Unrecognised mode '99'))"
    )


def test_truncated_mrc_with_a_quirk_is_refused(tmp_path):
    path = _patched_mrc(tmp_path, _image(), [(212, bytes(4))])
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(InputError, match=r"quirk\.mrc: MRC file is truncated \(2367 bytes"):
        read_volume(path)


def test_compressed_mrc_is_refused(tmp_path):
    path = write_mrc(tmp_path / "t.mrc", _image())
    path.write_bytes(gzip.compress(path.read_bytes()))
    with pytest.raises(InputError) as refused:
        read_info(path)
    assert str(refused.value) == f"{path}: a gzip-compressed MRC file; decompress it first"


def test_nrrd_that_skips_more_lines_than_it_has(tmp_path):
    path = tmp_path / "mask.nrrd"
    write_volume(path, _mask(), GEOMETRY)
    blob = path.read_bytes()
    # pynrrd would call readline 10^11 times.
    path.write_bytes(blob.replace(b"\nencoding:", b"\nline skip: 99999999999\nencoding:", 1))
    with pytest.raises(InputError) as caught:
        read_volume(path)
    assert str(caught.value) == f"{path}: the header skips 99999999999 lines, more than there are"


def test_big_endian_nrrd_is_read_in_native_byte_order(tmp_path):
    path = tmp_path / "big.nrrd"
    nrrd.write(str(path), _image().astype(">f4"), {"encoding": "raw"}, index_order="C")
    assert b"endian: big" in path.read_bytes()
    data, info = read_volume(path)
    np.testing.assert_array_equal(data, _image())
    assert data.dtype.isnative and data.dtype == info.dtype == np.float32
