"""paste_corrections: merged patches (cut by extract_patches, corrected with pynrrd masks,
merged by merge_corrections) written back into the full segmentation."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import mrcfile
import nrrd
import numpy as np
import pytest
from conftest import all_files, write_mrc

from patch_corrections import (
    ExtractSettings,
    InputError,
    MergeSettings,
    extract_patches,
    merge_corrections,
)
from patch_corrections.io.mrc import MrcReader
from patch_corrections.io.volumes import read_info, read_volume
from patch_corrections.workflows import Listener, PasteSettings, paste_corrections, pasting

VOXEL_XYZ = (4.0, 3.0, 2.0)
ORIGIN_XYZ = (100.0, 60.0, 30.0)
SHAPE = (24, 40, 48)  # z, y, x
PATCH, BORDER = 20, 4
A, B = "tomo_patch000", "tomo_patch001"
FULL = (slice(None),) * 3


def _interior(offset_xyz, shape=SHAPE):
    """Target ``(z, y, x)`` slices of a patch's voxels outside its border band (in the
    target)."""
    x, y, z = offset_xyz
    return tuple(
        slice(max(o + BORDER, 0), min(o + PATCH - BORDER, n)) for o, n in zip((z, y, x), shape)
    )


def _box(offset_xyz, shape=SHAPE):
    x, y, z = offset_xyz
    return tuple(slice(max(o, 0), min(o + PATCH, n)) for o, n in zip((z, y, x), shape))


def _cut(tmp_path: Path, centres) -> np.ndarray:
    """A tomogram and its network segmentation (anisotropic voxels, an origin), cut into
    patches around ``centres`` (``x, y, z``); returns the segmentation ``(z, y, x)``."""
    rng = np.random.default_rng(0)
    write_mrc(
        tmp_path / "tomo.mrc", rng.normal(size=SHAPE).astype(np.float32), VOXEL_XYZ, ORIGIN_XYZ
    )
    segmentation = (rng.random(SHAPE) < 0.3).astype(np.int8)
    write_mrc(tmp_path / "tomo_segmented.mrc", segmentation, VOXEL_XYZ, ORIGIN_XYZ)
    extract_patches(
        tmp_path / "tomo.mrc",
        tmp_path / "tomo_segmented.mrc",
        tmp_path / "patches",
        points=centres,
        settings=ExtractSettings(patch_size=PATCH, border=BORDER),
    )
    return segmentation


def _paint(tmp_path: Path, name: str, kind: str, *boxes) -> None:
    """An NRRD mask as painting tools write it (pynrrd, C order, the patch's geometry)."""
    info = read_info(tmp_path / "patches" / "labels" / f"{name}.nrrd")
    mask = np.zeros(info.shape, np.uint8)
    for box in boxes:
        mask[box] = 1
    vz, vy, vx = info.geometry.voxel_size
    oz, oy, ox = info.geometry.origin
    header = {
        "space": "left-posterior-superior",
        "space directions": np.diag([vx, vy, vz]),
        "space origin": np.array([ox, oy, oz]),
    }
    folder = tmp_path / "corr" / name
    folder.mkdir(parents=True, exist_ok=True)
    nrrd.write(str(folder / f"{kind}1.nrrd"), mask, header, index_order="C")


def _merge(tmp_path: Path) -> None:
    merge_corrections(tmp_path / "patches", tmp_path / "corr", tmp_path / "train")


def _two_apart(tmp_path: Path) -> np.ndarray:
    """Patch A (``tomo_patch000``) inside the tomogram, all painted Add with an Ignore box;
    patch B (``tomo_patch001``) across three of its faces, all painted
    Remove."""
    segmentation = _cut(tmp_path, [(20, 20, 12), (44, 36, 20)])
    _paint(tmp_path, A, "Add", FULL)
    _paint(tmp_path, A, "Ignore", (slice(8, 10), slice(8, 10), slice(8, 10)))
    _paint(tmp_path, B, "Remove", FULL)
    _merge(tmp_path)
    return segmentation


A_OFFSET, B_OFFSET = (10, 10, 2), (34, 26, 10)  # x, y, z
A_IGNORED = (slice(10, 12), slice(18, 20), slice(18, 20))  # the Ignore box, in the target


def _expected(segmentation: np.ndarray) -> np.ndarray:
    """What pasting ``_two_apart``'s patches into ``segmentation`` gives."""
    expected = segmentation.copy()
    expected[_interior(A_OFFSET)] = 1  # Add, inside the border band
    expected[A_IGNORED] = segmentation[A_IGNORED]  # painted Ignore keeps the network's
    expected[_interior(B_OFFSET)] = 0  # Remove, where B lies inside the tomogram
    return expected


def _read(path: Path) -> np.ndarray:
    with mrcfile.open(path, permissive=True) as mrc:
        return mrc.data.copy()


def test_pasted_voxels_are_the_merged_labels_and_ignore_keeps_the_network(tmp_path, run_cli):
    segmentation = _two_apart(tmp_path)
    out = tmp_path / "result" / "tomo_corrected.mrc"
    result = run_cli(
        "paste_corrections",
        "--merged-dir",
        tmp_path / "train",
        "--segmentation",
        tmp_path / "tomo_segmented.mrc",
        "--out",
        out,
        "--patches-dir",
        tmp_path / "patches",
    )
    assert result.exit_code == 0, result.output
    pasted = _read(out)
    expected = _expected(segmentation)
    np.testing.assert_array_equal(pasted, expected)
    # The merged labels, placed at the manifest's offsets: decided voxels are the output's.
    for name, (x, y, z) in ((A, A_OFFSET), (B, B_OFFSET)):
        labels, _ = read_volume(tmp_path / "train" / "labelsTr" / f"{name}.nii.gz")
        inside = labels[: SHAPE[0] - z, : SHAPE[1] - y, : SHAPE[2] - x]
        region = pasted[z : z + PATCH, y : y + PATCH, x : x + PATCH]
        decided = inside != 2
        np.testing.assert_array_equal(region[decided], inside[decided])
        net = segmentation[z : z + PATCH, y : y + PATCH, x : x + PATCH]
        np.testing.assert_array_equal(region[~decided], net[~decided])
    # The border band is ignore, so the network's values stay there.
    band = np.zeros(SHAPE, bool)
    band[_box(A_OFFSET)] = True
    band[_interior(A_OFFSET)] = False
    np.testing.assert_array_equal(pasted[band], segmentation[band])

    info, target = read_info(out), read_info(tmp_path / "tomo_segmented.mrc")
    assert (info.shape, info.dtype, info.geometry) == (target.shape, target.dtype, target.geometry)
    with mrcfile.open(out) as mrc:
        assert tuple(mrc.voxel_size.item()) == VOXEL_XYZ
        assert (mrc.header.origin.x, mrc.header.origin.y, mrc.header.origin.z) == ORIGIN_XYZ

    added = int(np.sum((segmentation == 0) & (expected == 1)))
    removed = int(np.sum((segmentation == 1) & (expected == 0)))
    assert added and removed
    assert f"segmentation changed: {added} became membrane, {removed} background" in result.output
    assert "+membrane  -membrane  placed by" in result.output
    assert f"Written: {out}" in result.output and "Warnings" not in result.output
    lines = {line.split()[0]: line.split() for line in result.output.splitlines()[2:4]}
    assert lines[A][1:] == ["10,10,2", str(12**3 - 8), str(added), "0", "header+manifest"]
    assert lines[B][1] == "34,26,10" and lines[B][4] == str(removed)
    assert [p.name for p in all_files(tmp_path / "result")] == ["tomo_corrected.mrc"]


def test_mark_ignore_shows_what_nobody_decided(tmp_path):
    segmentation = _two_apart(tmp_path)
    report = paste_corrections(
        tmp_path / "train",
        tmp_path / "tomo_segmented.mrc",
        tmp_path / "marked.mrc",
        settings=PasteSettings(mark_ignore=2),
    )
    pasted = _read(tmp_path / "marked.mrc")
    expected = segmentation.copy()
    expected[_box(A_OFFSET)] = 2  # the band, and the painted Ignore box
    expected[_interior(A_OFFSET)] = 1
    expected[A_IGNORED] = 2
    expected[_box(B_OFFSET)] = 2  # B's band inside the tomogram (its padding is outside)
    expected[_interior(B_OFFSET)] = 0
    np.testing.assert_array_equal(pasted, expected)
    assert report.marked == int(np.sum(expected == 2))
    assert [r["placed_by"] for r in report.rows] == ["header", "header"]

    with pytest.raises(InputError, match="--mark-ignore 1: that is a decided label"):
        PasteSettings(mark_ignore=1)
    with pytest.raises(InputError, match=r"--mark-ignore 300: .*int8 values \(-128 to 127\)"):
        paste_corrections(
            tmp_path / "train",
            tmp_path / "tomo_segmented.mrc",
            tmp_path / "other.mrc",
            settings=PasteSettings(mark_ignore=300),
        )
    assert not (tmp_path / "other.mrc").exists()


def _depth(index, start):
    local = index - start
    return np.minimum(local, PATCH - 1 - local)


def test_overlap_decided_beats_ignore_then_the_deeper_patch_wins(tmp_path):
    # A and B overlap along x (A: x 10..29, B: x 16..35; same y and z).
    segmentation = _cut(tmp_path, [(20, 20, 12), (26, 20, 12)])
    _paint(tmp_path, A, "Add", FULL)
    _paint(tmp_path, B, "Remove", FULL)
    ignored = (slice(10, 11), slice(14, 17), slice(9, 13))  # B's local z, y, x
    _paint(tmp_path, B, "Ignore", ignored)
    _merge(tmp_path)
    report = paste_corrections(
        tmp_path / "train", tmp_path / "tomo_segmented.mrc", tmp_path / "out.mrc"
    )
    pasted = _read(tmp_path / "out.mrc")

    a_says, b_says = np.full(SHAPE, 2, np.int8), np.full(SHAPE, 2, np.int8)
    a_says[_interior((10, 10, 2))] = 1
    b_says[_interior((16, 10, 2))] = 0
    b_says[12, 24:27, 25:29] = 2
    z, y, x = np.indices(SHAPE)
    depth_a = np.minimum.reduce([_depth(z, 2), _depth(y, 10), _depth(x, 10)])
    depth_b = np.minimum.reduce([_depth(z, 2), _depth(y, 10), _depth(x, 16)])
    both = (a_says != 2) & (b_says != 2)
    expected = np.where(a_says != 2, a_says, segmentation)
    expected = np.where(b_says != 2, b_says, expected)  # decided beats ignore, both ways
    expected = np.where(both, np.where(depth_a > depth_b, 1, 0), expected)
    np.testing.assert_array_equal(pasted, expected)
    # Spot checks of the rule, in target (z, y, x).
    assert pasted[12, 20, 21] == 1  # deeper in A (8 vs 5)
    assert pasted[12, 20, 24] == 0  # deeper in B (5 vs 8)
    assert pasted[12, 14, 22] == 0  # as deep in both (4): the later patch, B
    assert pasted[12, 25, 25] == 1  # B left it ignore, A decided it
    assert pasted[12, 20, 28] == 0  # in A's border band, decided by B
    assert report.conflicts == int(both.sum()) > 0
    assert report.warnings == [
        f"{A} and {B} decide {int(both.sum())} overlapping voxel(s) differently; each took "
        "the value of the patch it lies deeper in"
    ]
    rows = {r["name"]: r for r in report.rows}
    assert rows[A]["decided"] + rows[B]["decided"] == report.decided
    assert report.decided == int(np.sum((a_says != 2) | (b_says != 2)))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("voxel", "voxel size x,y,z=4,3,2 Å differs from"),
        ("grid", "is not on"),
        ("outside", "lies outside"),
        ("cut", "decided voxel(s) lie outside"),
    ],
)
def test_a_patch_that_does_not_fit_the_target_names_both_files(tmp_path, run_cli, change, message):
    _two_apart(tmp_path)
    segmentation = read_volume(tmp_path / "tomo_segmented.mrc")[0]
    voxel, origin = VOXEL_XYZ, ORIGIN_XYZ
    if change == "voxel":
        voxel = (8.0, 3.0, 2.0)
    elif change == "grid":
        origin = (101.0, 60.0, 30.0)  # a quarter voxel along x
    elif change == "outside":
        segmentation = segmentation[:, :, :30]  # B starts at x 34
    else:
        segmentation = segmentation[:, :, :20]  # A's decided voxels reach x 25
    target = write_mrc(tmp_path / "other_segmented.mrc", segmentation, voxel, origin)
    out = tmp_path / "out" / "pasted.mrc"
    result = run_cli("paste_corrections", "-m", tmp_path / "train", "-s", target, "-o", out)
    assert result.exit_code == 1
    assert len(result.output.splitlines()) == 1 and message in result.output
    label = B if change == "outside" else A
    assert f"{tmp_path / 'train' / 'labelsTr' / label}.nii.gz" in result.output
    assert str(target) in result.output
    assert not (tmp_path / "out").exists()


