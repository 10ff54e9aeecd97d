"""Volume I/O: axis order, geometry and safety, checked against the format libraries."""

from __future__ import annotations

import mrcfile
import nibabel
import nrrd
import numpy as np
import pytest
from conftest import write_mrc

from patch_corrections.errors import InputError
from patch_corrections.io.volumes import (
    Geometry,
    closing_reader,
    open_volume,
    read_info,
    read_volume,
    write_volume,
)

SHAPE = (5, 6, 7)  # z, y, x: all different so a transposition cannot hide
MARKER = (1, 2, 3)  # z, y, x


def _marked(dtype=np.float32) -> np.ndarray:
    data = np.zeros(SHAPE, dtype)
    data[MARKER] = 7
    return data


@pytest.mark.parametrize("suffix", [".mrc", ".nrrd", ".nii.gz"])
def test_round_trip_keeps_axes_and_geometry(tmp_path, suffix):
    geometry = Geometry(voxel_size=(3.0, 2.0, 1.5), origin=(30.0, -20.0, 10.0))
    path = tmp_path / f"v{suffix}"
    write_volume(path, _marked(), geometry)
    data, info = read_volume(path)
    assert data.shape == SHAPE
    assert np.argwhere(data).tolist() == [list(MARKER)]
    assert info.geometry == geometry
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left


def test_mrc_written_by_mrcfile_reads_zyx(tmp_path):
    path = write_mrc(
        tmp_path / "t.mrc", _marked(), voxel_size=(1.5, 2.0, 3.0), origin=(10.0, 20.0, 30.0)
    )
    data, info = read_volume(path)
    assert np.argwhere(data).tolist() == [list(MARKER)]
    assert info.geometry == Geometry((3.0, 2.0, 1.5), (30.0, 20.0, 10.0))


def test_our_mrc_header_as_mrcfile_sees_it(tmp_path):
    path = tmp_path / "t.mrc"
    write_volume(path, _marked(np.int8), Geometry((3.0, 2.0, 1.5), (30.0, 20.0, 10.0)))
    with mrcfile.open(path) as mrc:
        assert mrc.data.shape == SHAPE and mrc.data[MARKER] == 7
        assert mrc.header.mode == 0
        assert (mrc.voxel_size.x, mrc.voxel_size.y, mrc.voxel_size.z) == (1.5, 2.0, 3.0)
        assert (mrc.header.origin.x, mrc.header.origin.y, mrc.header.origin.z) == (10, 20, 30)


def test_nrrd_written_in_fortran_order_by_pynrrd(tmp_path):
    # Other tools write NRRD x-fastest; pynrrd's default order gives them as (x, y, z).
    path = tmp_path / "f.nrrd"
    header = {
        "space": "left-posterior-superior",
        "space directions": np.diag([1.5, 2.0, 3.0]),
        "space origin": np.array([10.0, 20.0, 30.0]),
    }
    nrrd.write(str(path), _marked().transpose(), header)  # (x, y, z) array
    data, info = read_volume(path)
    assert np.argwhere(data).tolist() == [list(MARKER)]
    assert info.geometry == Geometry((3.0, 2.0, 1.5), (30.0, 20.0, 10.0))


def test_our_nrrd_header_lists_x_first(tmp_path):
    path = tmp_path / "t.nrrd"
    write_volume(path, _marked(np.uint8), Geometry((3.0, 2.0, 1.5), (30.0, 20.0, 10.0)))
    header = nrrd.read_header(str(path))
    assert header["sizes"].tolist() == [7, 6, 5]
    assert np.allclose(header["space directions"], np.diag([1.5, 2.0, 3.0]))
    assert header["space origin"].tolist() == [10.0, 20.0, 30.0]
    fortran, _ = nrrd.read(str(path))  # pynrrd's default order: (x, y, z)
    assert fortran[MARKER[2], MARKER[1], MARKER[0]] == 7


def test_nifti_from_nibabel_is_xyz(tmp_path):
    path = tmp_path / "n.nii.gz"
    affine = np.diag([1.5, 2.0, 3.0, 1.0])
    affine[:3, 3] = (10.0, 20.0, 30.0)
    nibabel.save(nibabel.Nifti1Image(_marked().transpose(), affine), str(path))
    data, info = read_volume(path)
    assert np.argwhere(data).tolist() == [list(MARKER)]
    assert info.geometry == Geometry((3.0, 2.0, 1.5), (30.0, 20.0, 10.0))


def test_detached_nrrd_header(tmp_path):
    path = tmp_path / "d.nhdr"
    nrrd.write(
        str(path), _marked(), {"spacings": [1.5, 2.0, 3.0]}, detached_header=True, index_order="C"
    )
    data, info = read_volume(path)
    assert np.argwhere(data).tolist() == [list(MARKER)]
    assert info.geometry == Geometry((3.0, 2.0, 1.5))  # spacings are listed x first


def test_four_d_mask_with_one_channel_is_read_as_3d(tmp_path):
    path = tmp_path / "mitk.nrrd"
    nrrd.write(str(path), _marked(np.uint8)[None], index_order="C")
    data, info = read_volume(path)
    assert info.shape == SHAPE and np.argwhere(data).tolist() == [list(MARKER)]


