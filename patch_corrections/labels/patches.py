"""Patch geometry and the array logic of extraction. No file paths here.

A patch is a box of ``size`` voxels ``(z, y, x)`` whose first voxel sits at ``offset`` in the
tomogram; the requested centre is at local index ``size // 2`` (80 for 160). Boxes may cross
the tomogram border: the part outside is padded (image: the mean of the part inside, which
carries no signal; labels: ignore).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..constants import IGNORE
from ..errors import InputError
from ..io.centres import Centre
from ..io.geometry import Index3, PatchBox, as_xyz, axes_listed, xyz_text
from ..io.memory import require_memory


def centre_index(
    xyz: tuple[float, float, float], voxel_size: tuple[float, float, float] | None = None
) -> Index3:
    """Round a user's ``(x, y, z)`` centre to a tomogram index ``(z, y, x)``.

    Parameters
    ----------
    xyz
        Centre in voxels, or in Å from the first voxel when ``voxel_size`` is given.
    voxel_size
        Voxel size in Å, ``(z, y, x)``; ``None`` when ``xyz`` is already in voxels.
    """
    x, y, z = xyz
    zyx = np.array([z, y, x], float)
    if voxel_size is not None:
        zyx = zyx / np.asarray(voxel_size, float)
    # Halves round up, the same way for every axis and sign.
    return tuple(int(v) for v in np.floor(zyx + 0.5))  # type: ignore[return-value]


def place_block(block: np.ndarray, box: PatchBox, shape: Index3, fill) -> np.ndarray:
    """Put the in-bounds ``block`` into a patch of ``box.size`` filled with ``fill``.

    Parameters
    ----------
    block
        The tomogram region ``box.inside(shape)``, ``(z, y, x)``.
    box, shape
        The patch box and the tomogram shape ``(z, y, x)``.
    fill
        Value of every padded voxel.
    """
    start, stop = box.inside(shape)
    expected = tuple(b - a for a, b in zip(start, stop))
    if block.shape != expected:
        raise ValueError(f"block shape {block.shape} does not match the box's {expected}")
    patch = np.full(box.size, fill, dtype=block.dtype)
    local = tuple(slice(a - o, b - o) for a, b, o in zip(start, stop, box.offset))
    patch[local] = block
    return patch


def image_pad_value(block: np.ndarray, dtype: np.dtype):
    """The value padded image voxels get: the mean of the real voxels, in ``dtype``."""
    if block.size == 0:
        return np.zeros((), dtype)[()]
    mean = float(np.mean(block, dtype=np.float64))
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        mean = min(max(round(mean), info.min), info.max)
    return np.asarray(mean).astype(dtype)[()]


@dataclass(frozen=True)
class ValueRange:
    """Finite extremes of segmentation values and whether all of them are whole numbers."""

    low: float
    high: float
    integral: bool

    @classmethod
    def of(cls, block: np.ndarray) -> ValueRange:
        """The range of ``block`` (any shape); NaN and infinities are left out."""
        if block.dtype.kind == "b":
            block = block.view(np.uint8)
        if block.dtype.kind == "f":
            block = block[np.isfinite(block)]
        if block.size == 0:
            return cls(0.0, 0.0, True)
        integral = block.dtype.kind in "iu" or bool(np.all(np.mod(block, 1) == 0))
        return cls(float(block.min()), float(block.max()), integral)

    def __or__(self, other: ValueRange) -> ValueRange:
        return ValueRange(
            min(self.low, other.low), max(self.high, other.high), self.integral and other.integral
        )


@dataclass(frozen=True)
class Binarisation:
    """How segmentation values become membrane: voxels strictly above ``threshold``.

    ``rule`` says why, for the user; it is ``"binary"`` when the values were 0/1 already.
    """

    threshold: float
    rule: str

    def apply(self, block: np.ndarray) -> np.ndarray:
        """``uint8`` 0/1 array of ``block``'s shape; NaN is never membrane."""
        return (block > self.threshold).astype(np.uint8)


def choose_binarisation(values: ValueRange, threshold: float | None = None) -> Binarisation:
    """Pick one rule for a whole segmentation from the range of its values.

    0/1 pass as they are; otherwise whole numbers are label values (non-zero is membrane),
    values in [0, 1] are probabilities (above 0.5), anything else scores or logits (above 0).
    An explicit ``threshold`` overrides all of this.
    """
    if threshold is not None:
        if not np.isfinite(threshold):
            raise InputError(f"--threshold must be a finite number, got {threshold}")
        return Binarisation(threshold, f"values > {threshold:g} (--threshold)")
    if values.integral and values.low >= 0 and values.high <= 1:
        return Binarisation(0.5, "binary")
    if values.integral:
        return Binarisation(0.0, "label values: every value above 0 is membrane")
    if values.low >= 0 and values.high <= 1:
        return Binarisation(0.5, "probabilities: values > 0.5 are membrane")
    return Binarisation(0.0, "scores (logits): values > 0 are membrane")