def test_manifest_offsets_place_patches_in_a_segmentation_at_another_origin(tmp_path):
    segmentation = _two_apart(tmp_path)
    # The network's segmentation as another tool saved it: no origin in its header.
    target = write_mrc(tmp_path / "membrain.mrc", segmentation, VOXEL_XYZ, (0.0, 0.0, 0.0))
    with pytest.raises(InputError, match=r"decided voxel\(s\) lie outside"):
        paste_corrections(tmp_path / "train", target, tmp_path / "a.mrc")  # 25 voxels off
    report = paste_corrections(
        tmp_path / "train", target, tmp_path / "b.mrc", tmp_path / "patches"
    )
    np.testing.assert_array_equal(_read(tmp_path / "b.mrc"), _expected(segmentation))
    assert [r["placed_by"] for r in report.rows] == ["manifest", "manifest"]
    assert len(report.warnings) == 2 and "origin x,y,z=0,0,0 Å differs" in report.warnings[0]
    assert read_info(tmp_path / "b.mrc").geometry == read_info(target).geometry

    # A patch re-cut elsewhere after merging no longer fits its manifest record.
    extract_patches(
        tmp_path / "tomo.mrc",
        tmp_path / "tomo_segmented.mrc",
        tmp_path / "patches",
        points=[(24, 20, 12), (44, 36, 20)],
        settings=ExtractSettings(patch_size=PATCH, border=BORDER, overwrite=True),
    )
    manifest = tmp_path / "patches" / "manifest.json"
    with pytest.raises(InputError) as caught:
        paste_corrections(
            tmp_path / "train",
            tmp_path / "tomo_segmented.mrc",
            tmp_path / "c.mrc",
            tmp_path / "patches",
        )
    text = str(caught.value)
    assert f"{A}.nii.gz: origin/voxel size" in text and f"record in {manifest}" in text
    assert not (tmp_path / "c.mrc").exists()


