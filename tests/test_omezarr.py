"""OME-Zarr tomograms and outputs: images written by zarr itself as the CZ cryoET Data
Portal and copick lay them out, read and written through the same face as MRC."""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from conftest import BRIEF_RETRAIN, save_tiny_checkpoint

from patch_corrections.errors import InputError
from patch_corrections.io.geometry import Geometry
from patch_corrections.io.staging import remove_leftovers_of
from patch_corrections.io.volumes import (
    at_scale_level,
    closing_reader,
    is_volume_file,
    read_info,
    read_volume,
    volume_name,
    volume_stem,
    write_volume,
)

zarr = pytest.importorskip("zarr")

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"
ZARR_2 = zarr.__version__.startswith("2.")  # what copick installs
FORMAT_2 = {} if ZARR_2 else {"zarr_format": 2}
ANGSTROM = [{"name": n, "type": "space", "unit": "angstrom"} for n in "zyx"]


def put(group, name: str, array: np.ndarray, chunks=None) -> None:
    """``array`` as ``name`` in ``group``, with zarr 3 or zarr 2."""
    make = getattr(group, "create_array", None) or group.create_dataset
    make(name, shape=array.shape, chunks=chunks or array.shape, dtype=array.dtype)[...] = array


def _multiscales(datasets, axes=ANGSTROM, version="0.4") -> list[dict]:
    return [{"version": version, "axes": axes, "datasets": datasets}]


def _level(path: str, scale, translation=None) -> dict:
    transforms = [{"type": "scale", "scale": list(scale)}]
    if translation is not None:
        transforms.append({"type": "translation", "translation": list(translation)})
    return {"path": path, "coordinateTransformations": transforms}


def portal_image(path: Path, data: np.ndarray, voxel: float = 10.0, chunks=(32, 64, 64)) -> Path:
    """A two-level OME-NGFF 0.4 image as the Data Portal and copick write tomograms: level
    0 the data, level 1 binned by 2 (its voxel centres half a voxel further in)."""
    group = zarr.open_group(str(path), mode="w", **FORMAT_2)
    for name, array in (("0", data), ("1", data[::2, ::2, ::2])):
        put(group, name, array, chunks)
    group.attrs["multiscales"] = _multiscales(
        [_level("0", [voxel] * 3), _level("1", [2 * voxel] * 3, [voxel / 2] * 3)]
    )
    return path


def test_a_volume_written_as_ome_zarr_reads_back_with_its_geometry(tmp_path):
    data = np.random.default_rng(0).normal(size=(20, 70, 90)).astype(np.float32)
    geometry = Geometry((8.0, 9.0, 10.0), (1.0, -2.0, 3.0))
    path = tmp_path / "volume.zarr"
    write_volume(path, data, geometry)
    read, info = read_volume(path)
    assert np.array_equal(read, data) and info.geometry == geometry and info.shape == data.shape
    # As other tools see it: one level of 64³ chunks, OME-NGFF 0.4 metadata in Å.
    group = zarr.open_group(str(path), mode="r")
    (multiscale,) = group.attrs["multiscales"]
    assert multiscale["version"] == "0.4" and multiscale["axes"] == ANGSTROM
    assert multiscale["datasets"] == [_level("0", (8.0, 9.0, 10.0), (1.0, -2.0, 3.0))]
    assert group["0"].chunks == (20, 64, 64) and np.array_equal(group["0"][:], data)
    # Chunks in nested folders, said in the metadata: copick's stores read no other layout.
    assert json.loads((path / "0" / ".zarray").read_text())["dimension_separator"] == "/"
    assert (path / "0" / "0" / "1" / "1").is_file()
    with pytest.raises(InputError, match="already exists"):
        write_volume(path, data, geometry)
    write_volume(path, data + 1, geometry, overwrite=True)
    assert np.array_equal(read_volume(path)[0], data + 1)
    assert [p.name for p in tmp_path.iterdir()] == ["volume.zarr"]  # nothing left aside