def add_border_band(labels: np.ndarray, width: int) -> np.ndarray:
    """Set a band of ``width`` voxels along every face of ``labels`` to ignore, in place.

    Parameters
    ----------
    labels
        Label patch ``(z, y, x)``.
    width
        Band width in voxels; 0 leaves the patch unchanged.
    """
    if width <= 0:
        return labels
    for axis in range(labels.ndim):
        index: list[slice] = [slice(None)] * labels.ndim
        index[axis] = slice(0, width)
        labels[tuple(index)] = IGNORE
        index[axis] = slice(max(labels.shape[axis] - width, 0), None)
        labels[tuple(index)] = IGNORE
    return labels


def interior(shape: tuple[int, ...], edges) -> np.ndarray:
    """Boolean mask of ``shape`` ``(z, y, x)``, true farther than ``edges`` from its faces.

    ``edges`` holds ``(before, after)`` voxels per axis: ``[(16, 16)] * 3`` leaves out a
    16-voxel border band, a patch's padding leaves out what lay outside its tomogram.
    """
    inner = np.zeros(shape, dtype=bool)
    inner[tuple(slice(b, n - a) for (b, a), n in zip(edges, shape))] = True
    return inner


def label_patch(
    segmentation_block: np.ndarray,
    box: PatchBox,
    shape: Index3,
    border: int,
    binarisation: Binarisation,
) -> np.ndarray:
    """Build a label patch from the in-bounds segmentation block.

    Padding and the border band are ignore; inside, membrane is 1 and background 0.

    Returns
    -------
    labels
        ``uint8`` array of ``box.size`` with values in ``{0, 1, 2}``.
    """
    inner = binarisation.apply(segmentation_block)
    if segmentation_block.dtype.kind == "f":  # NaN and infinities say nothing: ignore
        inner[~np.isfinite(segmentation_block)] = IGNORE
    labels = place_block(inner, box, shape, IGNORE)
    return add_border_band(labels, border)


def image_patch(
    image_block: np.ndarray, box: PatchBox, shape: Index3
) -> tuple[np.ndarray, float, int]:
    """Build an image patch from the in-bounds tomogram block, padded with its mean; NaN
    and infinities of the block are replaced by that mean too (in place).

    Returns
    -------
    image
        Array of ``box.size`` in the tomogram's dtype.
    pad_value
        The value padded voxels received.
    replaced
        How many NaN or infinite voxels were replaced.
    """
    replaced = fill_nonfinite(image_block)
    fill = image_pad_value(image_block, image_block.dtype)
    return place_block(image_block, box, shape, fill), float(fill), replaced


def fill_nonfinite(image: np.ndarray) -> int:
    """Replace the NaN and infinite voxels of ``image`` in place by the mean of its finite
    ones (0 when there are none); how many were replaced."""
    if image.dtype.kind != "f":
        return 0
    bad = ~np.isfinite(image)
    count = int(np.count_nonzero(bad))
    if count:
        finite = image[~bad]
        image[bad] = float(np.mean(finite, dtype=np.float64)) if finite.size else 0.0
    return count


PATCH_BYTES_PER_VOXEL = 12
"""Host memory a patch being cut takes per voxel, at least: the tomogram's block, the
float32 image patch, the segmentation's block and the label patch."""


def check_patch_size(size: int, border: int) -> None:
    """Reject a patch size or border width that leaves nothing to train on, or a patch
    too large for the memory free now."""
    if size < 1:
        raise InputError(f"--patch-size must be positive, got {size}")
    if border < 0:
        raise InputError(f"--border must be 0 or more, got {border}")
    if 2 * border >= size:
        raise InputError(
            f"--border {border} leaves no voxel of a {size}-voxel patch outside the ignore "
            f"band; use a border below {(size + 1) // 2}"
        )
    needed = PATCH_BYTES_PER_VOXEL * size**3
    require_memory(needed, f"--patch-size {size}: a {size}³ patch", "give a smaller one")


def check_fits(tomogram: Path, shape: Index3, patch_size: int) -> None:
    """``InputError`` when ``tomogram`` (of ``shape``) is shorter than a patch along some
    axis, so a patch could not lie inside it."""
    short = [axis for axis, n in zip("zyx", shape) if n < patch_size][::-1]
    if short:
        raise InputError(
            f"{tomogram}: x,y,z={xyz_text(shape)} is smaller than --patch-size {patch_size} "
            f"along {axes_listed(short)}; give a smaller --patch-size or --allow-border"
        )


def locate_centres(
    centres: list[Centre], shape: Index3, voxel_size: tuple[float, float, float] | None
) -> list[tuple[Centre, Index3]]:
    """Each centre with its tomogram index ``(z, y, x)`` (see :func:`centre_index`).

    Raises
    ------
    InputError
        For the first centre outside a tomogram of ``shape``, naming where it came from.
    """
    unit = "voxels" if voxel_size is None else "Å"
    located = []
    for centre in centres:
        index = centre_index(centre.xyz, voxel_size)
        if not all(0 <= i < n for i, n in zip(index, shape)):
            x, y, z = centre.xyz
            limits = "x < {}, y < {}, z < {}".format(*as_xyz(shape))
            raise InputError(
                f"{centre.source}: centre x={x:g}, y={y:g}, z={z:g} ({unit}) lies outside "
                f"the tomogram (voxel indices must satisfy 0 <= {limits})"
            )
        located.append((centre, index))
    return located
