"""Nothing escapes its folder and runs do not trample each other: names and paths read
from manifests are checked, output folders are locked for a run, odd tomogram names
become safe patch names."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

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
from patch_corrections.errors import PatchCorrectionsWarning
from patch_corrections.io.locks import LOCK_NAME, folder_lock
from patch_corrections.io.volumes import Geometry, write_volume
from patch_corrections.workflows import paste_corrections, simulate_sparse

SHAPE = (12, 14, 16)  # z, y, x


@pytest.fixture
def extracted(tmp_path) -> Path:
    """An extraction folder with two 8³ patches of a small tomogram, and corrections."""
    rng = np.random.default_rng(0)
    write_mrc(tmp_path / "tomo.mrc", rng.normal(size=SHAPE).astype(np.float32))
    write_mrc(tmp_path / "seg.mrc", (rng.random(SHAPE) < 0.2).astype(np.int8))
    extract_patches(
        tmp_path / "tomo.mrc",
        tmp_path / "seg.mrc",
        tmp_path / "out",
        points=[(5, 5, 5), (9, 7, 6)],
        settings=ExtractSettings(patch_size=8, border=1),
    )
    add = np.zeros((8, 8, 8), np.uint8)
    add[4, 4, 4] = 1
    for name in ("tomo_patch000", "tomo_patch001"):
        (tmp_path / "corr" / name).mkdir(parents=True)
        write_volume(tmp_path / "corr" / name / "Add1.nrrd", add, Geometry((1.0, 1.0, 1.0)))
    return tmp_path / "out"


def _edit_manifest(folder: Path, **changes) -> None:
    path = folder / "manifest.json"
    content = json.loads(path.read_text())
    content["patches"][0].update(changes)
    path.write_text(json.dumps(content))


def _extract_into(extracted: Path, point, **settings) -> None:
    """Extract one more patch of the fixture's tomogram into ``extracted``."""
    tomogram = extracted.parent / "tomo.mrc"
    extract_patches(
        tomogram,
        extracted.parent / "seg.mrc",
        extracted,
        points=[point],
        settings=ExtractSettings(patch_size=8, border=1, **settings),
    )


@pytest.mark.parametrize("name", ["../../../escaped", "/tmp/escaped_abs", "a/b", "..", ""])
def test_a_patch_name_from_a_manifest_must_be_a_plain_file_name(extracted, tmp_path, name):
    _edit_manifest(extracted, name=name)
    with pytest.raises(InputError, match="must be a plain file name") as caught:
        merge_corrections(extracted, tmp_path / "corr", tmp_path / "train")
    assert "\n" not in str(caught.value) and "manifest.json: patch entry 0" in str(caught.value)
    assert not (tmp_path / "train").exists() and not list(tmp_path.parent.glob("escaped*"))


@pytest.mark.parametrize("field", ["centre_xyz", "voxel_size_xyz", "border"])
def test_a_malformed_manifest_field_is_named_and_nothing_is_written(extracted, tmp_path, field):
    _edit_manifest(extracted, **{field: ["x", 1]})
    before = {p: p.read_bytes() for p in all_files(extracted)}
    with pytest.raises(InputError) as caught:
        _extract_into(extracted, (3, 3, 3))
    assert f"patch 'tomo_patch000' has an unreadable {field!r}" in str(caught.value)
    assert {p: p.read_bytes() for p in all_files(extracted)} == before


@pytest.mark.parametrize("where", ["../victim.txt", "{absolute}", "images/link.nrrd"])
def test_overwrite_never_deletes_what_a_manifest_names_outside_its_folder(
    extracted, tmp_path, where
):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    if where == "images/link.nrrd":  # a symbolic link out of the tree
        (extracted / "images" / "link.nrrd").symlink_to(victim)
    where = where.replace("{absolute}", str(victim))
    _edit_manifest(extracted, image=where)
    before = {p: p.read_bytes() for p in all_files(extracted)}
    with pytest.raises(InputError, match="outside the folder"):
        _extract_into(extracted, (5, 5, 5), overwrite=True)
    assert victim.read_text() == "keep me"
    assert {p: p.read_bytes() for p in all_files(extracted)} == before


