"""Physics-style tomograms with their exact membrane masks, for held-out benchmarks.

Independent of the generator that made the starting network's training data
(``sample_data/make_sample_data.py``): nothing is shared with it but the voxel size.

    python benchmarks/physics_tomograms.py --seed 120 --out /tmp/physics_tomograms/120
        [--report]   # also: membrane share per kind and region

Writes ``tomogram.mrc`` (float32, dense is dark as in the sample) and ``truth.mrc``
(uint8 0/1), 256 x 256 x 96 voxels (x, y, z) of 10 Å; the same arrays for the same seed.
``synthesize(seed) -> (tomogram, truth)`` does the same in memory, ``phantom(seed)`` gives
the density, the truth and each membrane voxel's kind.

The phantom (density: dense is positive):

- membranes as lipid bilayers (two Gaussian leaflets, their spacing drawn per object,
  2.2-4 voxels), truth within ``leaflet offset + TRUTH_MARGIN`` of the mid-surface:
  a crowded half (x < 120) of vesicles of many sizes and thicknesses, a stack of flat
  Golgi-like cisternae (their faces lie across the beam, only their rims stand steep), a
  sparse half with a folded ER-like double sheet, tubes and a few large vesicles, and a
  steep plasma membrane crossing the sparse half;
- distractors that are not membrane: ribosome-like blobs, actin-like filaments, one
  microtubule (a hollow protein tube, a single dense wall), gold beads, a carbon film with
  an edge in one corner, and structured ice, thicker (fewer electrons, more noise) for
  y > ``THICK_ICE_Y``.

The physics: the density is projected (linear splatting along each x line, the tilt axis
is y) over a ±60° tilt series in 3° steps; each projection goes through the weak-phase
CTF (300 kV, Cs 2.7 mm, 7 % amplitude contrast, defocus drawn in 3-5 µm underfocus, a
B-factor envelope) and is recorded as Poisson counts at ``DOSE`` e/Å² spread over the
series (attenuated by the ice, ``ICE_PATHS`` mean free paths, longer at high tilt);
the tomogram is the R-weighted back-projection (ramp along x, a Gaussian roll-off in
both detector axes). So membranes whose normal points
along the beam fade and smear into the missing wedge, dense objects ring with CTF fringes,
and the thick-ice band is noisier.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

SHAPE = (96, 256, 256)  # z, y, x
VOXEL_SIZE = 10.0  # Å, as sample_data/make_sample_data.py
TILTS = np.arange(-60.0, 60.0 + 1e-6, 3.0)  # degrees about y
WAVELENGTH = 0.0197  # Å at 300 kV
CS = 2.7e7  # Å
AMPLITUDE_CONTRAST = 0.07
DEFOCUS = (30000.0, 50000.0)  # Å underfocus, drawn per tomogram
B_FACTOR = 200.0  # Å², the envelope of the CTF
DOSE = 120.0  # e/Å² over the whole tilt series
CONTRAST = 0.06  # image contrast per unit of projected density (density x voxels)
THICK_ICE_Y = 176  # y beyond which the ice is thicker
ICE_PATHS = (0.3, 1.8)  # ice thickness in inelastic mean free paths, thin and thick
ICE_TEXTURE = (0.08, 0.25)  # sd of structured solvent density, thin and thick ice
ROLL_OFF = 0.2  # cycles per voxel, the Gaussian roll-off of the reconstruction filter
LEAFLET_SIGMA = 0.75  # voxels
LEAFLET_OFFSETS = (1.1, 2.0)  # voxels from mid-surface to each leaflet, drawn per object
TRUTH_MARGIN = 0.6  # truth: within leaflet offset + this of the mid-surface
KINDS = ("vesicle", "cisterna", "er", "tube", "plasma")  # truth kinds 1..5


@dataclass
class Phantom:
    """The density, the truth mask and each membrane voxel's kind (1.. in ``KINDS``)."""

    density: np.ndarray
    kind: np.ndarray

    @property
    def truth(self) -> np.ndarray:
        return self.kind > 0


