"""``export_membrain``: a network of ours as a MemBrain-seg checkpoint that segments there as
the original segments here.

tests/fixtures/membrain_export/ was made once (tests/fixtures/make_membrain_export_fixture.py;
its README lists the commands and versions): ``ours_tiny.pt``, our U-Net in MemBrain-seg's
shape with small widths; ``expected.npz``, what membrain-seg 0.0.10's own ``membrain
segment`` made of tests/fixtures/membrain/tomo_10A.mrc with the exported file, with and
without TTA; ``expected.json``, the digest of the exported state dict.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch
from conftest import all_files, save_tiny_checkpoint

from patch_corrections import (
    ExportSettings,
    Geometry,
    InputError,
    RetrainSettings,
    SegmentSettings,
    export_membrain,
    retrain,
    segment,
    write_volume,
)
from patch_corrections.constants import NORMALISATION, ZSCORE
from patch_corrections.network.checkpoints import (
    EXPORT_KEY,
    load_network,
    membrain_checkpoint,
    membrain_hyper_parameters,
    network_from_checkpoint,
    save_checkpoint,
)
from patch_corrections.network.membrain_weights import (
    config_from_state_dict,
    lightning_state_dict,
    membrain_state_dict,
)
from patch_corrections.network.unet import PRESETS, UNet, UNetConfig

FIXTURES = Path(__file__).resolve().parent / "fixtures"
EXPORT = FIXTURES / "membrain_export"
OURS = EXPORT / "ours_tiny.pt"
TOMOGRAM = FIXTURES / "membrain" / "tomo_10A.mrc"


def _generator():
    """The fixture's generator, for its digest of a state dict."""
    path = FIXTURES / "make_membrain_export_fixture.py"
    spec = importlib.util.spec_from_file_location("make_membrain_export_fixture", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("case", "tta"), [("noTTA", False), ("TTA", True)])
def test_membrain_segments_the_export_as_we_segment_the_original(tmp_path, case, tta):
    # membrain segment's defaults, its window of 64 aside: 8-flip TTA on or off, overlap
    # 0.5, logits > 0; the original checkpoint records MemBrain-seg's normalisation.
    report = segment(
        TOMOGRAM, OURS, tmp_path, settings=SegmentSettings(window=64, tta=tta, device="cpu")
    )
    ours = mrcfile.read(report.segmentation) != 0
    theirs = np.load(EXPORT / "expected.npz")[f"{case}_segmented"]
    assert ours.shape == theirs.shape == (39, 48, 72)
    assert 0 < theirs.sum() < theirs.size
    assert np.array_equal(ours, theirs)


def test_exporting_again_gives_the_stored_state_dict(tmp_path):
    expected = json.loads((EXPORT / "expected.json").read_text())
    report = export_membrain(OURS, tmp_path / "ours.ckpt")
    content = torch.load(report.out, weights_only=True)
    assert _generator().state_digest(content["state_dict"]) == expected["state_digest"]
    assert (
        content["hyper_parameters"]
        == expected["hyper_parameters"]
        == {"channels": [4, 4, 8, 8, 8, 8]}
    )
    assert content["pytorch-lightning_version"] == expected["pytorch-lightning_version"]
    assert content["optimizer_states"] == [] and content["global_step"] == 0
    record = content[EXPORT_KEY]
    assert (record["normalisation"], record["pixel_size"], record["step"]) == (ZSCORE, 10.0, 0)
    assert record["source"] == str(OURS) and len(record["source_sha256"]) == 64
    assert report.warnings == [] and report.weights == 35059
    assert report.size_bytes == report.out.stat().st_size


def test_ours_to_membrain_to_ours_is_the_identity_on_weights():
    network = load_network(OURS).network
    content = membrain_checkpoint(network, {})
    back, _ = network_from_checkpoint(content, Path("exported.ckpt"))
    assert back.config == network.config
    ours, again = network.state_dict(), back.state_dict()
    assert list(ours) == list(again)
    assert all(torch.equal(ours[key], again[key]) for key in ours)
    weights = membrain_state_dict(lightning_state_dict(ours, network.config))
    assert list(weights) == list(ours) and all(weights[k] is ours[k] for k in ours)


@pytest.mark.parametrize(
    "theirs",
    [
        FIXTURES / "dynunet_tiny.pt",  # MONAI's DynUNet itself, 4 levels
        FIXTURES / "membrain" / "membrain_tiny.ckpt",  # MemBrain-seg's module, 6 levels
    ],
)
def test_the_state_dict_is_named_as_monai_and_lightning_name_it(theirs):
    state = torch.load(theirs, weights_only=True)["state_dict"]
    if not next(iter(state)).startswith("_model."):
        state = {f"_model.{key}": value for key, value in state.items()}
    weights = membrain_state_dict(state)
    made = lightning_state_dict(weights, config_from_state_dict(weights))
    assert list(made) == list(state)  # skip_layers aliases included, in Lightning's order
    assert all(torch.equal(made[key], state[key]) for key in state)