@pytest.mark.parametrize(
    ("field", "value"),
    [("label", "../../victim.nii.gz"), ("image", "{absolute}"), ("name", "../escaped")],
)
def test_a_summary_row_that_points_outside_its_folder_is_refused_everywhere(
    extracted, tmp_path, field, value
):
    loose = MergeSettings(ignore_geometry=True)  # the fixture paints at origin 0
    merge_corrections(extracted, tmp_path / "corr", tmp_path / "train", settings=loose)
    summary = tmp_path / "train" / "merge_summary.json"
    content = json.loads(summary.read_text())
    assert content["patches"][0]["label"] == "labelsTr/tomo_patch000.nii.gz"  # relative
    content["patches"][0][field] = value.replace("{absolute}", str(tmp_path / "victim.nii.gz"))
    summary.write_text(json.dumps(content))
    before = {p: p.read_bytes() for p in all_files(tmp_path / "train")}
    runs = {
        "paste": lambda: paste_corrections(
            tmp_path / "train", tmp_path / "seg.mrc", tmp_path / "pasted.mrc"
        ),
        "sparse": lambda: simulate_sparse(tmp_path / "train", tmp_path / "sparse"),
        # A rerun into the folder would copy the row into its new summary.
        "merge": lambda: merge_corrections(
            extracted,
            tmp_path / "corr",
            tmp_path / "train",
            settings=replace(loose, overwrite=True),
        ),
    }
    for run in runs.values():
        with pytest.raises(InputError, match=r"outside the folder|must be a plain file name"):
            run()
    assert {p: p.read_bytes() for p in all_files(tmp_path / "train")} == before
    assert not (tmp_path / "pasted.mrc").exists() and not (tmp_path / "sparse").exists()


@pytest.mark.parametrize("link", ["mask", "patch folder", "training label"])
def test_a_symbolic_link_out_of_a_tree_is_read_with_a_warning_naming_its_target(
    extracted, tmp_path, link
):
    loose = MergeSettings(ignore_geometry=True)  # the fixture paints at origin 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folder = tmp_path / "corr" / "tomo_patch000"
    if link == "mask":
        (folder / "Add1.nrrd").rename(elsewhere / "Add1.nrrd")
        (folder / "Add1.nrrd").symlink_to(elsewhere / "Add1.nrrd")
        named, target = folder / "Add1.nrrd", elsewhere / "Add1.nrrd"
    elif link == "patch folder":
        folder.rename(elsewhere / "tomo_patch000")
        folder.symlink_to(elsewhere / "tomo_patch000", target_is_directory=True)
        named, target = folder / "Add1.nrrd", elsewhere / "tomo_patch000" / "Add1.nrrd"
    report = merge_corrections(extracted, tmp_path / "corr", tmp_path / "train", settings=loose)
    if link != "training label":
        assert report.rows[0]["added"] == 1  # read from there
        assert [w for w in report.warnings if "symbolic link" in w] == [
            f"{named}: a symbolic link to {target}, outside {tmp_path / 'corr'}; read from "
            "there (copy the files in to keep the folder whole)"
        ]
        return
    assert not [w for w in report.warnings if "symbolic link" in w]
    label = tmp_path / "train" / "labelsTr" / "tomo_patch001.nii.gz"
    label.rename(elsewhere / label.name)
    label.symlink_to(elsewhere / label.name)
    report = simulate_sparse(tmp_path / "train", tmp_path / "sparse")
    assert [w.split(";")[0] for w in report.warnings if "symbolic link" in w] == [
        f"{label}: a symbolic link to {elsewhere / label.name}, outside {tmp_path / 'train'}"
    ]


def test_a_folder_takes_one_run_at_a_time(extracted, tmp_path):
    with folder_lock(extracted):
        with pytest.raises(InputError, match="another patch_corrections run is writing"):
            _extract_into(extracted, (3, 3, 3))
        with pytest.raises(InputError, match="another patch_corrections run"):
            merge_corrections(extracted, tmp_path / "corr", extracted)
        assert (extracted / LOCK_NAME).exists()
    assert not (extracted / LOCK_NAME).exists()  # released and removed
    report = extract_patches(
        tmp_path / "tomo.mrc",
        tmp_path / "seg.mrc",
        extracted,
        points=[(3, 3, 3)],
        settings=ExtractSettings(patch_size=8, border=1),
    )
    assert [p.name for p in report.patches] == ["tomo_patch002"]