class _Builder:
    """Adds objects to a phantom, each computed inside its own bounding box."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.density = np.zeros(SHAPE, np.float32)
        self.kind = np.zeros(SHAPE, np.uint8)

    def box(self, low, high):
        """Slices of the box ``low..high`` (clipped) and its z, y, x coordinate grids."""
        box = tuple(
            slice(max(0, math.floor(a)), min(n, math.ceil(b) + 1))
            for a, b, n in zip(low, high, SHAPE)
        )
        if any(s.stop <= s.start for s in box):
            return None, None
        grids = np.meshgrid(
            *(np.arange(s.start, s.stop, dtype=np.float32) for s in box), indexing="ij"
        )
        return box, grids

    def bilayer(self, box, signed: np.ndarray, kind: int, contrast: float = 1.0) -> None:
        """A bilayer whose mid-surface is where ``signed`` (voxels) is 0."""
        if box is None:
            return
        offset = float(self.rng.uniform(*LEAFLET_OFFSETS))
        leaflets = np.exp(-((signed - offset) ** 2) / (2 * LEAFLET_SIGMA**2))
        leaflets += np.exp(-((signed + offset) ** 2) / (2 * LEAFLET_SIGMA**2))
        self.density[box] += contrast * leaflets
        here = self.kind[box]
        here[np.abs(signed) <= offset + TRUTH_MARGIN] = kind

    def gaussian(self, box, squared: np.ndarray, sigma: float, density: float) -> None:
        if box is not None:
            self.density[box] += density * np.exp(-squared / (2 * sigma**2))


def _segment_distance(grids, start, end):
    """Squared distance to the segment ``start``-``end`` and the position along it."""
    axis = np.subtract(end, start, dtype=np.float32)
    length = float(np.linalg.norm(axis))
    axis /= length
    rel = [g - s for g, s in zip(grids, start)]
    along = rel[0] * axis[0] + rel[1] * axis[1] + rel[2] * axis[2]
    across2 = np.maximum(sum(r * r for r in rel) - along**2, 0)
    return across2, along, length


def vesicle(b: _Builder, centre, radius: float, contrast: float = 1.0) -> None:
    box, (z, y, x) = b.box([c - radius - 5 for c in centre], [c + radius + 5 for c in centre])
    radial = np.sqrt((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2)
    b.bilayer(box, radial - radius, 1, contrast)
    b.density[box] += 0.2 * (radial < radius - 3)  # a denser lumen


def cisterna(b: _Builder, centre, half_axes) -> None:
    """A flat ellipsoidal sac (Golgi-like): faces across the beam, steep rims."""
    pad = 5
    box, (z, y, x) = b.box(
        [c - h - pad for c, h in zip(centre, half_axes)],
        [c + h + pad for c, h in zip(centre, half_axes)],
    )
    q = np.sqrt(sum(((g - c) / h) ** 2 for g, c, h in zip((z, y, x), centre, half_axes)))
    # Distance to the ellipsoid, first order: (q - 1) / |grad q|.
    grad = np.sqrt(sum(((g - c) / h**2) ** 2 for g, c, h in zip((z, y, x), centre, half_axes)))
    b.bilayer(box, ((q - 1) * q / np.maximum(grad, 1e-6)).astype(np.float32), 2)


def er_sheet(b: _Builder, x0: float, amplitude: float, period: float, phase: float) -> None:
    """A folded double sheet (an ER cisterna) ``x = x0 + A sin(2π y / P + φ)``, 9 voxels
    lumen, standing along z (steep: seen well) but tilted in z by a gentle slope."""
    box, (z, y, x) = b.box(
        (4, 0, x0 - amplitude - 12), (SHAPE[0] - 20, SHAPE[1], x0 + amplitude + 12)
    )
    if box is None:
        return
    slope = float(b.rng.uniform(-0.4, 0.4))
    mid = x0 + amplitude * np.sin(2 * np.pi * y / period + phase) + slope * (z - 40)
    # Horizontal distance scaled by the surface's local steepness.
    dmid_dy = amplitude * 2 * np.pi / period * np.cos(2 * np.pi * y / period + phase)
    scale = 1 / np.sqrt(1 + dmid_dy**2 + slope**2)
    for side in (-4.5, 4.5):
        b.bilayer(box, ((x - mid - side) * scale).astype(np.float32), 3)


def tube(b: _Builder, start, end, radius: float, kind: int = 4) -> None:
    low, high = np.minimum(start, end) - radius - 5, np.maximum(start, end) + radius + 5
    box, grids = b.box(low, high)
    if box is None:
        return
    across2, along, length = _segment_distance(grids, start, end)
    signed = np.where((along >= 0) & (along <= length), np.sqrt(across2) - radius, 99.0)
    b.bilayer(box, signed.astype(np.float32), kind)


def plasma_membrane(b: _Builder, x0: float) -> None:
    """A steep, gently curved cell membrane across the whole of y and z near ``x0``."""
    box, (z, y, x) = b.box((0, 0, x0 - 40), (SHAPE[0] - 16, SHAPE[1], x0 + 40))
    bend, tilt = float(b.rng.uniform(-25, 25)), float(b.rng.uniform(-0.5, 0.5))
    mid = x0 + bend * np.cos(np.pi * (y - 128) / 256) ** 2 + tilt * (z - 40)
    b.bilayer(box, ((x - mid) / math.sqrt(1 + tilt**2)).astype(np.float32), 5, 1.2)


def microtubule(b: _Builder, start, end) -> None:
    """A hollow protein tube (25 nm across): one dense wall, not a bilayer."""
    box, grids = b.box(np.minimum(start, end) - 18, np.maximum(start, end) + 18)
    if box is None:
        return
    across2, along, length = _segment_distance(grids, start, end)
    wall = (np.sqrt(across2) - 10.5) ** 2 + np.maximum(0, np.maximum(-along, along - length)) ** 2
    b.gaussian(box, wall, 1.6, 0.9)


def filament(b: _Builder, start, end, radius: float = 1.3, density: float = 1.0) -> None:
    box, grids = b.box(np.minimum(start, end) - 5, np.maximum(start, end) + 5)
    if box is None:
        return
    across2, along, length = _segment_distance(grids, start, end)
    beyond = np.maximum(0, np.maximum(-along, along - length)) ** 2
    b.gaussian(box, across2 + beyond, radius, density)


def blob(b: _Builder, centre, radius: float, density: float) -> None:
    pad = 2 * radius + 2
    box, (z, y, x) = b.box([c - pad for c in centre], [c + pad for c in centre])
    squared = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2
    b.gaussian(box, squared, radius / 1.3, density)


def carbon(b: _Builder, reach: float) -> None:
    """A carbon film (20 voxels thick, z 8-28) over the corner where x + y < ``reach``."""
    box, (z, y, x) = b.box((0, 0, 0), (40, reach, reach))
    inside = 1 / (1 + np.exp((x + y - reach) / 1.5)) / (1 + np.exp((np.abs(z - 18) - 10) / 1.0))
    b.density[box] += 0.7 * inside


def _free(centre, radius, placed, margin=3.0) -> bool:
    return all(math.dist(centre, p[:3]) > radius + p[3] + margin for p in placed)


def _vesicles(b: _Builder, count: int, x_range, radii, placed: list) -> None:
    """``count`` non-overlapping vesicles with centres in ``x_range``, inside in z."""
    rng, tries = b.rng, 0
    while count and tries < 4000:
        tries += 1
        r = float(rng.uniform(*radii))
        if 2 * r + 8 > SHAPE[0] - 16:
            r = (SHAPE[0] - 24) / 2
        c = (
            float(rng.uniform(r + 4, SHAPE[0] - 12 - r)),
            float(rng.uniform(r + 2, SHAPE[1] - r - 2)),
            float(rng.uniform(*x_range)),
        )
        if _free(c, r, placed):
            placed.append((*c, r))
            vesicle(b, c, r, contrast=float(rng.uniform(0.8, 1.2)))
            count -= 1


def _membranes(b: _Builder) -> list:
    """Every membrane of the phantom; the spheres placed (for the blobs to avoid)."""
    rng = b.rng
    placed: list = []
    # The Golgi-like stack: three flat sacs, one above the other, in the crowded half.
    cy, cx = float(rng.uniform(60, 196)), float(rng.uniform(45, 75))
    for level in range(3):
        centre = (26 + 15 * level, cy + rng.uniform(-4, 4), cx + rng.uniform(-4, 4))
        half = (5.5, float(rng.uniform(30, 42)), float(rng.uniform(22, 32)))
        cisterna(b, centre, half)
        placed.append((centre[0], centre[1], centre[2], 0.0))
    stack = [(45.0, cy, cx, 38.0)]  # keep vesicles out of the stack
    _vesicles(b, 18, (8, 118), (6, 18), stack)
    placed += stack[1:]
    _vesicles(b, 3, (150, 200), (16, 28), placed)  # the sparse half: a few large ones
    er_sheet(
        b,
        float(rng.uniform(130, 145)),
        float(rng.uniform(8, 14)),
        float(rng.uniform(80, 140)),
        float(rng.uniform(0, 2 * np.pi)),
    )
    for _ in range(2):  # tubes in the sparse half
        y0, x0 = rng.uniform(30, 226), rng.uniform(160, 210)
        angle, half = rng.uniform(0, np.pi), rng.uniform(30, 55)
        d = np.array([rng.uniform(-10, 10), half * np.sin(angle), half * np.cos(angle)])
        mid = np.array([rng.uniform(25, 60), y0, x0])
        tube(b, mid - d, mid + d, float(rng.uniform(5, 9)))
    plasma_membrane(b, float(rng.uniform(228, 238)))
    return placed


def _distractors(b: _Builder, placed: list) -> None:
    rng = b.rng
    for _ in range(140):  # ribosome-like blobs, more in the crowded half
        x = rng.uniform(5, 251) if rng.random() < 0.5 else rng.uniform(5, 125)
        c = (rng.uniform(6, 78), rng.uniform(5, 251), x)
        r = float(rng.uniform(3, 5.5))
        if _free(c, r, [p for p in placed if p[3] > 0], 2):
            blob(b, c, r, float(rng.uniform(1.0, 1.8)))
    for _ in range(8):  # actin-like filaments
        s = np.array([rng.uniform(10, 75), rng.uniform(0, 256), rng.uniform(0, 256)])
        d = rng.normal(size=3) * (0.25, 1, 1)
        filament(b, s, s + rng.uniform(60, 130) * d / np.linalg.norm(d))
    y, x = rng.uniform(20, 60), rng.uniform(150, 220)  # one microtubule, along y
    z = rng.uniform(25, 55)
    microtubule(
        b,
        np.array([z, y, x]),
        np.array([z + rng.uniform(-8, 8), y + 180, x + rng.uniform(-30, 30)]),
    )
    for _ in range(4):  # gold beads (10 nm)
        blob(b, (rng.uniform(8, 80), rng.uniform(8, 248), rng.uniform(8, 248)), 5, 8.0)
    carbon(b, float(rng.uniform(50, 70)))


def _ice(rng: np.random.Generator) -> np.ndarray:
    """Structured solvent density, rougher where the ice is thick."""
    from scipy import ndimage

    texture = ndimage.gaussian_filter(rng.normal(size=SHAPE).astype(np.float32), 1.2)
    texture /= texture.std()
    return texture * np.where(_thick(), ICE_TEXTURE[1], ICE_TEXTURE[0])[None, :, None]


def _thick() -> np.ndarray:
    """Along y: 1 where the ice is thick, 0 where thin, a smooth step between."""
    y = np.arange(SHAPE[1], dtype=np.float32)
    return 1 / (1 + np.exp(-(y - THICK_ICE_Y) / 5.0))


def phantom(seed: int) -> Phantom:
    """The phantom of ``seed``: the same arrays every time."""
    b = _Builder(np.random.default_rng(seed))
    placed = _membranes(b)
    _distractors(b, placed)
    density = b.density + _ice(b.rng)
    return Phantom(density.astype(np.float32), b.kind)


def _splat(angle: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each (z, x) voxel: its lower detector bin (+1, so 0 is a dump bin) and the
    weights of that bin and the next, for the beam tilted by ``angle`` degrees about y."""
    nz, nx = SHAPE[0], SHAPE[2]
    z, x = np.meshgrid(np.arange(nz) - (nz - 1) / 2, np.arange(nx) - (nx - 1) / 2, indexing="ij")
    t = math.radians(angle)
    s = (x * math.cos(t) + z * math.sin(t) + (nx - 1) / 2).ravel()
    low = np.floor(s).astype(np.int64)
    frac = (s - low).astype(np.float32)
    inside_low, inside_high = (low >= 0) & (low < nx), (low + 1 >= 0) & (low + 1 < nx)
    index = torch.from_numpy(np.clip(low + 1, 0, nx + 1))
    w_low = torch.from_numpy(np.where(inside_low, 1 - frac, 0).astype(np.float32))
    w_high = torch.from_numpy(np.where(inside_high, frac, 0).astype(np.float32))
    return index, w_low, w_high