def test_scale_levels_are_named_by_number_or_path(tmp_path):
    data = np.arange(32 * 64 * 64, dtype=np.int16).reshape(32, 64, 64)
    image = portal_image(tmp_path / "TS_01.zarr", data)
    assert read_info(image).geometry == Geometry((10.0,) * 3, (0.0,) * 3)  # the finest
    level = at_scale_level(image, 1)
    assert level == image / "1" and at_scale_level(image, None) == image
    binned, info = read_volume(level)
    assert np.array_equal(binned, data[::2, ::2, ::2])
    assert info.geometry == Geometry((20.0,) * 3, (5.0,) * 3) and info.shape == (16, 32, 32)
    assert volume_stem(level) == "TS_01_1" and volume_name(level) == "TS_01.zarr/1"
    assert volume_stem(image) == "TS_01"
    assert is_volume_file(image) and not is_volume_file(tmp_path)
    with pytest.raises(InputError, match=r"no scale level 2; it holds 0 \(0\), 1 \(1\)"):
        at_scale_level(image, 2)
    mrc = tmp_path / "TS_01.mrc"
    mrcfile.write(mrc, data)
    with pytest.raises(InputError, match="--scale-level picks a level of an OME-Zarr"):
        at_scale_level(mrc, 1)


@pytest.mark.skipif(ZARR_2, reason="OME-NGFF 0.5 is Zarr format 3, which zarr 2 cannot write")
def test_ome_ngff_0_5_in_nanometres_and_a_channel_axis(tmp_path):
    data = np.ones((1, 8, 16, 16), np.uint8)
    group = zarr.open_group(str(tmp_path / "seg.zarr"), mode="w", zarr_format=3)
    group.create_array("s0", shape=data.shape, dtype=data.dtype)[:] = data
    axes = [{"name": "c", "type": "channel"}] + [
        {"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"
    ]
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": _multiscales([_level("s0", [1, 1.2, 1.2, 1.2])], axes, "0.5"),
    }
    volume, info = read_volume(tmp_path / "seg.zarr")
    assert volume.shape == (8, 16, 16) and info.dtype == np.uint8
    assert info.geometry.voxel_size == pytest.approx((12.0, 12.0, 12.0))


def _plain(path: Path, shape) -> Path:
    """A Zarr array without OME metadata."""
    zarr.open_array(str(path), mode="w", shape=shape, dtype="f4", **FORMAT_2)[...] = 1
    return path


def _group(path: Path, array: np.ndarray, attrs: dict | None = None, name: str = "0") -> Path:
    group = zarr.open_group(str(path), mode="w", **FORMAT_2)
    put(group, name, array)
    if attrs is not None:
        group.attrs.update(attrs)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: _plain(p, (4, 4)), "expected a 3D volume, found shape (4, 4)"),
        (
            lambda p: _group(
                p,
                np.zeros((4, 5, 6)),
                {"multiscales": _multiscales([_level("0", [1] * 3)], ANGSTROM[::-1])},
            ),
            "axes x,y,z of shape (4, 5, 6); expected z, y, x last",
        ),
        (
            lambda p: _group(p, np.zeros((4, 5, 6)), name="raw"),
            "without OME-Zarr multiscales metadata; name one of its arrays (raw)",
        ),
        (
            lambda p: _group(
                p,
                np.zeros((4, 5, 6)),
                {
                    "multiscales": _multiscales(
                        [_level("0", [1] * 3)], [{"name": n, "unit": "parsec"} for n in "zyx"]
                    )
                },
            ),
            "spatial axes in 'parsec'",
        ),
        (
            lambda p: _group(
                p, np.zeros((4, 5, 6)), {"multiscales": _multiscales([_level("../x", [1] * 3)])}
            ),
            "names a dataset '../x'",
        ),
        (
            lambda p: _group(
                p,
                np.zeros((4, 5, 6)),
                {"multiscales": _multiscales([_level(str(p / "0"), [1] * 3)])},
            ),
            "names a dataset '/",
        ),
        (lambda p: p.mkdir() or p, "not a Zarr array or group"),
        (
            lambda p: _group(p, np.zeros((4, 5, 6)), {"ome": 5, "multiscales": 7}),
            "metadata lists no datasets",
        ),
        (
            lambda p: _group(
                p, np.zeros((4, 5, 6), "U1"), {"multiscales": _multiscales([_level("0", [1] * 3)])}
            ),
            "holds <U1 values, not numbers",
        ),
    ],
    ids=[
        "2d",
        "xyz-order",
        "no-metadata",
        "unit",
        "path-outside",
        "path-absolute",
        "empty-folder",
        "odd-metadata",
        "text",
    ],
)
def test_foreign_zarr_is_one_error_line(tmp_path, run_cli, make, message):
    path = make(tmp_path / "tomo.zarr")
    with pytest.raises(InputError) as raised:
        read_info(path)
    assert message in str(raised.value) and str(path) in str(raised.value)
    mrc = tmp_path / "seg.mrc"
    mrcfile.write(mrc, np.zeros((4, 5, 6), np.int8))
    result = run_cli(
        "extract_patches",
        "-t",
        path,
        "-s",
        mrc,
        "-o",
        tmp_path / "out",
        "--x",
        2,
        "--y",
        2,
        "--z",
        2,
    )
    assert result.exit_code == 1 and len(result.output.splitlines()) == 1, result.output
    assert message in result.output and not (tmp_path / "out").exists()