def test_a_killed_run_does_not_keep_its_lock(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from patch_corrections.io.locks import folder_lock\n"
            "with folder_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)",
            str(tmp_path / "out"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match="another patch_corrections run"):
            with folder_lock(tmp_path / "out"):
                pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    deadline = time.monotonic() + 10
    while True:  # the kernel releases a dead process's lock
        try:
            with folder_lock(tmp_path / "out"):
                break
        except InputError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_a_failed_first_run_leaves_no_folder(tmp_path):
    with pytest.raises(InputError):
        merge_corrections(tmp_path / "missing", tmp_path / "corr", tmp_path / "new" / "train")
    assert not (tmp_path / "new").exists()


def test_an_odd_tomogram_name_becomes_a_safe_token(tmp_path):
    rng = np.random.default_rng(1)
    odd = tmp_path / "my tomo é#1.mrc"
    write_mrc(odd, rng.normal(size=SHAPE).astype(np.float32))
    write_mrc(tmp_path / "seg.mrc", (rng.random(SHAPE) < 0.2).astype(np.int8))
    report = extract_patches(
        odd,
        tmp_path / "seg.mrc",
        tmp_path / "out",
        points=[(5, 5, 5)],
        settings=ExtractSettings(patch_size=8, border=1),
    )
    assert [p.name for p in report.patches] == ["my_tomo___1_patch000"]
    assert any("named my_tomo___1_patchNNN" in w for w in report.warnings)
    with pytest.raises(InputError, match="--token 'a b'"):
        ExtractSettings(token="a b")


def test_nan_never_reaches_a_patch_and_is_said(tmp_path):
    from patch_corrections.io.volumes import read_volume

    rng = np.random.default_rng(2)
    tomogram = rng.normal(5, 1, size=SHAPE).astype(np.float32)
    tomogram[4:6, 4:6, 4:6] = np.nan
    tomogram[7, 7, 7] = np.inf
    segmentation = (rng.random(SHAPE) < 0.3).astype(np.float32)
    segmentation[5, 5, 5], segmentation[6, 5, 5] = np.nan, -np.inf
    with pytest.warns(RuntimeWarning, match="NaN"):  # mrcfile's, writing the inputs
        write_mrc(tmp_path / "tomo.mrc", tomogram)
        write_mrc(tmp_path / "seg.mrc", segmentation)
    report = extract_patches(
        tmp_path / "tomo.mrc",
        tmp_path / "seg.mrc",
        tmp_path / "out",
        points=[(5, 5, 5)],
        settings=ExtractSettings(patch_size=8, border=1),
    )
    image = read_volume(tmp_path / "out" / "images" / "tomo_patch000.nrrd")[0]
    labels = read_volume(tmp_path / "out" / "labels" / "tomo_patch000.nrrd")[0]
    assert np.isfinite(image).all()
    block = tomogram[1:9, 1:9, 1:9]  # the patch around (5, 5, 5), 8³
    finite_mean = block[np.isfinite(block)].mean()
    np.testing.assert_allclose(image[3:5, 3:5, 3:5], finite_mean, rtol=1e-5)
    assert labels[4, 4, 4] == labels[5, 4, 4] == 2  # NaN and -inf labels are ignore
    assert any("tomo.mrc: 9 voxel(s)" in w and "NaN or infinite" in w for w in report.warnings)
    assert any("seg.mrc: 2 voxel(s)" in w and "ignore" in w for w in report.warnings)

    # An image patch from elsewhere holding NaN: the training image gets the finite mean.
    image[0, 0, 0] = np.nan
    (tmp_path / "other" / "images").mkdir(parents=True)
    (tmp_path / "other" / "labels").mkdir()
    write_volume(tmp_path / "other" / "images" / "p.nrrd", image, Geometry((1.0, 1.0, 1.0)))
    write_volume(
        tmp_path / "other" / "labels" / "p.nrrd",
        np.zeros((8, 8, 8), np.uint8),
        Geometry((1.0, 1.0, 1.0)),
    )
    (tmp_path / "corr" / "p").mkdir(parents=True)
    write_volume(
        tmp_path / "corr" / "p" / "Add1.nrrd",
        np.ones((8, 8, 8), np.uint8),
        Geometry((1.0, 1.0, 1.0)),
    )
    merged = merge_corrections(
        tmp_path / "other" / "labels",
        tmp_path / "corr",
        tmp_path / "train",
        tmp_path / "other" / "images",
        settings=MergeSettings(border=1),
    )
    trained_image = read_volume(tmp_path / "train" / "imagesTr" / "p_0000.nii.gz")[0]
    assert np.isfinite(trained_image).all()
    assert any("p.nrrd: 1 voxel(s) are NaN or infinite" in w for w in merged.warnings)


class _Killed(BaseException):
    """Stands for the run being killed (nothing catches it)."""


def _volumes_of(folder: Path) -> dict[str, np.ndarray]:
    from patch_corrections.io.volumes import read_volume

    return {
        p.relative_to(folder).as_posix(): read_volume(p)[0]
        for p in all_files(folder)
        if p.suffix in (".nrrd", ".gz")
    }


def test_a_run_killed_at_any_rename_is_finished_or_undone_by_the_next(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    write_mrc(tmp_path / "tomo.mrc", rng.normal(size=SHAPE).astype(np.float32))
    write_mrc(tmp_path / "seg.mrc", (rng.random(SHAPE) < 0.2).astype(np.int8))
    settings = ExtractSettings(patch_size=8, border=1)

    def extract(out: Path, points) -> None:
        extract_patches(
            tmp_path / "tomo.mrc", tmp_path / "seg.mrc", out, points=points, settings=settings
        )

    def overwrite(out: Path) -> None:  # replaces the first run's patches: deletes too
        extract_patches(
            tmp_path / "tomo.mrc",
            tmp_path / "seg.mrc",
            out,
            points=[(6, 6, 6)],
            settings=replace(settings, overwrite=True),
        )

    reference = tmp_path / "reference"
    extract(reference, [(5, 5, 5), (9, 7, 6)])
    overwrite(reference)
    expected = _volumes_of(reference)
    expected_manifest = json.loads((reference / "manifest.json").read_text())["patches"]

    real_replace, kills = os.replace, 0
    for run in ("first", "overwrite"):
        for k in range(1, 40):
            out = tmp_path / f"{run}{k}"
            if run == "overwrite":
                extract(out, [(5, 5, 5), (9, 7, 6)])
            calls = 0

            def killing(source, target, k=k):
                nonlocal calls
                calls += 1
                if calls == k:
                    raise _Killed
                return real_replace(source, target)

            monkeypatch.setattr(os, "replace", killing)
            try:
                if run == "first":
                    extract(out, [(5, 5, 5), (9, 7, 6)])
                else:
                    overwrite(out)
            except _Killed:
                kills += 1
            else:
                monkeypatch.setattr(os, "replace", real_replace)
                break  # k is past the last rename: every step has been interrupted once
            finally:
                monkeypatch.setattr(os, "replace", real_replace)
            # Whatever is under a final name is whole: it reads as a complete volume.
            _volumes_of(out)
            if run == "first":
                extract(out, [(5, 5, 5), (9, 7, 6)])
            overwrite(out)  # the next run finishes or undoes the killed one's commit
            assert _volumes_of(out) == {} or set(_volumes_of(out)) == set(expected)
            for name, data in _volumes_of(out).items():
                np.testing.assert_array_equal(data, expected[name])
            manifest = json.loads((out / "manifest.json").read_text())["patches"]
            assert [r["name"] for r in manifest] == [r["name"] for r in expected_manifest]
            left = [p.name for p in out.rglob(".*")]
            assert left == [], (run, k, left)
    assert kills > 10


def test_a_full_disk_during_training_is_one_line_and_keeps_the_last_checkpoint(
    tmp_path, monkeypatch
):
    import torch

    from patch_corrections import RetrainSettings, retrain
    from patch_corrections.network.checkpoints import read_checkpoint

    labels = np.zeros((16, 16, 16), np.uint8)
    labels[6:9] = 1
    for sub in ("imagesTr", "labelsTr"):
        (tmp_path / "train" / sub).mkdir(parents=True)
    image = np.random.default_rng(4).normal(size=labels.shape).astype(np.float32)
    write_volume(tmp_path / "train" / "imagesTr" / "p_0000.nii.gz", image, Geometry((1.0,) * 3))
    write_volume(tmp_path / "train" / "labelsTr" / "p.nii.gz", labels, Geometry((1.0,) * 3))
    saves, real_save = [], torch.save

    def filling_up(content, target):
        saves.append(target)
        if len(saves) > 1:
            raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64")
        return real_save(content, target)

    monkeypatch.setattr(torch, "save", filling_up)
    settings = RetrainSettings(
        iterations=3, preset="tiny", crop_size=16, val_fraction=0, val_every=1, device="cpu"
    )
    with pytest.raises(InputError, match="no space left on the disk") as caught:
        retrain(tmp_path / "train", tmp_path / "run", settings=settings)
    assert "\n" not in str(caught.value) and "previous last.pt is kept" in str(caught.value)
    assert read_checkpoint(tmp_path / "run" / "last.pt")["step"] == 1
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")] == []


def test_segment_onto_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, run_cli):
    import errno

    from patch_corrections.network.checkpoints import save_checkpoint
    from patch_corrections.network.unet import PRESETS, UNet

    if not hasattr(os, "posix_fallocate"):
        pytest.skip("no posix_fallocate here")
    write_mrc(tmp_path / "tomo.mrc", np.zeros((16, 20, 20), np.float32))
    network = UNet(PRESETS["tiny"])
    save_checkpoint(
        tmp_path / "net.pt",
        {"model_config": network.config.to_dict(), "model": network.state_dict()},
    )

    def full(descriptor, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    result = run_cli(
        "segment",
        "-t",
        tmp_path / "tomo.mrc",
        "--checkpoint",
        tmp_path / "net.pt",
        "-o",
        tmp_path / "seg",
        "--window",
        16,
        "--device",
        "cpu",
    )
    assert result.exit_code == 1  # stdout said which network; stderr, one line, why not
    assert result.stderr.strip().startswith("Error: ") and "no space left" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "seg").exists() or not list((tmp_path / "seg").iterdir())


def test_segment_removes_what_a_killed_segment_of_the_same_tomogram_left(tmp_path):
    from patch_corrections import SegmentSettings, segment
    from patch_corrections.network.checkpoints import save_checkpoint
    from patch_corrections.network.unet import PRESETS, UNet

    write_mrc(tmp_path / "tomo.mrc", np.zeros((16, 20, 20), np.float32))
    network = UNet(PRESETS["tiny"])
    save_checkpoint(
        tmp_path / "net.pt",
        {"model_config": network.config.to_dict(), "model": network.state_dict()},
    )
    (tmp_path / "seg").mkdir()
    mine = tmp_path / "seg" / ".tomo_probabilities.mrc.staged-0a1b2c3d.mrc"
    theirs = tmp_path / "seg" / ".other_probabilities.mrc.staged-0a1b2c3d.mrc"
    for leftover in (mine, theirs):
        leftover.write_bytes(b"\0" * 1024)
    report = segment(
        tmp_path / "tomo.mrc",
        tmp_path / "net.pt",
        tmp_path / "seg",
        settings=SegmentSettings(window=16, device="cpu"),
    )
    assert not mine.exists() and theirs.exists()  # another run's may still be writing
    assert any("interrupted run" in w for w in report.warnings)


def test_overwrite_that_moves_a_patch_says_its_old_corrections_do_not_fit(extracted, tmp_path):
    report = extract_patches(
        tmp_path / "tomo.mrc",
        tmp_path / "seg.mrc",
        extracted,
        points=[(6, 6, 6)],
        settings=ExtractSettings(patch_size=8, border=1, overwrite=True),
    )
    assert [p.name for p in report.patches] == ["tomo_patch000"]
    assert any(w.startswith("tomo_patch000: now cut at other centres") for w in report.warnings)


def test_overwrite_at_another_patch_size_says_its_old_corrections_do_not_fit(extracted, tmp_path):
    report = extract_patches(
        tmp_path / "tomo.mrc",
        tmp_path / "seg.mrc",
        extracted,
        points=[(5, 5, 5)],  # the first patch's centre, cut larger
        settings=ExtractSettings(patch_size=10, border=1, overwrite=True),
    )
    assert [w for w in report.warnings if "--patch-size" in w] == [
        "tomo_patch000: now cut at --patch-size 10, before at x,y,z=8,8,8; corrections "
        "painted on the old patches do not fit them (merge_corrections refuses masks of "
        "another shape or origin)"
    ]


def test_a_folder_on_a_file_system_without_locks_is_written_with_a_warning(tmp_path, monkeypatch):
    import errno

    fcntl = pytest.importorskip("fcntl")

    def no_locks(descriptor, operation):
        raise OSError(errno.ENOLCK, "No locks available")  # NFS without its lock daemon

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(PatchCorrectionsWarning, match="its file system cannot lock files"):
        with folder_lock(tmp_path / "out"):
            (tmp_path / "out" / "written").touch()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["written"]
