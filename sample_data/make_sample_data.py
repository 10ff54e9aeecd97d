"""Regenerate the sample data: a small synthetic cryo-ET tomogram and everything around it.

    python sample_data/make_sample_data.py [--out sample_data]

Writes, from a fixed seed (the same arrays every time):

- ``tomogram.mrc``: 224 x 224 x 64 voxels (x, y, z), 10 Å, int8, dark lipid bilayers
  (vesicles and two sheets), dense protein-like blobs, a ±60° missing wedge around y, noise;
- ``truth.mrc``: the true membrane mask (1 within 2.5 voxels of a bilayer's mid-surface);
- ``prediction.mrc``: the segmentation by ``starting_model.pt``, a tiny network trained
  by ``train_starting_model.py`` on other synthetic tomograms whose labels lack membrane
  where the missing wedge erases it (surfaces facing z) and carry false rings on dense
  blobs, the errors a network trained elsewhere makes;
- ``centres.csv``: patch centres (x, y, z) where the prediction is wrong;
- ``corrections/<patch>/Add1.nrrd, Remove1.nrrd, Ignore1.nrrd``: what an annotator paints
  on the patches that ``extract_patches --patch-size 96`` cuts at those centres: Add where
  membrane is missing, Remove on false membrane, Ignore where the wedge leaves the membrane
  too faint to tell. One patch's Remove mask is saved as 0/255, as some tools do.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from patch_corrections.constants import MEMBRANE
from patch_corrections.io.centres import parse_centres
from patch_corrections.io.volumes import Geometry, write_volume
from patch_corrections.labels.patches import (
    Binarisation,
    PatchBox,
    centre_index,
    label_patch,
    place_block,
)

SHAPE = (64, 224, 224)  # z, y, x
VOXEL_SIZE = 10.0  # Å
SEED = 20261125
PATCH_SIZE = 96
BORDER = 16
TILT_RANGE = 60.0  # degrees either side: the wedge beyond it is missing
LEAFLET_OFFSET = 1.8  # voxels from the mid-surface to each head-group layer
LEAFLET_SIGMA = 0.8
MEMBRANE_HALF_WIDTH = 2.5  # truth: voxels this close to the mid-surface
WEDGE_MISS = 0.8  # prediction misses membrane whose normal has |n_z| above this
WEDGE_UNSURE = 0.95  # the annotator cannot tell above this: Ignore


@dataclass
class Surfaces:
    """Per voxel: distance to the nearest bilayer mid-surface and |n_z| of its normal."""

    distance: np.ndarray
    normal_z: np.ndarray


def _grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in SHAPE), indexing="ij")
    return z, y, x


def _place_vesicles(rng: np.random.Generator, count: int) -> list[tuple[float, ...]]:
    """Non-overlapping spheres (cz, cy, cx, radius) fully inside in z."""
    placed: list[tuple[float, ...]] = []
    while len(placed) < count:
        r = rng.uniform(10, 22)
        c = (
            rng.uniform(r + 5, SHAPE[0] - r - 5),
            rng.uniform(r + 4, SHAPE[1] - r - 4),
            rng.uniform(r + 4, SHAPE[2] - r - 4),
        )
        clear_of_sheets = c[2] + r < 165 and c[1] + r < 165
        if clear_of_sheets and all(math.dist(c, p[:3]) > r + p[3] + 6 for p in placed):
            placed.append((*c, r))
    return placed


def make_surfaces(vesicles) -> Surfaces:
    z, y, x = _grid()
    distance = np.full(SHAPE, np.inf, np.float32)
    normal_z = np.zeros(SHAPE, np.float32)

    def take(d: np.ndarray, nz: np.ndarray) -> None:
        closer = np.abs(d) < np.abs(distance)
        distance[closer] = d[closer]
        normal_z[closer] = np.abs(nz[closer]) if np.ndim(nz) else abs(nz)

    for cz, cy, cx, r in vesicles:
        radial = np.sqrt((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) + 1e-6
        take(radial - r, (z - cz) / radial)
    # A large, gently curved sheet crossing the volume (a plasma membrane) ...
    big_r, centre_x = 420.0, 190.0 + 420.0
    radial = np.sqrt((z - 32) ** 2 + (y - 112) ** 2 + (x - centre_x) ** 2)
    take(radial - big_r, (z - 32) / radial)
    # ... and a flat one, tilted, whose normal stays out of the missing wedge.
    normal = np.array([0.2, 0.95, 0.24]) / np.linalg.norm([0.2, 0.95, 0.24])  # z, y, x
    plane = normal[0] * (z - 32) + normal[1] * (y - 205) + normal[2] * (x - 112)
    take(plane.astype(np.float32), np.float32(normal[0]))
    return Surfaces(distance, normal_z)


def _place_blobs(rng: np.random.Generator, surfaces: Surfaces, count: int):
    """Protein-like blobs (cz, cy, cx, radius) away from the membranes."""
    blobs: list[tuple[float, ...]] = []
    while len(blobs) < count:
        r = rng.uniform(3, 5)
        c = (
            rng.uniform(6, SHAPE[0] - 6),
            rng.uniform(6, SHAPE[1] - 6),
            rng.uniform(6, SHAPE[2] - 6),
        )
        index = tuple(int(v) for v in c)
        if abs(surfaces.distance[index]) > r + 6 and all(
            math.dist(c, b[:3]) > r + b[3] + 4 for b in blobs
        ):
            blobs.append((*c, r))
    return blobs


def render(surfaces: Surfaces, blobs, rng: np.random.Generator) -> np.ndarray:
    """Density (dark = dense), noise added, missing wedge applied; float32."""
    d = surfaces.distance
    density = -(
        np.exp(-((d - LEAFLET_OFFSET) ** 2) / (2 * LEAFLET_SIGMA**2))
        + np.exp(-((d + LEAFLET_OFFSET) ** 2) / (2 * LEAFLET_SIGMA**2))
    )
    z, y, x = _grid()
    for cz, cy, cx, r in blobs:
        density -= 2.0 * np.exp(
            -((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) / (2 * (r / 1.4) ** 2)
        )
    density += rng.normal(0, 1.1, SHAPE).astype(np.float32)
    spectrum = np.fft.rfftn(density)
    kz = np.fft.fftfreq(SHAPE[0])[:, None, None]
    ky = np.fft.fftfreq(SHAPE[1])[None, :, None]
    kx = np.fft.rfftfreq(SHAPE[2])[None, None, :]
    missing = np.abs(kz) > np.tan(np.radians(TILT_RANGE)) * np.abs(kx)
    lowpass = np.exp(-(kx**2 + ky**2 + kz**2) / (2 * 0.18**2))
    spectrum *= np.where(missing, 0.0, lowpass)
    spectrum[0, 0, 0] = 0
    return np.fft.irfftn(spectrum, s=SHAPE, axes=(0, 1, 2)).astype(np.float32)


def to_int8(volume: np.ndarray) -> np.ndarray:
    scaled = (volume - volume.mean()) / volume.std() * 32
    return np.clip(np.rint(scaled), -127, 127).astype(np.int8)


def make_prediction(surfaces: Surfaces, truth: np.ndarray, blobs) -> np.ndarray:
    prediction = truth & (surfaces.normal_z <= WEDGE_MISS)
    z, y, x = _grid()
    for cz, cy, cx, r in blobs[::2]:  # every other blob gets a false membrane ring
        radial = np.sqrt((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2)
        prediction |= np.abs(radial - (r + 1.5)) <= 1.0
    return prediction


def choose_centres(vesicles, blobs, prediction, truth) -> list[tuple[int, int, int]]:
    """x, y, z centres: the three biggest vesicles, and the blob with most false membrane."""
    centres = [
        (round(cx), round(cy), round(cz))
        for cz, cy, cx, _ in sorted(vesicles, key=lambda v: -v[3])[:3]
    ]
    false = prediction & ~truth
    cz, cy, cx, _ = max(
        blobs[::2],
        key=lambda b: false[
            int(b[0]) - 6 : int(b[0]) + 6,
            int(b[1]) - 6 : int(b[1]) + 6,
            int(b[2]) - 6 : int(b[2]) + 6,
        ].sum(),
    )
    centres.append((round(cx), round(cy), round(cz)))
    return centres


def paint_corrections(out: Path, centres, prediction, truth, surfaces) -> None:
    """Masks an annotator would paint on each extracted patch, saved as MITK does (0/1)."""
    geometry = Geometry((VOXEL_SIZE,) * 3)
    size = (PATCH_SIZE,) * 3
    shape = SHAPE
    for number, xyz in enumerate(centres):
        name = f"tomogram_patch{number:03d}"
        box = PatchBox.around(centre_index(xyz), size)
        start, stop = box.inside(shape)
        window = tuple(slice(a, b) for a, b in zip(start, stop))
        labels = label_patch(prediction[window], box, shape, BORDER, Binarisation(0.5, "binary"))
        truth_p = place_block(truth[window], box, shape, False)
        normal_p = place_block(surfaces.normal_z[window], box, shape, 0.0)
        unsure = truth_p & (labels != MEMBRANE) & (normal_p > WEDGE_UNSURE)
        add = truth_p & (labels == 0) & ~unsure
        remove = (labels == MEMBRANE) & ~truth_p
        folder = out / "corrections" / name
        folder.mkdir(parents=True, exist_ok=True)
        patch_geometry = geometry.shifted(box.offset)
        remove_value = 255 if number == 3 else 1
        for filename, mask, value in (
            ("Add1.nrrd", add, 1),
            ("Remove1.nrrd", remove, remove_value),
            ("Ignore1.nrrd", unsure, 1),
        ):
            if mask.any():
                write_volume(
                    folder / filename,
                    mask.astype(np.uint8) * value,
                    patch_geometry,
                    overwrite=True,
                )


@dataclass
class Synthetic:
    """One synthetic tomogram ``(z, y, x)`` int8 with its truth and imperfect prediction."""

    tomogram: np.ndarray
    truth: np.ndarray
    prediction: np.ndarray
    surfaces: Surfaces
    vesicles: list
    blobs: list


def synthesize(seed: int = SEED) -> Synthetic:
    """Build the synthetic tomogram of ``seed`` (``SEED`` is the bundled sample)."""
    rng = np.random.default_rng(seed)
    vesicles = _place_vesicles(rng, 7)
    surfaces = make_surfaces(vesicles)
    blobs = _place_blobs(rng, surfaces, 30)
    truth = np.abs(surfaces.distance) <= MEMBRANE_HALF_WIDTH
    prediction = make_prediction(surfaces, truth, blobs)
    tomogram = to_int8(render(surfaces, blobs, rng))
    return Synthetic(tomogram, truth, prediction, surfaces, vesicles, blobs)


STARTING_MODEL = Path(__file__).resolve().parent / "starting_model.pt"


def segment_with_starting_model(tomogram: Path) -> np.ndarray:
    """The starting network's segmentation of ``tomogram``, through ``segment`` itself."""
    import tempfile

    import mrcfile

    from patch_corrections import segment
    from patch_corrections.workflows.demo import DEMO_SEGMENT

    # The demo's settings: its first segmentation is then this prediction, voxel for voxel.
    with tempfile.TemporaryDirectory() as folder:
        report = segment(tomogram, STARTING_MODEL, Path(folder), settings=DEMO_SEGMENT)
        return mrcfile.read(report.segmentation).astype(bool)