def test_a_plain_array_has_no_geometry_and_a_level_without_scale_is_warned_about(tmp_path):
    assert read_info(_plain(tmp_path / "raw.zarr", (4, 5, 6))).geometry is None
    path = _group(
        tmp_path / "bare.zarr", np.zeros((4, 5, 6)), {"multiscales": _multiscales([{"path": "0"}])}
    )
    with pytest.warns(UserWarning, match="gives no scale; its voxel size is unknown"):
        assert read_info(path).geometry is None


def test_blocks_read_only_the_chunks_they_touch(tmp_path):
    data = np.random.default_rng(1).normal(size=(32, 64, 64)).astype(np.float32)
    image = portal_image(tmp_path / "tomo.zarr", data, chunks=(16, 32, 32))
    (image / "0" / "1.1.1").write_bytes(b"not a chunk")  # the far corner's chunk
    with closing_reader(image) as reader:
        assert np.array_equal(reader.read_block((0, 0, 0), (16, 32, 32)), data[:16, :32, :32])
        with pytest.raises(InputError, match=r"tomo.zarr: cannot read its data \("):
            reader.read_block((0, 0, 0), (32, 64, 64))


def test_only_segment_keeps_decompressed_chunks(tmp_path):
    """Overlapping windows share chunks; patches cut far apart do not, so extraction's
    reads keep nothing (their chunks would only take memory)."""
    data = np.random.default_rng(1).normal(size=(32, 64, 64)).astype(np.float32)
    image = portal_image(tmp_path / "tomo.zarr", data, chunks=(16, 32, 32))
    with closing_reader(image) as reader:
        reader.read_block((0, 0, 0), (16, 32, 32))
        reader.read_block((0, 0, 0), (16, 32, 32))
        chunk = 16 * 32 * 32 * 4
        assert reader._cache.decompressed == 2 * chunk and not reader._cache._blocks
        reader.keep_chunks()
        for _ in range(2):
            np.testing.assert_array_equal(
                reader.read_block((0, 8, 8), (16, 40, 40)), data[:16, 8:40, 8:40]
            )
        assert reader._cache.decompressed == (2 + 4) * chunk  # 4 chunks, each read once


