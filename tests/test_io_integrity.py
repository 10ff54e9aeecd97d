"""Damaged and quirky volume files: gzip checks (NIfTI, NRRD) and permissive MRC headers."""

from __future__ import annotations

import gzip
import os
import warnings
import zlib

import mrcfile
import nibabel
import nrrd
import numpy as np
import pytest
from conftest import all_files, write_mrc

from patch_corrections.errors import InputError, PatchCorrectionsWarning, collect_warnings
from patch_corrections.io.volumes import (
    Geometry,
    closing_reader,
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


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
@pytest.mark.parametrize("encoding", ["raw", "gzip"])
def test_detached_nrrd_data_file_must_be_a_file(tmp_path, encoding):
    path = tmp_path / "mask.nhdr"
    nrrd.write(str(path), _mask(), {"encoding": encoding}, detached_header=True, index_order="C")
    text = path.read_text()
    name = next(line for line in text.splitlines() if line.startswith("data file:"))
    # A pipe (or a device) would be read forever, or opening it would wait for a writer.
    os.mkfifo(tmp_path / "pipe")
    path.write_text(text.replace(name, "data file: pipe"))
    message = f"{path}: its data file 'pipe' is not a file"
    with pytest.raises(InputError) as caught:
        read_volume(path)
    assert str(caught.value) == message


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


# Detached NRRD headers (.nhdr) written by hand, as other tools write them.

SECRET = (b"TOPSECRET password=hunter2\n" * 60)[: 4 * np.prod(SHAPE)]
"""A file outside the header's folder, exactly as long as the header's data would be."""
OUTSIDE = "lies outside the header's folder; detached data must sit beside its header"
THROUGH_A_LINK = (
    "leads out of the header's folder through a symbolic link; "
    "detached data must sit beside its header"
)


def _nhdr(folder, data_file, *, name="tomo.nhdr", encoding="raw"):
    """A detached header of SHAPE float32 with GEOMETRY, x first, naming ``data_file``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(
        "NRRD0004\n"
        "# written by hand\n"
        "type: float\n"
        "dimension: 3\n"
        "space: left-posterior-superior\n"
        "sizes: 8 7 6\n"
        "space directions: (1.5,0,0) (0,2,0) (0,0,3)\n"
        "space origin: (10,-20,30)\n"
        "endian: little\n"
        f"encoding: {encoding}\n"
        f"data file: {data_file}\n"
    )
    return path


def _outside_cases(tmp_path):
    """(data file as written, expected complaint) for each way out of tmp_path / "tomo"."""
    (tmp_path / "secret.raw").write_bytes(SECRET)
    folder = tmp_path / "tomo"
    (folder / "sub").mkdir(parents=True)
    (folder / "link.raw").symlink_to(tmp_path / "secret.raw")
    (folder / "linked").symlink_to(tmp_path, target_is_directory=True)
    return folder, {
        "climbs": ("../secret.raw", OUTSIDE),
        "climbs-deeper": ("sub/../../secret.raw", OUTSIDE),
        "absolute": (str(tmp_path / "secret.raw"), OUTSIDE),
        "file-link": ("link.raw", THROUGH_A_LINK),
        "folder-link": ("linked/secret.raw", THROUGH_A_LINK),
    }


@pytest.mark.parametrize(
    "case", ["climbs", "climbs-deeper", "absolute", "file-link", "folder-link"]
)
@pytest.mark.parametrize("encoding", ["raw", "gzip"])
def test_detached_nrrd_data_outside_its_folder_is_refused(tmp_path, case, encoding):
    folder, cases = _outside_cases(tmp_path)
    written, complaint = cases[case]
    path = _nhdr(folder, written, encoding=encoding)
    if encoding == "raw":  # pynrrd itself reads the file outside without a word
        outside, _ = nrrd.read(str(path), index_order="C")
        assert outside.tobytes() == SECRET
    for read in (read_info, open_volume, read_volume):
        with pytest.raises(InputError) as caught:
            read(path)
        assert str(caught.value) == f"{path}: its data file {written!r} {complaint}"


def test_detached_nrrd_beside_its_header_is_read(tmp_path):
    folder = tmp_path / "tomo"
    (folder / "data").mkdir(parents=True)
    raw = _image().astype("<f4").tobytes()
    (folder / "tomo.raw").write_bytes(raw)
    (folder / "data" / "tomo.raw").write_bytes(raw)
    (folder / "link.raw").symlink_to(folder / "data" / "tomo.raw")
    gzipped = folder / "tomo.raw.gz"
    gzipped.write_bytes(gzip.compress(raw))
    for written, encoding in [
        ("tomo.raw", "raw"),
        ("./data/tomo.raw", "raw"),
        (str(folder / "tomo.raw"), "raw"),  # absolute, but in the header's folder
        ("link.raw", "raw"),  # a link that stays inside
        ("tomo.raw.gz", "gzip"),
    ]:
        path = _nhdr(folder, written, encoding=encoding)
        expected, _ = nrrd.read(str(path), index_order="C")
        np.testing.assert_array_equal(expected, _image())
        data, info = read_volume(path)
        np.testing.assert_array_equal(data, _image(), err_msg=written)
        assert info.geometry == GEOMETRY and read_info(path) == info


@pytest.mark.parametrize("form", ["LIST", "slice%d.raw 0 5 1"])
def test_detached_nrrd_with_several_data_files_is_refused(tmp_path, form):
    folder = tmp_path / "tomo"
    path = _nhdr(folder, form)
    slices = [f"slice{z}.raw" for z in range(SHAPE[0])]
    for z, name in enumerate(slices):
        (folder / name).write_bytes(_image()[z].astype("<f4").tobytes())
    if form == "LIST":  # the data files' names follow, one a line, to the header's end
        path.write_text(path.read_text() + "".join(f"{name}\n" for name in slices))
    expected = (
        f"{path}: its data file {form!r} names several files (NRRD's LIST or %d form), "
        "which is not supported; join them into one data file beside its header"
    )
    for read in (read_info, read_volume):
        with pytest.raises(InputError) as caught:
            read(path)
        assert str(caught.value) == expected


def test_extract_patches_refuses_a_tomogram_whose_data_lies_outside(tmp_path, run_cli):
    (tmp_path / "secret.raw").write_bytes(SECRET)
    tomogram = _nhdr(tmp_path / "tomo", "../secret.raw")
    segmentation = write_mrc(
        tmp_path / "seg.mrc", np.zeros(SHAPE, np.int8), (1.5, 2.0, 3.0), (10, -20, 30)
    )
    out = tmp_path / "out"
    result = run_cli(
        "extract_patches", "-t", tomogram, "-s", segmentation, "-o", out,
        "--patch-size", 4, "--border", 1, "--x", 3, "--y", 3, "--z", 3,
    )  # fmt: skip
    assert result.exit_code == 1
    assert result.output == f"Error: {tomogram}: its data file '../secret.raw' {OUTSIDE}\n"
    assert all_files(out) == []


def test_errors_quote_no_file_contents(tmp_path):
    # gzip's complaint quotes the data's first bytes.
    (tmp_path / "tomo.raw.gz").write_bytes(SECRET)
    path = _nhdr(tmp_path, "tomo.raw.gz", encoding="gzip")
    with pytest.raises(InputError) as caught:
        read_volume(path)
    data = tmp_path / "tomo.raw.gz"
    assert (
        str(caught.value) == f"{data}: corrupt gzip data (Not a gzipped file); the file is damaged"
    )

    # pynrrd's complaint about a magic line quotes the line.
    path = tmp_path / "secret.nrrd"
    path.write_bytes(b"NRRD" + SECRET)
    with pytest.raises(InputError) as caught:
        read_volume(path)
    expected = f"{path}: not a readable NRRD file (it does not start with an NRRD magic line)"
    assert str(caught.value) == expected

    # Long or unprintable header values are cut short.
    (tmp_path / "tomo.raw").write_bytes(_image().astype("<f4").tobytes())
    valid = _nhdr(tmp_path, "tomo.raw").read_text()
    for old, new, complaint in [
        ("sizes: 8 7 6", "sizes: 8 7 66666" + "TOPSECRET" * 40, "convert string to float: '…'"),
        ("type: float", "type: " + "TOPSECRET" * 40, "unsupported NRRD data type 'TOPSECRET"),
        (
            "space origin: (10,-20,30)",
            "space origin: (10,-20," + "TOPSECRET" * 40 + ")",
            "float: '…'",
        ),
        ("encoding: raw", "encoding: \x01\x02\x7fTOP\x1b[2J", "Unsupported encoding: ???TOP?[2J"),
    ]:
        path.write_text(valid.replace(old, new))
        with pytest.raises(InputError) as caught:
            read_volume(path)
        reason = str(caught.value)[len(str(path)) :]
        assert complaint in reason and len(reason) <= 200 and reason.isprintable(), reason
        assert "TOPSECRET" * 7 not in reason, reason  # 63 characters of it


# Geometry that the tools cannot keep: rotated, sheared or flipped axes.

DROPPED = (
    "is dropped and only the voxel size and origin are used, so patches overlay it only as "
    "an axis-aligned volume"
)


def _rotated(degrees: float) -> np.ndarray:
    """GEOMETRY's affine, x first, with its x and y axes turned by ``degrees`` about z."""
    turn = np.deg2rad(degrees)
    rotation = np.array(
        [[np.cos(turn), -np.sin(turn), 0], [np.sin(turn), np.cos(turn), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(GEOMETRY.voxel_size[::-1])
    affine[:3, 3] = GEOMETRY.origin[::-1]
    return affine


def _read_warned(path):
    """What a run that reads ``path`` several times collects (each message once), and the
    header information; read_info, open_volume and read_volume each warn once."""
    for read in (read_info, open_volume, read_volume):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = read(path)
        _one_warning(caught)
        if hasattr(result, "close"):
            result.close()
    with collect_warnings() as collected:
        info = read_info(path)
        with closing_reader(path) as reader:
            assert reader.info == info
        data, _ = read_volume(path)
    np.testing.assert_array_equal(data, _image())  # read as it is stored
    return collected, info


@pytest.mark.parametrize(
    ("affine", "what"),
    [
        (_rotated(10), "its axes are rotated or sheared in space (NIfTI affine); the rotation"),
        (_rotated(0.01), "its axes are rotated or sheared in space (NIfTI affine); the rotation"),
        (_rotated(90), "its axes are rotated or sheared in space (NIfTI affine); the rotation"),
        (
            np.diag([-1.5, 2.0, 3.0, 1.0]),
            "its x axis runs backwards in space (NIfTI affine); the flip",
        ),
        (
            np.diag([-1.5, -2.0, 3.0, 1.0]),  # RAS and LPS
            "its x and y axes run backwards in space (NIfTI affine); the flip",
        ),
    ],
)
def test_nifti_whose_geometry_is_dropped_is_read_with_one_warning(tmp_path, affine, what):
    path = tmp_path / "tomo.nii.gz"
    affine = affine.copy()
    affine[:3, 3] = GEOMETRY.origin[::-1]
    nibabel.Nifti1Image(_image().transpose(), affine).to_filename(path)
    collected, info = _read_warned(path)
    assert collected == [f"{path}: {what} {DROPPED}"]
    assert info.geometry.agrees_with(GEOMETRY, 1e-4), info.geometry  # size and origin kept


@pytest.mark.parametrize(
    ("directions", "what"),
    [
        (_rotated(10)[:3, :3].T, "its axes are rotated or sheared in space (NRRD space"),
        (np.array([[1.5, 0, 0], [0.5, 2, 0], [0, 0, 3]]), "its axes are rotated or sheared"),
        (np.diag([1.5, 2.0, -3.0]), "its z axis runs backwards in space (NRRD space"),
    ],
)
def test_nrrd_whose_geometry_is_dropped_is_read_with_one_warning(tmp_path, directions, what):
    path = tmp_path / "tomo.nrrd"
    header = {
        "space": "left-posterior-superior",
        "space directions": directions,  # one row an axis, x first
        "space origin": np.array(GEOMETRY.origin[::-1]),
        "encoding": "raw",
    }
    nrrd.write(str(path), _image(), header, index_order="C")
    (message,), info = _read_warned(path)
    assert message.startswith(f"{path}: {what}") and message.endswith(DROPPED)
    voxel_size = np.linalg.norm(directions, axis=1)[::-1]  # each axis's step, z first
    assert info.geometry == Geometry(tuple(voxel_size), GEOMETRY.origin)


def test_axis_aligned_geometry_reads_without_a_warning(tmp_path):
    # The suite turns any warning into an error.
    for name in ("tomo.nii.gz", "tomo.nrrd"):
        write_volume(tmp_path / name, _image(), GEOMETRY)
        assert read_volume(tmp_path / name)[1].geometry == GEOMETRY
    # Nor does a NIfTI without any orientation (nibabel then makes up a flipped x axis).
    path = tmp_path / "bare.nii"
    nibabel.Nifti1Image(_image().transpose(), None).to_filename(path)
    header = nibabel.load(path).header
    assert header["sform_code"] == header["qform_code"] == 0
    assert nibabel.load(path).affine[0, 0] < 0
    np.testing.assert_array_equal(read_volume(path)[0], _image())


def test_extract_patches_warns_once_about_a_rotated_tomogram(tmp_path, run_cli):
    tomogram = tmp_path / "tomo.nii.gz"
    nibabel.Nifti1Image(_image().transpose(), _rotated(5)).to_filename(tomogram)
    segmentation = tmp_path / "seg.nrrd"
    write_volume(segmentation, np.zeros(SHAPE, np.uint8), GEOMETRY)
    result = run_cli(
        "extract_patches", "-t", tomogram, "-s", segmentation, "-o", tmp_path / "out",
        "--patch-size", 4, "--border", 1, "--x", 3, "--y", 3, "--z", 3,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    warning = f"{tomogram}: its axes are rotated or sheared in space (NIfTI affine); the rotation"
    assert result.output.count(warning) == 1, result.output
    assert len(all_files(tmp_path / "out" / "images")) == 1