def _ctf(defocus: float) -> torch.Tensor:
    """The weak-phase CTF with a B-factor envelope on the ``(y, x)`` detector's rfft grid;
    negative at low frequency, so dense objects image dark."""
    ky = np.fft.fftfreq(SHAPE[1], VOXEL_SIZE)[:, None]
    kx = np.fft.rfftfreq(SHAPE[2], VOXEL_SIZE)[None, :]
    k2 = ky**2 + kx**2
    chi = np.pi * WAVELENGTH * defocus * k2 - 0.5 * np.pi * CS * WAVELENGTH**3 * k2**2
    ctf = -(math.sqrt(1 - AMPLITUDE_CONTRAST**2) * np.sin(chi) + AMPLITUDE_CONTRAST * np.cos(chi))
    return torch.from_numpy((ctf * np.exp(-B_FACTOR * k2 / 4)).astype(np.float32))


def _filter() -> torch.Tensor:
    """R-weighting along x with a Gaussian roll-off in both detector axes (rfft grid)."""
    ky = np.fft.fftfreq(SHAPE[1])[:, None]
    kx = np.fft.rfftfreq(SHAPE[2])[None, :]
    ramp = np.maximum(np.abs(kx), 0.5 / SHAPE[2]) * np.exp(-(kx**2 + ky**2) / (2 * ROLL_OFF**2))
    return torch.from_numpy(ramp.astype(np.float32))