def test_the_correction_loop_on_an_ome_zarr_tomogram_matches_mrc(tmp_path, run_cli):
    tomogram, _ = read_volume(SAMPLE / "tomogram.mrc")
    image = portal_image(tmp_path / "tomogram.zarr", tomogram)
    model = SAMPLE / "starting_model.pt"
    window = ("--window", 64, "--batch-size", 4, "--device", "cpu")
    result = run_cli(
        "segment",
        "-t",
        image,
        "--checkpoint",
        model,
        "-o",
        tmp_path / "seg",
        "--format",
        "zarr",
        *window,
    )
    assert result.exit_code == 0, result.output
    assert "Segmented tomogram.zarr (224x224x64 voxels" in result.output
    segmented = tmp_path / "seg" / "tomogram_segmented.zarr"
    ours = zarr.open_group(str(segmented), mode="r")["0"][:]
    assert np.array_equal(ours != 0, mrcfile.read(SAMPLE / "prediction.mrc") != 0)

    for name, source, labels in (
        ("zarr", image, segmented),
        ("mrc", SAMPLE / "tomogram.mrc", SAMPLE / "prediction.mrc"),
    ):
        args = [
            "-t",
            source,
            "-s",
            labels,
            "-o",
            tmp_path / name / "patches",
            "--centres",
            SAMPLE / "centres.csv",
        ]
        assert (
            run_cli("extract_patches", *args, "--patch-size", 96, "--token", "tomogram").exit_code
            == 0
        )
        merged = run_cli(
            "merge_corrections",
            "-l",
            tmp_path / name / "patches",
            "-c",
            SAMPLE / "corrections",
            "-o",
            tmp_path / name / "train",
        )
        assert merged.exit_code == 0, merged.output
    for kind in ("images", "labels"):
        for patch in sorted((tmp_path / "mrc" / "patches" / kind).iterdir()):
            twin = tmp_path / "zarr" / "patches" / kind / patch.name
            assert np.array_equal(read_volume(patch)[0], read_volume(twin)[0])
            assert read_info(patch).geometry == read_info(twin).geometry

    trained = run_cli(
        "retrain",
        "-t",
        tmp_path / "zarr" / "train",
        "-o",
        tmp_path / "model",
        "--checkpoint",
        model,
        "--optimizer",
        "adamw",
        *BRIEF_RETRAIN,
    )
    assert trained.exit_code == 0 and "not here" not in trained.output, trained.output
    out = tmp_path / "seg" / "tomogram_corrected.zarr"
    pasted = run_cli(
        "paste_corrections",
        "-m",
        tmp_path / "zarr" / "train",
        "-s",
        segmented,
        "-o",
        out,
        "--patches-dir",
        tmp_path / "zarr" / "patches",
    )
    assert pasted.exit_code == 0, pasted.output
    reference = tmp_path / "corrected.mrc"
    assert (
        run_cli(
            "paste_corrections",
            "-m",
            tmp_path / "mrc" / "train",
            "-s",
            SAMPLE / "prediction.mrc",
            "-o",
            reference,
        ).exit_code
        == 0
    )
    group = zarr.open_group(str(out), mode="r")
    assert np.array_equal(group["0"][:] != 0, mrcfile.read(reference) != 0)
    assert group.attrs["multiscales"][0]["datasets"] == [_level("0", [10.0] * 3, [0.0] * 3)]
    # The evaluation reads it as any segmentation.
    scored = run_cli("evaluate", "-p", out, "-r", SAMPLE / "truth.mrc", "--json")
    assert scored.exit_code == 0 and '"dice"' in scored.output


def test_segment_reads_a_coarser_level_and_writes_its_geometry(tmp_path, run_cli):
    tomogram, _ = read_volume(SAMPLE / "tomogram.mrc")
    image = portal_image(tmp_path / "tomogram.zarr", tomogram)
    args = [
        "-t",
        image,
        "--checkpoint",
        SAMPLE / "starting_model.pt",
        "-o",
        tmp_path / "seg",
        "--window",
        32,
        "--device",
        "cpu",
    ]
    result = run_cli("segment", *args, "--scale-level", 1)
    assert result.exit_code == 0, result.output
    assert "Segmented tomogram.zarr/1 (112x112x32 voxels" in result.output
    with mrcfile.open(tmp_path / "seg" / "tomogram_1_segmented.mrc") as mrc:
        assert mrc.data.shape == (32, 112, 112) and float(mrc.voxel_size.x) == 20.0
        assert float(mrc.header.origin.x) == 5.0
    result = run_cli("segment", *args, "--scale-level", 3)
    assert result.exit_code == 1 and result.output.strip().endswith("it holds 0 (0), 1 (1)")


def test_interrupted_zarr_outputs_are_cleared_like_files(tmp_path):
    final = tmp_path / "tomo_segmented.zarr"
    leftover = tmp_path / ".tomo_segmented.zarr.staged-0123abcd.zarr"
    write_volume(leftover, np.zeros((2, 3, 4), np.int8), Geometry((1.0,) * 3))
    assert remove_leftovers_of([final]) == 1 and not leftover.exists()