@pytest.mark.parametrize("dtype", [np.float32, np.int8, np.float16, np.uint16])
def test_mrc_blocks_match_full_array(tmp_path, dtype):
    rng = np.random.default_rng(1)
    data = (rng.normal(size=(9, 10, 11)) * 20).astype(dtype)
    path = write_mrc(tmp_path / "b.mrc", data)
    reader = open_volume(path)
    try:
        for _ in range(20):
            start = tuple(int(rng.integers(0, n)) for n in data.shape)
            stop = tuple(int(rng.integers(s + 1, n + 1)) for s, n in zip(start, data.shape))
            block = reader.read_block(start, stop)
            np.testing.assert_array_equal(block, data[tuple(map(slice, start, stop))])
    finally:
        reader.close()


def test_mrc_with_extended_header_and_2d_image(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    with mrcfile.new(tmp_path / "ext.mrc") as mrc:
        mrc.set_data(data)
        mrc.set_extended_header(np.zeros(7, dtype=[("tilt", "<f4")]))
    with closing_reader(tmp_path / "ext.mrc") as reader:
        np.testing.assert_array_equal(reader.read_block((1, 2, 3), (3, 5, 6)), data[1:3, 2:5, 3:6])
    with mrcfile.new(tmp_path / "image.mrc") as mrc:
        mrc.set_data(np.zeros((5, 6), np.float32))
    with pytest.raises(InputError, match="expected a 3D volume, found shape"):
        read_info(tmp_path / "image.mrc")


def test_header_only_info(tmp_path):
    path = write_mrc(tmp_path / "t.mrc", _marked(), voxel_size=(0.0, 0.0, 0.0))
    info = read_info(path)
    assert info.shape == SHAPE and info.dtype == np.float32
    assert info.geometry is None  # voxel size 0 means unknown


def test_refuses_to_overwrite(tmp_path):
    path = tmp_path / "t.nrrd"
    write_volume(path, _marked(), Geometry((1.0, 1.0, 1.0)))
    with pytest.raises(InputError, match="already exists; pass --overwrite"):
        write_volume(path, _marked() * 2, Geometry((1.0, 1.0, 1.0)))
    assert read_volume(path)[0].max() == 7
    write_volume(path, _marked() * 2, Geometry((1.0, 1.0, 1.0)), overwrite=True)
    assert read_volume(path)[0].max() == 14


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.mrc", b"not an mrc file" * 100, "not a readable MRC file"),
        ("bad.nrrd", b"hello", "not a readable NRRD file"),
        ("bad.nii.gz", b"hello", "not a readable NIfTI file"),
        ("bad.tif", b"hello", "unsupported file type"),
    ],
)
def test_unreadable_files_name_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as caught:
        read_volume(path)
    assert name in str(caught.value)


def test_truncated_mrc(tmp_path):
    path = write_mrc(tmp_path / "t.mrc", _marked())
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(InputError, match="truncated"):
        read_info(path)


def test_an_extended_header_larger_than_the_file_is_refused_before_it_is_read(tmp_path):
    # mrcfile would allocate and read the 2 GiB the header claims first (a garbage file's
    # header claims such sizes); read big-endian the field is negative, so no order fits.
    path = write_mrc(tmp_path / "t.mrc", _marked())
    data = bytearray(path.read_bytes())
    data[92:96] = (2**31 - 1).to_bytes(4, "little", signed=True)
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="extended header of 2147483647 bytes does not fit"):
        read_info(path)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_info(tmp_path / "nope.mrc")


def test_start_indices_place_an_mrc_without_origin(tmp_path):
    path = write_mrc(tmp_path / "t.mrc", _marked(), voxel_size=(2.0, 2.0, 2.0))
    with mrcfile.open(path, mode="r+") as mrc:
        mrc.header.nxstart, mrc.header.nystart, mrc.header.nzstart = 10, 20, 30
    assert read_info(path).geometry == Geometry((2.0, 2.0, 2.0), (60.0, 40.0, 20.0))


@pytest.mark.parametrize("name", ["empty.nrrd", "cut.nrrd", "cut.nii.gz", "cut.nii"])
def test_empty_or_cut_files_are_input_errors(tmp_path, name):
    path = tmp_path / name
    if name == "empty.nrrd":
        path.write_bytes(b"")
    else:
        write_volume(
            path, np.random.default_rng(0).normal(size=(20, 20, 20)), Geometry((1.0, 1.0, 1.0))
        )
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if name != "cut.nrrd" else data[:60])
    with pytest.raises(InputError, match=name):
        read_volume(path)


@pytest.mark.parametrize("fmt", ["mrc", "nrrd", "nii.gz"])
@pytest.mark.parametrize("dtype", [np.float16, np.float64, np.uint8, np.int32, bool])
def test_every_dtype_is_written_in_every_format(tmp_path, fmt, dtype):
    data = (
        np.arange(60).reshape(3, 4, 5) % 2 if dtype is bool else np.arange(60).reshape(3, 4, 5) * 4
    ).astype(dtype)
    path = tmp_path / f"v.{fmt}"
    write_volume(path, data, Geometry((1.0, 1.0, 1.0)))
    np.testing.assert_array_equal(read_volume(path)[0].astype(np.float64), data.astype(np.float64))