def simulate(density: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Tilt series (CTF, Poisson counts) and its weighted back-projection; ``(z, y, x)``
    float32, dense dark, zero mean and unit sd."""
    nz, ny, nx = SHAPE
    torch.manual_seed(int(rng.integers(2**31)))
    lines = torch.from_numpy(density).permute(1, 0, 2).reshape(ny, nz * nx)  # (y, z·x)
    ctf, weighting = _ctf(float(rng.uniform(*DEFOCUS))), _filter()
    electrons = DOSE / len(TILTS) * VOXEL_SIZE**2  # per pixel per tilt, before the ice
    thin, thick = ICE_PATHS
    thickness = torch.from_numpy(thin + (thick - thin) * _thick())[:, None]
    volume = torch.zeros_like(lines)
    for angle in TILTS:
        index, w_low, w_high = _splat(float(angle))
        projection = torch.zeros(ny, nx + 3)
        projection.index_add_(1, index, lines * w_low)
        projection.index_add_(1, index + 1, lines * w_high)
        projection = projection[:, 1 : nx + 1]
        image = 1 + CONTRAST * torch.fft.irfft2(torch.fft.rfft2(projection) * ctf, s=(ny, nx))
        expected = electrons * torch.exp(-thickness / math.cos(math.radians(angle)))
        counts = torch.poisson((expected * image.clamp(min=0)).double()).float()
        contrast = counts / expected - 1
        filtered = torch.fft.irfft2(torch.fft.rfft2(contrast) * weighting, s=(ny, nx))
        padded = torch.nn.functional.pad(filtered, (1, 2))
        volume += padded[:, index] * w_low + padded[:, index + 1] * w_high
    tomogram = volume.reshape(ny, nz, nx).permute(1, 0, 2).numpy()
    return ((tomogram - tomogram.mean()) / tomogram.std()).astype(np.float32)


def synthesize(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(tomogram float32, truth uint8)`` of ``seed``, both ``(z, y, x)``."""
    made = phantom(seed)
    tomogram = simulate(made.density, np.random.default_rng([seed, 7]))
    return tomogram, made.truth.astype(np.uint8)


def write(seed: int, out: Path, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``tomogram.mrc`` and ``truth.mrc`` of ``seed`` into ``out``; kept if there."""
    from patch_corrections.io.volumes import Geometry, write_volume

    out.mkdir(parents=True, exist_ok=True)
    paths = out / "tomogram.mrc", out / "truth.mrc"
    if overwrite or not all(p.exists() for p in paths):
        tomogram, truth = synthesize(seed)
        geometry = Geometry((VOXEL_SIZE,) * 3)
        write_volume(paths[1], truth, geometry, overwrite=True)
        write_volume(paths[0], tomogram, geometry, overwrite=True)
    return paths


def report(seed: int) -> str:
    """Membrane share of the tomogram, per kind and in the thick-ice band."""
    made = phantom(seed)
    lines = [f"seed {seed}: membrane {made.truth.mean():.1%} of the tomogram"]
    for number, name in enumerate(KINDS, 1):
        lines.append(f"  {name}: {(made.kind == number).mean():.2%}")
    lines.append(f"  thick ice (y > {THICK_ICE_Y}): {made.truth[:, THICK_ICE_Y:].mean():.1%}")
    lines.append(f"  crowded half (x < 128): {made.truth[..., :128].mean():.1%}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--report", action="store_true", help="membrane share per kind")
    args = parser.parse_args()
    tomogram, truth = write(args.seed, args.out, args.overwrite)
    print(f"wrote {tomogram} and {truth}")
    if args.report:
        print(report(args.seed))


if __name__ == "__main__":
    main()