@pytest.mark.parametrize("tomogram_moved", [False, True])
def test_an_edited_manifest_offset_is_refused_not_pasted_elsewhere(
    tmp_path, run_cli, tomogram_moved
):
    _two_apart(tmp_path)
    manifest = tmp_path / "patches" / "manifest.json"
    content = json.loads(manifest.read_text())
    content["patches"][0]["offset_xyz"] = [12, 10, 2]  # A is at 10, 10, 2
    manifest.write_text(json.dumps(content))
    if tomogram_moved:  # only the other record can tell
        (tmp_path / "tomo.mrc").rename(tmp_path / "elsewhere.mrc")
    out = tmp_path / "out" / "pasted.mrc"
    args = ["-m", tmp_path / "train", "-s", tmp_path / "tomo_segmented.mrc", "-o", out]
    result = run_cli("paste_corrections", *args, "--patches-dir", tmp_path / "patches")
    assert result.exit_code == 1
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and "origin differs" not in line
    if tomogram_moved:  # two records, one edited: which is wrong is not decided
        assert f"{manifest}: the records of {A}, {B} disagree" in line
    else:
        assert f"{manifest}: {A} is recorded at the offset x,y,z=12,10,2" in line
        assert "puts it at x,y,z=10,10,2 in" in line
    assert "was the manifest edited?" in line
    assert not (tmp_path / "out").exists()