def test_membrain_builds_the_full_preset_from_its_widths():
    assert membrain_hyper_parameters(PRESETS["full"]) == {
        "channels": [32, 64, 128, 256, 512, 1024]
    }
    wide = UNetConfig(filters=(8, 16, 32, 64, 128, 256))
    assert membrain_hyper_parameters(wide) == {"channels": [8, 16, 32, 64, 128, 256]}


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        (PRESETS["small"], "a 5-level network (the small preset, filters 16, 32, 64, 128, 256)"),
        (PRESETS["tiny"], "a 4-level network (the tiny preset, filters 4, 8, 16, 32)"),
        (UNetConfig(axis_order="zyx"), "sees arrays in (z, y, x) order"),
        (UNetConfig(strides=(1, 2, 2, 2, 2, 1)), "strides (1, 2, 2, 2, 2, 1) (MemBrain-seg's"),
        (UNetConfig(kernel_size=5), "kernel_size 5 (MemBrain-seg's: 3)"),
        (UNetConfig(heads=1), "heads 1 (MemBrain-seg's: 2)"),
    ],
)
def test_networks_membrain_cannot_hold_are_refused(config, reason):
    with pytest.raises(InputError, match="cannot be held by MemBrain-seg's network") as caught:
        membrain_hyper_parameters(config)
    assert reason in str(caught.value)


def _checkpoint(path: Path, config: UNetConfig, **record) -> Path:
    torch.manual_seed(0)
    network = UNet(config)
    content = {"model_config": config.to_dict(), "model": network.state_dict(), **record}
    save_checkpoint(path, content)
    return path


MEMBRAIN_SHAPED = UNetConfig(filters=(2, 2, 2, 2, 2, 2))


def _refusals(folder: Path) -> dict[str, tuple[list, str]]:
    """name: (arguments after export_membrain, what the one line says)."""
    small = _checkpoint(folder / "small.pt", PRESETS["small"], normalisation=ZSCORE)
    zyx = UNetConfig(filters=(2, 2, 2, 2, 2, 2), axis_order="zyx")
    old = _checkpoint(folder / "old.pt", zyx, normalisation=ZSCORE)
    robust = _checkpoint(folder / "robust.pt", MEMBRAIN_SHAPED, normalisation=NORMALISATION)
    fine = _checkpoint(folder / "fine.pt", MEMBRAIN_SHAPED, normalisation=ZSCORE)
    (folder / "taken.ckpt").write_bytes(b"an earlier export")
    (folder / "sub").mkdir()
    theirs = FIXTURES / "membrain" / "membrain_tiny.ckpt"
    return {
        "small": ([small], f"{small}: cannot be held by MemBrain-seg's network: a 5-level"),
        "zyx": ([old], f"{old}: cannot be held by MemBrain-seg's network: its network sees"),
        "membrain": ([theirs], f"{theirs}: already a MemBrain-seg checkpoint: nothing to export"),
        "robust": ([robust], f"{robust}: its network learnt intensities normalised by the median"),
        "taken": (
            [fine, "--out", folder / "taken.ckpt"],
            f"{folder / 'taken.ckpt'}: already exists; pass --overwrite to replace",
        ),
        "itself": ([fine, "--out", fine, "--overwrite"], f"--out {fine}: is the --checkpoint"),
        "folder": ([fine, "--out", folder / "sub"], f"--out {folder / 'sub'}: is a folder"),
    }


@pytest.mark.parametrize(
    "name", ["small", "zyx", "membrain", "robust", "taken", "itself", "folder"]
)
def test_refusals_are_one_line_and_write_nothing(run_cli, tmp_path, name):
    args, line = _refusals(tmp_path)[name]
    before = {path: path.read_bytes() for path in all_files(tmp_path)}
    out = ["--out", tmp_path / "out.ckpt"] if "--out" not in args else []
    result = run_cli("export_membrain", "--checkpoint", *args, *out)
    assert result.exit_code == 1
    assert result.stdout == "" and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"Error: {line}")
    assert {path: path.read_bytes() for path in all_files(tmp_path)} == before


