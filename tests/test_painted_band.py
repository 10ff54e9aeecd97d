"""Painted voxels inside the border band: ignore like the rest of the band by default
(MemBrain-seg's merge), kept as labels with --painted-in-band."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from patch_corrections.constants import BACKGROUND, IGNORE, MEMBRANE
from patch_corrections.io.volumes import read_volume, write_volume
from patch_corrections.labels.corrections import merge_labels
from patch_corrections.labels.patches import add_border_band

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"


def test_painted_voxels_in_the_band_stay_labels_unless_ignore_or_padding_covers_them():
    base = add_border_band(np.zeros((12, 12, 12), np.uint8), 3)
    add, remove, ignore = (np.zeros(base.shape, bool) for _ in range(3))
    add[1, 5, 5] = add[6, 6, 6] = add[5, 1, 2] = True  # band, interior, band under Ignore
    remove[5, 5, 10] = True  # band
    ignore[5, 1, 2] = True
    padding = ((0, 0), (0, 0), (0, 1))  # the last x plane lay outside the tomogram
    add[4, 4, 11] = True
    masks = {"add": add, "remove": remove, "ignore": ignore, "border": 3, "padding": padding}
    band, _ = merge_labels(base, **masks)
    kept, counts = merge_labels(base, **masks, painted_in_band=True)
    assert band[1, 5, 5] == IGNORE and band[5, 5, 10] == IGNORE and band[6, 6, 6] == MEMBRANE
    assert kept[1, 5, 5] == MEMBRANE and kept[5, 5, 10] == BACKGROUND
    assert kept[5, 1, 2] == IGNORE and kept[4, 4, 11] == IGNORE  # Ignore, padding win
    assert kept[0, 0, 0] == IGNORE and kept[6, 6, 6] == MEMBRANE  # unpainted band: ignore
    assert counts.annotated == np.count_nonzero(band != IGNORE) + 2


def test_merge_keeps_the_painted_band_voxels_on_the_sample_and_records_it(tmp_path, run_cli):
    result = run_cli(
        "extract_patches",
        "-t",
        SAMPLE / "tomogram.mrc",
        "-s",
        SAMPLE / "prediction.mrc",
        "-c",
        SAMPLE / "centres.csv",
        "--patch-size",
        96,
        "-o",
        tmp_path / "patches",
    )
    assert result.exit_code == 0, result.output
    # The bundled corrections, and a stroke of membrane painted across each patch's band.
    corrections = tmp_path / "corrections"
    shutil.copytree(SAMPLE / "corrections", corrections)
    for label in sorted((tmp_path / "patches" / "labels").iterdir()):
        labels, info = read_volume(label)
        stroke = np.zeros(labels.shape, np.uint8)
        stroke[40:44, 2:30, 40:44] = 1  # 14 voxels into the band along y, then inside
        name = label.name.removesuffix(".nrrd")
        write_volume(corrections / name / "Add2.nrrd", stroke, info.geometry)
    labelled = {}
    for choice in ("--band-over-painted", "--painted-in-band"):
        out = tmp_path / choice.strip("-")
        args = ["-l", tmp_path / "patches", "-c", corrections, "-o", out]
        result = run_cli("merge_corrections", *args, choice)
        assert result.exit_code == 0, result.output
        rows = json.loads((out / "merge_summary.json").read_text())["patches"]
        assert {r["painted_in_band"] for r in rows} == {choice == "--painted-in-band"}
        labelled[choice] = {
            path.name.removesuffix(".nii.gz"): read_volume(path)[0]
            for path in sorted((out / "labelsTr").iterdir())
        }
    for name, kept in labelled["--painted-in-band"].items():
        band = labelled["--band-over-painted"][name]
        masks = {p.stem: read_volume(p)[0] != 0 for p in (corrections / name).iterdir()}
        painted = (masks["Add1"] | masks["Add2"] | masks.get("Remove1", False)) & ~masks.get(
            "Ignore1", False
        )
        gained = (kept != IGNORE) & (band == IGNORE)
        assert (gained <= painted).all()  # only painted voxels gained
        assert (kept[~gained] == band[~gained]).all()  # the rest is as it was
        stroke_in_band = np.zeros(kept.shape, bool)
        stroke_in_band[40:44, 2:16, 40:44] = True
        assert (kept[stroke_in_band & ~masks.get("Ignore1", False)] == MEMBRANE).all()
        assert (band[stroke_in_band] == IGNORE).all()