def test_the_tomogram_given_as_the_segmentation_is_refused_as_extract_patches_does(
    tmp_path, run_cli
):
    _two_apart(tmp_path)
    out = tmp_path / "out" / "pasted.mrc"
    args = ["-m", tmp_path / "train", "-s", tmp_path / "tomo.mrc", "-o", out]
    result = run_cli("paste_corrections", *args, "--patches-dir", tmp_path / "patches")
    assert result.exit_code == 1 and len(result.output.splitlines()) == 1
    assert f"{tmp_path / 'tomo.mrc'}: looks like a tomogram (density values)" in result.output
    assert "Paste into the network's segmentation" in result.output
    assert not (tmp_path / "out").exists()


def test_refuses_to_overwrite_without_the_option(tmp_path, run_cli):
    _two_apart(tmp_path)
    out = tmp_path / "pasted.mrc"
    args = ["paste_corrections", "-m", tmp_path / "train", "-s", tmp_path / "tomo_segmented.mrc"]
    assert run_cli(*args, "-o", out).exit_code == 0
    out.write_bytes(b"keep me")
    result = run_cli(*args, "-o", out)
    assert result.exit_code == 1
    assert result.output == f"Error: {out}: already exists; pass --overwrite to replace\n"
    assert out.read_bytes() == b"keep me"
    result = run_cli(*args, "-o", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert _read(out).shape == SHAPE
    result = run_cli(*args, "-o", tmp_path / "tomo_segmented.mrc", "--overwrite")
    assert result.exit_code == 1 and "that is the segmentation pasted into" in result.output
    result = run_cli(*args, "-o", tmp_path / "pasted.nrrd")
    assert result.exit_code == 1 and "end its name with .mrc" in result.output
    result = run_cli(*args[:2], tmp_path / "patches", *args[3:], "-o", tmp_path / "x.mrc")
    assert result.exit_code == 1 and "an extract_patches folder" in result.output
    assert sorted(p.name for p in tmp_path.glob("*.mrc")) == [
        "pasted.mrc",
        "tomo.mrc",
        "tomo_segmented.mrc",
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _peak_memory(run) -> int:
    """Peak bytes that Python and NumPy allocated while ``run()`` ran."""
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_target_is_streamed_slab_by_slab(tmp_path, monkeypatch):
    segmentation = _two_apart(tmp_path)
    # Larger segmentations on the same grid, so that a slab is a small part of them.
    targets = {}
    for depth in (40, 400):
        big = np.zeros((depth, 120, 144), np.int8)
        big[: SHAPE[0], : SHAPE[1], : SHAPE[2]] = segmentation
        targets[depth] = write_mrc(tmp_path / f"{depth}.mrc", big, VOXEL_XYZ, ORIGIN_XYZ)
    target = targets[400]
    paste_corrections(tmp_path / "train", target, tmp_path / "whole.mrc")  # one slab

    sections = 4
    monkeypatch.setattr(pasting, "SLAB_VOXELS", sections * 120 * 144)
    reads: list[tuple[int, int]] = []
    read_block = MrcReader.read_block

    def recording(self, start, stop):
        if self.info.path == target:
            reads.append((start[0], stop[0]))
        return read_block(self, start, stop)

    monkeypatch.setattr(MrcReader, "read_block", recording)
    heard = []
    peaks = {
        depth: _peak_memory(
            lambda depth=depth: paste_corrections(
                tmp_path / "train",
                targets[depth],
                tmp_path / f"slabs{depth}.mrc",
                listener=Listener(progress=heard.append),
            )
        )
        for depth in targets
    }
    surveyed, slabs = reads[:-100], reads[-100:]
    assert slabs == [(z, z + sections) for z in range(0, 400, sections)]
    assert len(surveyed) == 2  # the density check reads each patch's box, once
    assert [(e.done, e.total) for e in heard][-101:] == [(i, 100) for i in range(101)]
    np.testing.assert_array_equal(_read(tmp_path / "slabs400.mrc"), _read(tmp_path / "whole.mrc"))
    # Memory does not grow with the target (a slab is 69 kB, the larger target 6.9 MB);
    # what it holds is reading the patches.
    nbytes = 400 * 120 * 144
    assert peaks[400] - peaks[40] < nbytes / 20 and peaks[400] < nbytes / 2, peaks


def test_patches_of_several_tomograms_are_pasted_one_tomogram_at_a_time(tmp_path):
    segmentation = _two_apart(tmp_path)
    write_mrc(tmp_path / "other.mrc", np.ones(SHAPE, np.float32), VOXEL_XYZ, ORIGIN_XYZ)
    extract_patches(
        tmp_path / "other.mrc",
        tmp_path / "tomo_segmented.mrc",
        tmp_path / "patches",
        points=[(20, 20, 12)],
        settings=ExtractSettings(patch_size=PATCH, border=BORDER),
    )
    _paint(tmp_path, "other_patch000", "Remove", FULL)
    merge_corrections(
        tmp_path / "patches",
        tmp_path / "corr",
        tmp_path / "train",
        settings=MergeSettings(overwrite=True),
    )
    args = (tmp_path / "train", tmp_path / "tomo_segmented.mrc")
    with pytest.raises(InputError, match=r"come from 2 tomograms; .* --token"):
        paste_corrections(*args, tmp_path / "a.mrc", tmp_path / "patches")
    report = paste_corrections(
        *args, tmp_path / "b.mrc", tmp_path / "patches", settings=PasteSettings(token="tomo")
    )
    assert [r["name"] for r in report.rows] == [A, B]
    np.testing.assert_array_equal(_read(tmp_path / "b.mrc"), _expected(segmentation))


def test_a_voxel_three_patches_disagree_on_is_one_conflict():
    from patch_corrections.io.geometry import PatchBox
    from patch_corrections.labels.compositing import Tally, composite

    shape = (2, 4, 4)
    boxes = [PatchBox((0, 0, 0), shape) for _ in range(3)]
    loaded = {i: np.full(shape, value, np.int8) for i, value in enumerate((1, 0, 1))}
    tally = Tally()
    slab = np.zeros(shape, np.int8)
    composite(slab, 0, shape, boxes, [0, 1, 2], loaded.__getitem__, tally)
    totals, pairs = {"conflicts": tally.conflicts}, tally.pairs
    assert totals["conflicts"] == slab.size  # each voxel once, not once per clashing pair
    assert sum(pairs.values()) == 2 * slab.size
