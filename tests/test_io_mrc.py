"""MRC slab writer: what mrcfile reads back from a volume written slab by slab."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import mrcfile
import numpy as np
import pytest

from patch_corrections.io import MrcSlabWriter
from patch_corrections.io.volumes import Geometry, read_volume

SHAPE = (7, 6, 5)  # z, y, x: all different so a transposition cannot hide
SLABS = ((0, 3), (3, 5), (5, 7))
GEOMETRY = Geometry(voxel_size=(3.0, 2.0, 1.5), origin=(30.0, -20.0, 10.0))


def _volume(dtype) -> np.ndarray:
    rng = np.random.default_rng(4)
    if np.dtype(dtype).kind == "f":
        return (rng.normal(size=SHAPE) * 3 + 1).astype(dtype)
    return rng.integers(-5, 9, size=SHAPE).astype(dtype)


@pytest.mark.parametrize(("dtype", "mode"), [(np.float16, 12), (np.int8, 0)])
def test_slabs_make_the_volume_and_its_header(tmp_path, dtype, mode):
    data = _volume(dtype)
    path = tmp_path / "slabs.mrc"
    writer = MrcSlabWriter(path, SHAPE, dtype, GEOMETRY)
    for z0, z1 in reversed(SLABS):  # order does not matter
        writer.write(z0, data[z0:z1])
    assert writer.mean == pytest.approx(data.astype(np.float64).mean(), rel=1e-12)
    writer.close()

    values = data.astype(np.float64)
    with mrcfile.open(path, permissive=False) as mrc:
        assert mrc.header.mode == mode and mrc.data.dtype == dtype
        np.testing.assert_array_equal(mrc.data, data)
        assert (mrc.voxel_size.x, mrc.voxel_size.y, mrc.voxel_size.z) == (1.5, 2.0, 3.0)
        assert (mrc.header.origin.x, mrc.header.origin.y, mrc.header.origin.z) == (10, -20, 30)
        assert (mrc.header.nxstart, mrc.header.nystart, mrc.header.nzstart) == (0, 0, 0)
        assert float(mrc.header.dmin) == values.min()
        assert float(mrc.header.dmax) == values.max()
        assert float(mrc.header.dmean) == pytest.approx(values.mean(), rel=1e-6)
        assert float(mrc.header.rms) == pytest.approx(values.std(), rel=1e-6)
    read, info = read_volume(path)
    np.testing.assert_array_equal(read, data)
    assert info.geometry == GEOMETRY


@pytest.mark.parametrize(
    "values",
    [
        [-0.0, 0.0, 6e-8, -6e-8],  # signed zeros and the smallest subnormals
        [-np.inf, 3.0, 65504.0],
        [0.25, 0.5, np.inf],
        [-2.0, -1.0, -0.5],  # negatives only
    ],
    ids=["zeros", "minus-infinity", "infinity", "negative"],
)
def test_float16_header_extremes_are_the_stored_values(tmp_path, values):
    # float16's minimum and maximum are found through an int16 key that orders as they do.
    data = np.array(values, np.float16).reshape(1, 1, -1)
    with MrcSlabWriter(tmp_path / "v.mrc", data.shape, np.float16, GEOMETRY) as writer:
        writer.write(0, data)
    with mrcfile.open(tmp_path / "v.mrc") as mrc:
        assert float(mrc.header.dmin) == float(data.min())
        assert float(mrc.header.dmax) == float(data.max())


def test_float_slabs_are_stored_as_the_file_dtype(tmp_path):
    data = _volume(np.float32)
    path = tmp_path / "scores.mrc"
    with MrcSlabWriter(path, SHAPE, np.float16, GEOMETRY) as writer:
        for z0, z1 in SLABS:
            writer.write(z0, data[z0:z1])
    stored = data.astype(np.float16)
    with mrcfile.open(path) as mrc:
        np.testing.assert_array_equal(mrc.data, stored)
        # Statistics are those of what is stored, not of the float32 input.
        assert float(mrc.header.dmax) == stored.astype(np.float64).max()
        assert float(mrc.header.dmax) != data.max()


def test_slabs_that_do_not_fit_are_refused(tmp_path):
    with MrcSlabWriter(tmp_path / "v.mrc", SHAPE, np.int8, GEOMETRY) as writer:
        with pytest.raises(ValueError, match="does not fit at z 6"):
            writer.write(6, np.zeros((2, 6, 5), np.int8))
        with pytest.raises(ValueError, match="does not fit at z 0"):
            writer.write(0, np.zeros((2, 5, 6), np.int8))
    with pytest.raises(ValueError, match="MRC has no mode for float64"):
        MrcSlabWriter(tmp_path / "w.mrc", SHAPE, np.float64, GEOMETRY)


def test_slab_writer_keeps_no_written_slab_in_memory(tmp_path):
    # 320 MiB written in 5 MiB slabs: the process's peak resident memory grows by a few
    # slabs, not by the file (written through a memory map, every page stayed resident)
    # nor by float64 copies of whole slabs for the header's statistics.
    script = textwrap.dedent(
        f"""
        import resource
        import numpy as np
        from patch_corrections.io import MrcSlabWriter
        from patch_corrections.io.volumes import Geometry

        def peak():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB

        slab = np.ones((5, 1024, 1024), np.int8)
        before = peak()
        with MrcSlabWriter({str(tmp_path / "big.mrc")!r}, (320, 1024, 1024), np.int8,
                           Geometry((1.0, 1.0, 1.0))) as writer:
            for z0 in range(0, 320, 5):
                writer.write(z0, slab)
        print(peak() - before)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) < 32
    with mrcfile.mmap(tmp_path / "big.mrc") as mrc:
        assert mrc.data.shape == (320, 1024, 1024)
        assert mrc.data[::40, ::100, ::100].min() == 1 and mrc.header.dmean == 1


def test_slab_writer_without_pwrite_seeks_and_writes(tmp_path, monkeypatch):
    # Windows has no os.pwrite.
    import os

    monkeypatch.delattr(os, "pwrite")
    data = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    with MrcSlabWriter(tmp_path / "w.mrc", SHAPE, np.float32, GEOMETRY) as writer:
        writer.write(2, data[2:])
        writer.write(0, data[:2])
    np.testing.assert_array_equal(read_volume(tmp_path / "w.mrc")[0], data)


def test_slab_writer_releases_its_file_when_the_header_cannot_be_finished(tmp_path, monkeypatch):
    from patch_corrections.io import mrc_writer

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    writer = MrcSlabWriter(tmp_path / "v.mrc", SHAPE, np.int8, GEOMETRY)
    monkeypatch.setattr(mrc_writer, "set_mrc_geometry", full_disk)
    with pytest.raises(OSError, match="No space left"):
        writer.close()
    assert writer._mrc._iostream.closed and writer._handle.closed
    writer.close()  # closed once: nothing more to do
