"""Tomograms from a physics-style simulator, independent of the sample data's generator:
a phantom of lipid bilayers and distractors, projected over a ±60° tilt series, each
projection through a contrast transfer function with noise, and reconstructed by weighted
back-projection, with the exact membrane mask as truth.

    python benchmarks/physics_sim.py --seed 120 --out /tmp/physics/120

Nothing here is shared with ``sample_data/make_sample_data.py`` (which applies a missing
wedge as a Fourier mask to a noisy density, and trained the starting network): projection
and back-projection are a sparse linear operator and its adjoint over each y line (the
tilt axis), the CTF is the weak-phase one at 300 kV with amplitude contrast, and the noise
is added to the projections, so membranes whose normal points along the beam fade and
streak, dense objects ring, and thick ice is noisier.

The phantom (``SHAPE``, 10 Å voxels): a crowded half (vesicles of many sizes) and a sparse
half (a few vesicles, tubes), a large plasma membrane lying nearly flat (normal along the
beam: the missing wedge erases it), a steep sheet, ribosome-like blobs, actin-like
filaments, gold beads, and a band of thicker ice. Truth: voxels within
``MEMBRANE_HALF_WIDTH`` of a bilayer's mid-surface.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

SHAPE = (96, 256, 256)  # z, y, x
VOXEL_SIZE = 10.0  # Å
TILTS = np.arange(-60.0, 60.0 + 1e-6, 3.0)  # degrees, about the y axis
WAVELENGTH = 0.0197  # Å, 300 kV
CS = 2.7e7  # Å (2.7 mm)
AMPLITUDE_CONTRAST = 0.07
DEFOCUS = (30000.0, 45000.0)  # Å underfocus, drawn per tomogram
LEAFLET_OFFSET = 1.6  # voxels from a bilayer's mid-surface to each head-group layer
LEAFLET_SIGMA = 0.7
MEMBRANE_HALF_WIDTH = 2.5
SNR = 0.5  # signal to noise power of one projection
LOWPASS = 0.15  # cycles per voxel: the Gaussian roll-off of the reconstruction filter
ICE_NOISE = (0.12, 0.4)  # structured ice density, thin and thick regions


@dataclass
class Phantom:
    """Density (dense is positive) and the signed distance to the nearest bilayer."""

    density: np.ndarray
    distance: np.ndarray

    @property
    def truth(self) -> np.ndarray:
        return np.abs(self.distance) <= MEMBRANE_HALF_WIDTH


class _Builder:
    """Adds objects to a phantom, each inside its bounding box only."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.density = np.zeros(SHAPE, np.float32)
        self.distance = np.full(SHAPE, np.inf, np.float32)

    def _box(self, low, high):
        box = tuple(
            slice(max(0, math.floor(a)), min(n, math.ceil(b) + 1))
            for a, b, n in zip(low, high, SHAPE)
        )
        grids = np.meshgrid(
            *(np.arange(s.start, s.stop, dtype=np.float32) for s in box), indexing="ij"
        )
        return box, grids

    def surface(self, box, signed: np.ndarray, contrast: float = 1.0) -> None:
        """A bilayer whose mid-surface is where ``signed`` (distance, voxels) is 0."""
        here = self.distance[box]
        closer = np.abs(signed) < np.abs(here)
        here[closer] = signed[closer]
        leaflets = np.exp(-((signed - LEAFLET_OFFSET) ** 2) / (2 * LEAFLET_SIGMA**2))
        leaflets += np.exp(-((signed + LEAFLET_OFFSET) ** 2) / (2 * LEAFLET_SIGMA**2))
        self.density[box] += contrast * leaflets

    def vesicle(self, centre, radius, contrast=1.0) -> None:
        pad = radius + 5
        box, (z, y, x) = self._box([c - pad for c in centre], [c + pad for c in centre])
        radial = np.sqrt((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2)
        self.surface(box, radial - radius, contrast)
        self.density[box] += 0.15 * (radial < radius - 3)  # lumen slightly denser

    def tube(self, start, end, radius) -> None:
        low = np.minimum(start, end) - radius - 5
        high = np.maximum(start, end) + radius + 5
        box, (z, y, x) = self._box(low, high)
        axis = np.subtract(end, start, dtype=np.float32)
        length = float(np.linalg.norm(axis))
        axis /= length
        rel = [z - start[0], y - start[1], x - start[2]]
        along = rel[0] * axis[0] + rel[1] * axis[1] + rel[2] * axis[2]
        across = np.sqrt(np.maximum(sum(r * r for r in rel) - along**2, 0))
        signed = np.where((along >= 0) & (along <= length), across - radius, np.inf)
        self.surface(box, signed.astype(np.float32))

    def sheet(self, height, contrast=1.0) -> None:
        """A membrane ``z = height(y, x)`` (gently sloped: vertical distance)."""
        box, (z, y, x) = self._box((0, 0, 0), SHAPE)
        self.surface(box, (z - height(y, x)).astype(np.float32), contrast)

    def plane(self, normal, point) -> None:
        box, (z, y, x) = self._box((0, 0, 0), SHAPE)
        n = np.asarray(normal, np.float32) / np.linalg.norm(normal)
        signed = n[0] * (z - point[0]) + n[1] * (y - point[1]) + n[2] * (x - point[2])
        self.surface(box, signed.astype(np.float32))

    def blob(self, centre, radius, density) -> None:
        pad = 2 * radius + 2
        box, (z, y, x) = self._box([c - pad for c in centre], [c + pad for c in centre])
        r2 = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2
        self.density[box] += density * np.exp(-r2 / (2 * (radius / 1.3) ** 2))

    def filament(self, start, end, radius=1.3, density=0.9) -> None:
        low, high = np.minimum(start, end) - 4, np.maximum(start, end) + 4
        box, (z, y, x) = self._box(low, high)
        axis = np.subtract(end, start, dtype=np.float32)
        length = float(np.linalg.norm(axis))
        axis /= length
        rel = [z - start[0], y - start[1], x - start[2]]
        along = np.clip(rel[0] * axis[0] + rel[1] * axis[1] + rel[2] * axis[2], 0, length)
        d2 = sum((r - along * a) ** 2 for r, a in zip(rel, axis))
        self.density[box] += density * np.exp(-d2 / (2 * radius**2))


def _free(centre, radius, placed, margin=4.0) -> bool:
    return all(math.dist(centre, p[:3]) > radius + p[3] + margin for p in placed)


def _vesicles(b: _Builder, count: int, x_range, radii, placed: list) -> None:
    rng, tries = b.rng, 0
    while count and tries < 5000:
        tries += 1
        r = float(rng.uniform(*radii))
        c = (
            float(rng.uniform(r + 4, 62 - r)) if r < 27 else 40.0,
            float(rng.uniform(r + 2, SHAPE[1] - r - 2)),
            float(rng.uniform(x_range[0] + r, x_range[1] - r)),
        )
        if c[0] - r > 3 and _free(c, r, placed):
            placed.append((*c, r))
            b.vesicle(c, r, contrast=float(rng.uniform(0.7, 1.2)))
            count -= 1


def phantom(seed: int) -> Phantom:
    """The phantom of ``seed``: the same arrays every time."""
    rng = np.random.default_rng(seed)
    b = _Builder(rng)
    # A plasma membrane lying nearly flat near the top: its normal is along the beam.
    phase, tilt = rng.uniform(0, 2 * np.pi), rng.uniform(-0.03, 0.03)
    b.sheet(lambda y, x: 78 + tilt * (x - 128) + 4 * np.sin(2 * np.pi * y / 300 + phase))
    # A steep sheet (an organelle's face) in the sparse half.
    b.plane((0.15, float(rng.uniform(-0.3, 0.3)), 1.0), (40, 128, float(rng.uniform(200, 225))))
    placed: list = []
    _vesicles(b, 16, (4, 128), (6, 16), placed)  # the crowded half
    _vesicles(b, 3, (128, 190), (10, 22), placed)  # the sparse half
    for _ in range(2):  # tubes in the sparse half
        y0, x0 = rng.uniform(20, 236), rng.uniform(135, 185)
        angle = rng.uniform(0, np.pi)
        half = rng.uniform(30, 60)
        start = (rng.uniform(25, 50), y0 - half * np.sin(angle), x0 - half * np.cos(angle))
        end = (start[0] + rng.uniform(-8, 8), y0 + half * np.sin(angle), x0 + half * np.cos(angle))
        b.tube(np.array(start), np.array(end), float(rng.uniform(5, 8)))
    for _ in range(90):  # ribosome-like blobs, everywhere below the plasma membrane
        c = (rng.uniform(6, 68), rng.uniform(5, 251), rng.uniform(5, 251))
        b.blob(c, float(rng.uniform(3, 5)), float(rng.uniform(1.2, 2.0)))
    for _ in range(6):  # actin-like filaments
        s = np.array([rng.uniform(10, 65), rng.uniform(0, 256), rng.uniform(0, 256)])
        d = rng.normal(size=3) * (0.2, 1, 1)
        b.filament(s, s + 90 * d / np.linalg.norm(d))
    for _ in range(3):  # gold beads
        b.blob((rng.uniform(8, 70), rng.uniform(8, 248), rng.uniform(8, 248)), 4, 8.0)
    density = (b.density + _ice(rng)).astype(np.float32)
    density[82:] *= 0.2  # above the cell: thin ice only
    return Phantom(density, b.distance)


def _ice(rng: np.random.Generator) -> np.ndarray:
    """Structured solvent density, stronger in a band of thicker ice along y."""
    noise = torch.from_numpy(rng.normal(size=SHAPE).astype(np.float32))[None, None]
    kernel = torch.exp(-(torch.arange(-4, 5, dtype=torch.float32) ** 2) / 2.0)
    kernel /= kernel.sum()
    for dim in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + dim] = 9
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - dim)] = pad[2 * (2 - dim) + 1] = 4
        noise = torch.nn.functional.conv3d(
            torch.nn.functional.pad(noise, pad, mode="circular"), kernel.view(shape)
        )
    noise = noise[0, 0].numpy()
    noise /= noise.std()
    y = np.arange(SHAPE[1])[None, :, None]
    thick = 1 / (1 + np.exp(-(y - 170) / 6.0))  # y > 170: thick ice
    return noise * (ICE_NOISE[0] + (ICE_NOISE[1] - ICE_NOISE[0]) * thick)