def test_without_zarr_the_error_gives_the_install_line(tmp_path, monkeypatch):
    image = portal_image(tmp_path / "tomo.zarr", np.zeros((4, 4, 4), np.float32))
    monkeypatch.setitem(__import__("sys").modules, "zarr", None)  # as if not installed
    with pytest.raises(InputError, match=r'needs zarr: pip install "patch-corrections\[zarr\]"'):
        read_info(image)


def test_the_intensity_sample_of_a_chunked_tomogram_reads_few_whole_chunks(tmp_path):
    from patch_corrections.inference.intensity import (
        SAMPLE_CHUNKS,
        robust_statistics,
        spread_sample,
    )

    data = np.random.default_rng(2).gamma(2.0, 3.0, size=(64, 256, 256)).astype(np.float32)
    image = portal_image(tmp_path / "tomo.zarr", data, chunks=(16, 16, 16))
    blocks = []
    with closing_reader(image) as reader:
        read = reader.read_block
        reader.read_block = lambda start, stop: blocks.append((start, stop)) or read(start, stop)
        sample = spread_sample(reader, count=20_000)
    # 32 of its 1,024 chunks, each read once and whole (slices would have read them all).
    assert len(blocks) == SAMPLE_CHUNKS == len(set(blocks))
    assert all(np.all(np.subtract(b, a) == 16) and np.all(np.mod(a, 16) == 0) for a, b in blocks)
    centre, scale = robust_statistics(sample)
    whole = robust_statistics(data)
    assert centre == pytest.approx(whole[0], rel=0.03) and scale == pytest.approx(
        whole[1], rel=0.03
    )


def test_a_folder_of_zarr_and_mrc_tomograms_is_segmented_as_one_batch(tmp_path, run_cli):
    volume = np.random.default_rng(3).normal(size=(16, 32, 32)).astype(np.float32)
    folder = tmp_path / "tomograms"
    folder.mkdir()
    portal_image(folder / "a.zarr", volume)
    mrcfile.write(folder / "b.mrc", volume, voxel_size=10.0)
    (folder / "notes.zarr").mkdir()  # a folder named .zarr that holds no Zarr: not a tomogram
    model = save_tiny_checkpoint(tmp_path / "tiny.pt")
    args = ["-t", folder, "--checkpoint", model, "-o", tmp_path / "seg", "--window", 16]
    result = run_cli("segment", *args, "--device", "cpu", "--format", "zarr")
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "seg").iterdir() if not p.name.startswith("."))
    assert written == [f"{s}_{k}.zarr" for s in "ab" for k in ("probabilities", "segmented")]
    a, b = (read_volume(tmp_path / "seg" / f"{s}_probabilities.zarr")[0] for s in "ab")
    assert np.array_equal(a, b)  # the same voxels, whichever format they came in


def test_a_tomogram_without_the_scale_level_fails_alone_in_a_batch(tmp_path, run_cli):
    volume = np.random.default_rng(5).normal(size=(16, 32, 32)).astype(np.float32)
    folder = tmp_path / "tomograms"
    folder.mkdir()
    portal_image(folder / "a.zarr", volume)
    write_volume(folder / "b.zarr", volume, Geometry((10.0,) * 3))  # one level
    mrcfile.write(folder / "c.mrc", volume, voxel_size=10.0)
    model = save_tiny_checkpoint(tmp_path / "tiny.pt")
    args = ["-t", folder, "--checkpoint", model, "-o", tmp_path / "seg", "--window", 16]
    result = run_cli("segment", *args, "--device", "cpu", "--scale-level", 1)
    assert result.exit_code == 1
    assert "Segmented 1 tomogram(s), skipped 0, failed 2." in result.output
    assert "b.zarr: no scale level 1; it holds 0 (0)" in result.output
    assert "c.mrc: --scale-level picks a level of an OME-Zarr" in result.output
    assert read_info(tmp_path / "seg" / "a_1_segmented.mrc").shape == (8, 16, 16)