def main() -> None:
    parser = argparse.ArgumentParser(description="Regenerate the synthetic sample data.")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    out = parser.parse_args().out
    sample = synthesize(SEED)
    tomogram, truth = sample.tomogram, sample.truth
    surfaces, vesicles, blobs = sample.surfaces, sample.vesicles, sample.blobs
    geometry = Geometry((VOXEL_SIZE,) * 3)
    out.mkdir(parents=True, exist_ok=True)
    write_volume(out / "tomogram.mrc", tomogram, geometry, overwrite=True)
    write_volume(out / "truth.mrc", truth.astype(np.int8), geometry, overwrite=True)
    prediction = segment_with_starting_model(out / "tomogram.mrc")
    write_volume(out / "prediction.mrc", prediction.astype(np.int8), geometry, overwrite=True)
    centres = choose_centres(vesicles, blobs, prediction, truth)
    text = "x,y,z\n" + "".join(f"{x},{y},{z}\n" for x, y, z in centres)
    (out / "centres.csv").write_text(text)
    parsed = [c.xyz for c in parse_centres(text, out / "centres.csv")]
    paint_corrections(out, parsed, prediction, truth, surfaces)
    print(
        f"wrote sample data to {out}: {len(centres)} centres, "
        f"truth {truth.mean():.1%} membrane, prediction misses "
        f"{(truth & ~prediction).sum() / truth.sum():.1%} of it and adds "
        f"{(prediction & ~truth).sum()} false voxels"
    )


if __name__ == "__main__":
    main()