def _operator(angle: float) -> torch.Tensor:
    """Sparse ``(X detector bins, Z·X voxels)`` projection along the beam tilted by
    ``angle`` degrees about y: each voxel split linearly between two bins."""
    nz, nx = SHAPE[0], SHAPE[2]
    z, x = np.meshgrid(np.arange(nz) - (nz - 1) / 2, np.arange(nx) - (nx - 1) / 2, indexing="ij")
    t = math.radians(angle)
    s = x * math.cos(t) + z * math.sin(t) + (nx - 1) / 2
    low = np.floor(s).astype(np.int64)
    frac = (s - low).astype(np.float32)
    voxel = np.arange(nz * nx)
    rows, cols, values = [], [], []
    for bin_, weight in ((low, 1 - frac), (low + 1, frac)):
        inside = ((bin_ >= 0) & (bin_ < nx)).ravel()
        rows.append(bin_.ravel()[inside])
        cols.append(voxel[inside])
        values.append(weight.ravel()[inside])
    index = torch.from_numpy(np.stack([np.concatenate(rows), np.concatenate(cols)]))
    values = torch.from_numpy(np.concatenate(values))
    return torch.sparse_coo_tensor(index, values, (nx, nz * nx), check_invariants=False)


def _ctf(defocus: float) -> torch.Tensor:
    """The weak-phase CTF (phase and amplitude contrast, no envelope beyond a mild B) on
    the ``(Y, X)`` detector's rfft grid."""
    ky = np.fft.fftfreq(SHAPE[1], VOXEL_SIZE)[:, None]
    kx = np.fft.rfftfreq(SHAPE[2], VOXEL_SIZE)[None, :]
    k2 = ky**2 + kx**2
    chi = np.pi * WAVELENGTH * defocus * k2 - 0.5 * np.pi * CS * WAVELENGTH**3 * k2**2
    ctf = -(math.sqrt(1 - AMPLITUDE_CONTRAST**2) * np.sin(chi) + AMPLITUDE_CONTRAST * np.cos(chi))
    envelope = np.exp(-100.0 * k2 / 4)  # B = 100 Å²
    return torch.from_numpy((ctf * envelope).astype(np.float32))