def test_a_name_read_from_a_manifest_never_removes_a_folder(tmp_path, run_cli):
    import json

    volume = np.random.default_rng(4).normal(size=(24, 24, 24)).astype(np.float32)
    mrcfile.write(tmp_path / "tomo.mrc", volume, voxel_size=10.0)
    mrcfile.write(tmp_path / "seg.mrc", (volume > 1).astype(np.int8), voxel_size=10.0)
    args = ["-t", tmp_path / "tomo.mrc", "-s", tmp_path / "seg.mrc", "-o", tmp_path / "out"]
    args += ["--x", 12, "--y", 12, "--z", 12, "--patch-size", 16, "--border", 2]
    assert run_cli("extract_patches", *args).exit_code == 0
    manifest = tmp_path / "out" / "manifest.json"
    content = json.loads(manifest.read_text())
    for folder in ("mydata", "data.zarr"):  # a user's folder, one named like an image too
        (tmp_path / "out" / folder).mkdir()
        (tmp_path / "out" / folder / "notes.txt").write_text("keep")
        content["patches"][0]["label"] = folder
        manifest.write_text(json.dumps(content))
        result = run_cli("extract_patches", *args, "--overwrite")
        assert result.exit_code == 1 and len(result.output.splitlines()) == 1, result.output
        assert (tmp_path / "out" / folder / "notes.txt").read_text() == "keep"


def test_paste_never_replaces_its_source_image_or_a_folder_that_is_no_zarr(tmp_path, run_cli):
    labels = (np.random.default_rng(5).random((24, 24, 24)) > 0.8).astype(np.int8)
    image = portal_image(tmp_path / "pred.zarr", labels)
    train = tmp_path / "train"  # the output is checked before anything is read
    (tmp_path / "docs.zarr" / "sub").mkdir(parents=True)
    (tmp_path / "docs.zarr" / "sub" / "thesis.tex").write_text("keep")
    for source, out, said in (
        (image / "0", image, "that is the segmentation pasted into"),
        (image, tmp_path / "docs.zarr", "is a folder that holds no Zarr"),
    ):
        result = run_cli("paste_corrections", "-m", train, "-s", source, "-o", out, "--overwrite")
        assert result.exit_code == 1 and said in result.output, result.output
    assert (image / "1").is_dir() and (tmp_path / "docs.zarr" / "sub" / "thesis.tex").exists()


def test_files_in_a_folder_named_zarr_are_files(tmp_path):
    volume = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    folder = tmp_path / "data.zarr"
    folder.mkdir()
    mrcfile.write(folder / "tomo.mrc", volume, voxel_size=10.0)
    assert np.array_equal(read_volume(folder / "tomo.mrc")[0], volume)
    assert volume_stem(folder / "tomo.mrc") == "tomo"
    write_volume(folder / "copy.mrc", volume, Geometry((10.0,) * 3))
    assert mrcfile.read(folder / "copy.mrc").shape == (2, 3, 4)


def test_odd_metadata_upper_case_axes_and_nested_levels(tmp_path):
    path = _group(tmp_path / "bad.zarr", np.zeros((4, 5, 6)))
    (path / ".zattrs").write_text("{not json")
    with pytest.raises(InputError, match=r"bad\.zarr"):
        read_info(path)
    axes = [{"name": n, "type": "space", "unit": "nanometer"} for n in "ZYX"]
    path = _group(
        tmp_path / "nm.zarr",
        np.zeros((4, 5, 6)),
        {"multiscales": _multiscales([_level("0", [1, 1, 1])], axes)},
    )
    assert read_info(path).geometry.voxel_size == (10.0, 10.0, 10.0)
    group = zarr.open_group(str(tmp_path / "nest.zarr"), mode="w", **FORMAT_2)
    for level, size in (("s0", 8), ("s1", 4)):
        put(group.require_group(level), "data", np.zeros((size,) * 3, np.float32))
    levels = [_level("s0/data", [5.0] * 3), _level("s1/data", [10.0] * 3, [2.5] * 3)]
    group.attrs["multiscales"] = _multiscales(levels)
    info = read_info(at_scale_level(tmp_path / "nest.zarr", 1))
    assert info.geometry == Geometry((10.0,) * 3, (2.5,) * 3) and info.shape == (4, 4, 4)