def test_export_command_writes_and_overwrites_only_when_asked(run_cli, tmp_path):
    out = tmp_path / "model" / "best_membrain.ckpt"
    result = run_cli("export_membrain", "--checkpoint", OURS, "--out", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"Exported {OURS} (step 0; filters 4, 4, 8, 8, 8, 8; 35,059 weights) to {out} "
        f"({out.stat().st_size / 1024:.0f} KiB, weights only).",
        "Its network learnt intensities normalised by each tomogram's mean and standard "
        "deviation (MemBrain-seg's own), at 10 Å.",
        f"Use it: membrain segment --tomogram-path <tomogram> --ckpt-path {out}",
    ]
    out.write_bytes(b"an earlier export")
    again = run_cli("export_membrain", "--checkpoint", OURS, "--out", out, "--overwrite")
    assert again.exit_code == 0, again.output
    assert all_files(tmp_path) == [out]  # no temporary file left beside it
    expected = json.loads((EXPORT / "expected.json").read_text())["state_digest"]
    state = torch.load(out, weights_only=True)["state_dict"]
    assert _generator().state_digest(state) == expected


def test_a_forced_export_warns_and_reads_back_as_it_learnt(tmp_path):
    robust = _checkpoint(
        tmp_path / "robust.pt", MEMBRAIN_SHAPED, normalisation=NORMALISATION, pixel_size=14.0
    )
    settings = ExportSettings(allow_normalisation_mismatch=True)
    report = export_membrain(robust, tmp_path / "robust.ckpt", settings=settings)
    assert len(report.warnings) == 2
    assert "membrain segment normalises each tomogram by its mean" in report.warnings[0]
    assert "with --rescale-patches, add --out-pixel-size 14" in report.warnings[1]
    # Read back here, the export is fed as its network learnt.
    loaded = load_network(report.out)
    assert (loaded.normalisation, loaded.pixel_size) == (NORMALISATION, 14.0)


def test_a_checkpoint_without_pixel_size_is_exported_with_a_warning(tmp_path):
    unknown = _checkpoint(tmp_path / "unknown.pt", MEMBRAIN_SHAPED, normalisation=ZSCORE)
    report = export_membrain(unknown, tmp_path / "unknown.ckpt")
    assert report.warnings == [
        f"{unknown}: records no pixel size it was trained at; membrain segment "
        "--rescale-patches takes it to be 10 Å"
    ]
    assert load_network(report.out).pixel_size == 10.0


def test_the_tiny_test_checkpoint_is_refused_before_its_normalisation(tmp_path):
    tiny = save_tiny_checkpoint(tmp_path / "tiny.pt")  # robust_z and 4 levels: shape first
    with pytest.raises(InputError, match="a 4-level network"):
        export_membrain(tiny, tmp_path / "tiny.ckpt")


def test_a_network_fine_tuned_from_membrain_seg_exports_as_it_is(tmp_path):
    # The round users make: MemBrain-seg's checkpoint, fine-tuned here, handed back.
    labels = np.zeros((64, 64, 64), np.uint8)
    labels[:, 20:24] = 1
    for folder, name, data in (("imagesTr", "p_0000", labels * -2.0), ("labelsTr", "p", labels)):
        (tmp_path / "train" / folder).mkdir(parents=True, exist_ok=True)
        write_volume(tmp_path / "train" / folder / f"{name}.nii.gz", data, Geometry((10.0,) * 3))
    settings = RetrainSettings(iterations=2, crop_size=64, batch_size=1, val_fraction=0)
    start = FIXTURES / "membrain" / "membrain_tiny.ckpt"
    tuned = retrain(tmp_path / "train", tmp_path / "model", start, settings=settings).last
    report = export_membrain(tuned, tmp_path / "model" / "last_membrain.ckpt")
    assert report.warnings == [] and (report.normalisation, report.pixel_size) == (ZSCORE, 10.0)
    exported = load_network(report.out).network.state_dict()
    trained = torch.load(tuned, weights_only=True)["model"]
    assert all(torch.equal(exported[key], value) for key, value in trained.items())
    assert not all(
        torch.equal(exported[k], v) for k, v in load_network(start).network.state_dict().items()
    )


def test_membrain_seg_itself_loads_the_export(tmp_path):
    """Runs where membrain-seg is installed (its own venv), skipped elsewhere."""
    pytest.importorskip("membrain_seg")
    from membrain_seg.segmentation.networks.inference_unet import (
        PreprocessedSemanticSegmentationUnet,
    )
    from membrain_seg.segmentation.networks.unet import SemanticSegmentationUnet

    path = export_membrain(OURS, tmp_path / "ours.ckpt").out
    state = torch.load(path, weights_only=True)["state_dict"]
    # membrain segment loads with strict=False, membrain finetune strictly: both see all.
    for cls in (PreprocessedSemanticSegmentationUnet, SemanticSegmentationUnet):
        model = cls.load_from_checkpoint(path, map_location="cpu", strict=True)
        got = model.state_dict()
        assert list(got) == list(state)
        assert all(torch.equal(got[key], value) for key, value in state.items())