def simulate(density: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The reconstructed tomogram (dense is dark), float32 ``(z, y, x)``."""
    torch.manual_seed(int(rng.integers(2**31)))
    lines = torch.from_numpy(density).permute(1, 0, 2).reshape(SHAPE[1], -1)  # (y, z·x)
    ctf = _ctf(float(rng.uniform(*DEFOCUS)))
    kx = torch.from_numpy(np.fft.rfftfreq(SHAPE[2]).astype(np.float32))
    ramp = kx * torch.exp(-(kx**2) / (2 * LOWPASS**2))  # ramp, rolled off
    volume = torch.zeros_like(lines)
    for angle in TILTS:
        operator = _operator(float(angle))
        projection = torch.sparse.mm(operator, lines.T).T  # (y, x)
        image = torch.fft.irfft2(torch.fft.rfft2(projection) * ctf, s=projection.shape)
        noise_sd = image.std() / math.sqrt(SNR)
        image = image + noise_sd * torch.randn(image.shape)
        filtered = torch.fft.irfft(torch.fft.rfft(image, dim=1) * ramp, n=SHAPE[2], dim=1)
        volume += torch.sparse.mm(operator.T, filtered.T).T
    tomogram = volume.reshape(SHAPE[1], SHAPE[0], SHAPE[2]).permute(1, 0, 2).numpy()
    # Dense is dark, as in the sample: flip if the low-passed tomogram follows density.
    if np.corrcoef(_low(tomogram).ravel(), _low(density).ravel())[0, 1] > 0:
        tomogram = -tomogram
    return ((tomogram - tomogram.mean()) / tomogram.std()).astype(np.float32)


def _low(volume: np.ndarray) -> np.ndarray:
    return volume[::4, ::4, ::4]


def synthesize(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(tomogram float32, truth uint8)`` of ``seed``, both ``(z, y, x)``."""
    made = phantom(seed)
    tomogram = simulate(made.density, np.random.default_rng([seed, 1]))
    return tomogram, made.truth.astype(np.uint8)


def write(seed: int, out: Path) -> tuple[Path, Path]:
    """Write ``tomogram.mrc`` and ``truth.mrc`` of ``seed`` into ``out`` (kept if there)."""
    from patch_corrections.io.volumes import Geometry, write_volume

    out.mkdir(parents=True, exist_ok=True)
    paths = out / "tomogram.mrc", out / "truth.mrc"
    if not all(p.exists() for p in paths):
        tomogram, truth = synthesize(seed)
        geometry = Geometry((VOXEL_SIZE,) * 3)
        write_volume(paths[1], truth, geometry, overwrite=True)
        write_volume(paths[0], tomogram, geometry, overwrite=True)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    tomogram, truth = write(args.seed, args.out)
    print(f"wrote {tomogram} and {truth}")


if __name__ == "__main__":
    main()