def test_evaluate_takes_an_ome_zarr_reference(tmp_path, run_cli):
    labels = (np.random.default_rng(6).random((8, 16, 16)) > 0.8).astype(np.int8)
    reference = portal_image(tmp_path / "truth.zarr", labels)
    mrcfile.write(tmp_path / "pred.mrc", labels, voxel_size=10.0)
    result = run_cli("evaluate", "-p", tmp_path / "pred.mrc", "-r", reference, "--json")
    assert result.exit_code == 0 and '"dice": 1.0' in result.output, result.output


def test_a_replaced_image_killed_half_way_is_put_back(tmp_path):
    from patch_corrections.io.staging import replace_path

    final = tmp_path / "tomo_segmented.zarr"
    write_volume(final, np.zeros((2, 3, 4), np.int8), Geometry((1.0,) * 3))
    aside = tmp_path / ".tomo_segmented.zarr.partial-0123abcd-replaced.zarr"
    final.rename(aside)  # killed after the old image went aside, before the new came in
    staged_new = tmp_path / ".tomo_segmented.zarr.staged-0123abcd.zarr"
    write_volume(staged_new, np.ones((2, 3, 4), np.int8), Geometry((1.0,) * 3))
    assert remove_leftovers_of([final]) == 2
    assert np.array_equal(read_volume(final)[0], np.zeros((2, 3, 4), np.int8))
    # A file or a link under the image's name is replaced, not followed.
    (tmp_path / "file.zarr").write_text("old")
    new = tmp_path / ".new.zarr"
    write_volume(new, np.ones((2, 3, 4), np.int8), Geometry((1.0,) * 3))
    replace_path(new, tmp_path / "file.zarr")
    assert read_info(tmp_path / "file.zarr").shape == (2, 3, 4)
    (tmp_path / "link.zarr").symlink_to(final)
    write_volume(new, np.ones((2, 3, 4), np.int8), Geometry((1.0,) * 3))
    replace_path(new, tmp_path / "link.zarr")
    assert not (tmp_path / "link.zarr").is_symlink() and final.is_dir()
    assert np.array_equal(read_volume(final)[0], np.zeros((2, 3, 4), np.int8))


def test_slabs_of_any_depth_and_order_store_the_volume(tmp_path):
    from patch_corrections.io.omezarr_writer import ZarrSlabWriter

    volume = np.random.default_rng(7).integers(0, 100, size=(100, 20, 20)).astype(np.int16)
    with ZarrSlabWriter(
        tmp_path / "v.zarr", volume.shape, volume.dtype, Geometry((1.0,) * 3), 16
    ) as writer:
        for z0 in range(0, 100, 7):  # slabs that straddle rows of 16-section chunks
            writer.write(z0, volume[z0 : z0 + 7])
        writer.write(3, volume[3:5] + 1)  # back to a row already stored
    expected = volume.copy()
    expected[3:5] += 1
    assert np.array_equal(read_volume(tmp_path / "v.zarr")[0], expected)
    assert writer.mean == pytest.approx((volume.sum() + expected[3:5].sum()) / (volume.size + 800))


def test_an_mrc_file_holds_scale_level_0(tmp_path):
    mrcfile.write(tmp_path / "t.mrc", np.zeros((2, 3, 4), np.float32))
    assert at_scale_level(tmp_path / "t.mrc", 0) == tmp_path / "t.mrc"


def test_suggest_reads_an_ome_zarr_level_and_names_it_in_the_next_command(tmp_path, run_cli):
    tomogram, _ = read_volume(SAMPLE / "tomogram.mrc")
    image = portal_image(tmp_path / "tomogram.zarr", np.ascontiguousarray(tomogram[:, :96, :112]))
    network = save_tiny_checkpoint(tmp_path / "tiny.pt")
    result = run_cli(
        "suggest",
        "-t",
        image,
        "--scale-level",
        1,
        "--checkpoint",
        network,
        "-o",
        tmp_path / "s",
        "--patch-size",
        16,
        "--border",
        4,
        "--count",
        2,
        "--no-previews",
        "--window",
        32,
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    assert f"extract_patches -t {image / '1'}" in result.output
    centres = (tmp_path / "s" / "tomogram_1_suggestions.csv").read_text().splitlines()
    assert len(centres) == 3  # the header and 2 centres
    assert read_info(tmp_path / "s" / "tomogram_1_probabilities.mrc").shape == (32, 48, 56)
