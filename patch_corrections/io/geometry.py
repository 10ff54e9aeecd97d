"""Where voxels sit in space, and the one place axis orders are turned.

In memory every per-axis tuple (shape, index, voxel size, origin, offset) is ``(z, y, x)``,
as arrays are; users, manifests and file headers speak ``x, y, z``. :func:`as_xyz` and
:func:`from_xyz` turn one into the other; world positions (Å) and voxel indices are
related by :meth:`Geometry.index_of` and :meth:`Geometry.position_of`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import warn

Index3 = tuple[int, int, int]
"""A voxel index or a shape, ``(z, y, x)``."""
Triple = tuple[float, float, float]
"""A per-axis float triple (voxel size, origin, a position in Å), ``(z, y, x)``."""


def as_xyz(zyx) -> list:
    """A per-axis ``(z, y, x)`` triple as the ``[x, y, z]`` list users and manifests speak."""
    z, y, x = zyx
    return [x, y, z]


def axes_listed(axes: list[str]) -> str:
    """Axis names for a message: ``x``, ``x and y``, ``x, y and z``."""
    return " and ".join(filter(None, (", ".join(axes[:-1]), axes[-1])))


def xyz_text(zyx, spec: str = "g") -> str:
    """A per-axis ``(z, y, x)`` triple written ``x,y,z`` for messages, each value in
    ``spec`` format."""
    return ",".join(f"{v:{spec}}" for v in as_xyz(zyx))


def from_xyz(xyz: Sequence, kind: type = int) -> tuple:
    """An ``x, y, z`` triple (a manifest's, a user's) as a ``(z, y, x)`` tuple of ``kind``;
    ``ValueError`` or ``TypeError`` when it holds no three such values."""
    values = tuple(kind(v) for v in xyz)
    if len(values) != 3:
        raise ValueError(f"expected three values x, y, z, got {len(values)}")
    return values[::-1]


@dataclass(frozen=True)
class Geometry:
    """Where a volume's voxels sit in space.

    Attributes
    ----------
    voxel_size
        Voxel edge lengths in Å, ``(z, y, x)``.
    origin
        Physical position in Å of voxel ``(0, 0, 0)``, ``(z, y, x)``.
    """

    voxel_size: Triple
    origin: Triple = (0.0, 0.0, 0.0)

    def shifted(self, offset: Index3) -> Geometry:
        """Geometry of a sub-volume whose first voxel is at index ``offset`` ``(z, y, x)``."""
        return Geometry(self.voxel_size, self.position_of(offset))

    def agrees_with(self, other: Geometry, tolerance: float = 1e-3) -> bool:
        """Whether spacing and origin match to ``tolerance`` Å."""
        return bool(
            np.allclose(self.voxel_size, other.voxel_size, rtol=1e-4, atol=tolerance)
            and np.allclose(self.origin, other.origin, rtol=1e-5, atol=tolerance)
        )

    def index_of(self, position: Sequence[float]) -> Triple:
        """The (fractional) voxel index ``(z, y, x)`` of a world ``position`` in Å
        ``(z, y, x)``: 0 at the first voxel's centre."""
        return tuple(  # type: ignore[return-value]
            (float(p) - o) / v for p, o, v in zip(position, self.origin, self.voxel_size)
        )

    def position_of(self, index: Sequence[float]) -> Triple:
        """The world position in Å ``(z, y, x)`` of voxel ``index`` ``(z, y, x)``."""
        return tuple(  # type: ignore[return-value]
            o + float(i) * v for i, o, v in zip(index, self.origin, self.voxel_size)
        )


@dataclass(frozen=True)
class PatchBox:
    """A patch's place in its tomogram.

    Attributes
    ----------
    offset
        Tomogram index ``(z, y, x)`` of the patch's first voxel; negative where the patch
        starts before the tomogram.
    size
        Patch shape ``(z, y, x)``.
    """

    offset: Index3
    size: Index3

    @classmethod
    def around(cls, centre: Index3, size: Index3) -> PatchBox:
        """The box of ``size`` whose local index ``size // 2`` is tomogram index ``centre``."""
        return cls(tuple(c - s // 2 for c, s in zip(centre, size)), size)  # type: ignore[arg-type]

    def inside(self, shape: Index3) -> tuple[Index3, Index3]:
        """Tomogram ``(start, stop)`` of the part of the box inside a volume of ``shape``."""
        start = tuple(min(max(o, 0), n) for o, n in zip(self.offset, shape))
        stop = tuple(min(max(o + s, 0), n) for o, s, n in zip(self.offset, self.size, shape))
        return start, stop  # type: ignore[return-value]

    def padding(self, shape: Index3) -> tuple[tuple[int, int], ...]:
        """Voxels padded ``(before, after)`` on each axis ``(z, y, x)``."""
        start, stop = self.inside(shape)
        return tuple(
            (a - o, o + s - b) if b > a else (s, 0)
            for o, s, a, b in zip(self.offset, self.size, start, stop)
        )


UNIT = Geometry((1.0, 1.0, 1.0))
"""What a volume whose header has no voxel size is written and placed with: 1 Å voxels
from the origin."""


def geometry_or_unit(geometry: Geometry | None, path: Path, what: str) -> Geometry:
    """``geometry``, or :data:`UNIT` with a warning that ``path``'s header has no voxel size
    and ``what`` (e.g. "patches are written") with 1 Å."""
    if geometry is not None:
        return geometry
    warn(f"{path}: header has no voxel size; {what} with 1 Å")
    return UNIT
