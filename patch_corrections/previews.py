"""Every figure the package draws, as PNG bytes: a patch's three orthogonal mid-slices
with its labels and corrections over them (so a whole round is checked at a glance), a
suggestion's slices with the network's membrane and disagreement, and a training run's
curves.

Arrays in, PNG bytes out; the workflows stage and write them beside their other outputs.
Matplotlib (the ``train`` extra) is imported only when a figure is drawn, with the Agg
canvas of a bare ``Figure``: no display, no pyplot state.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from .constants import BACKGROUND, IGNORE, MEMBRANE
from .errors import InputError

# What a voxel of a preview's overlay shows.
NOTHING = 0
LABEL_MEMBRANE = 1
LABEL_IGNORE = 2
ADDED = 3
REMOVED = 4
IGNORED_PAINTED = 5

PALETTE: dict[int, tuple[tuple[float, float, float], float, str]] = {
    LABEL_MEMBRANE: ((1.0, 0.82, 0.0), 0.6, "membrane"),
    LABEL_IGNORE: ((1.0, 1.0, 1.0), 0.45, "ignore (border band, padding)"),
    ADDED: ((0.0, 0.85, 0.15), 0.75, "Add: painted membrane"),
    REMOVED: ((1.0, 0.08, 0.08), 0.75, "Remove: painted background"),
    IGNORED_PAINTED: ((0.25, 0.4, 1.0), 0.7, "Ignore: painted"),
}
"""Overlay code -> (RGB colour, opacity over the image, legend text)."""

PANEL_INCHES = 2.3
DPI = 100
"""Each slice is drawn about 230 pixels wide: a 160³ patch at 1.4 pixels per voxel."""
WINDOW_PERCENTILES = (1.0, 99.0)
"""Grey levels of the image span these percentiles of its slices' values."""

INSTALL_HINT = 'pip install matplotlib (or, in the checkout, pip install -e ".[train]")'


def require_matplotlib() -> None:
    """``InputError`` saying what to install when matplotlib cannot be imported: a run that
    was asked for previews checks this before any work."""
    try:
        import matplotlib.backends.backend_agg
        import matplotlib.figure  # noqa: F401
    except ImportError:
        raise InputError(
            f"--preview draws PNGs with matplotlib, which is not installed: {INSTALL_HINT}"
        ) from None


def mid_indices(shape: Sequence[int]) -> tuple[int, int, int]:
    """The centre voxel ``(z, y, x)`` of a volume of ``shape``, where its slices are cut
    (local index 80 of a 160³ patch, the centre it was cut around)."""
    z, y, x = (int(n) // 2 for n in shape)
    return z, y, x


def mid_slices(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The xy, xz and yz slices through the centre of ``volume`` ``(z, y, x)``: arrays
    ``(y, x)``, ``(z, x)`` and ``(z, y)``."""
    z, y, x = mid_indices(volume.shape)
    return volume[z], volume[:, y], volume[:, :, x]


def label_overlay(labels: np.ndarray) -> np.ndarray:
    """Overlay codes of a label array (any shape, values 0/1/2): membrane and ignore."""
    codes = np.zeros(labels.shape, np.uint8)
    codes[labels == MEMBRANE] = LABEL_MEMBRANE
    codes[labels == IGNORE] = LABEL_IGNORE
    return codes


def merge_overlay(
    merged: np.ndarray, add: np.ndarray, remove: np.ndarray, ignore: np.ndarray
) -> np.ndarray:
    """Overlay codes of merged labels, with the painted voxels that kept their paint set
    apart: Add where the result is membrane, Remove where it is background, Ignore where
    it is ignore. All arrays share one shape; the masks are boolean."""
    codes = label_overlay(merged)
    codes[add & (merged == MEMBRANE)] = ADDED
    codes[remove & (merged == BACKGROUND)] = REMOVED
    codes[ignore & (merged == IGNORE)] = IGNORED_PAINTED
    return codes


def grey_window(slices: Sequence[np.ndarray]) -> tuple[float, float]:
    """Grey levels ``(low, high)`` for the image ``slices``: percentiles of their finite
    values, so a few extreme voxels do not wash the rest out."""
    values = np.concatenate([np.asarray(s, np.float64).ravel() for s in slices])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(values, WINDOW_PERCENTILES))
    if high <= low:
        high = low + 1.0
    return low, high


def compose(image: np.ndarray, codes: np.ndarray | None, window: tuple[float, float]):
    """An RGB picture ``(h, w, 3)`` in [0, 1] of an image slice ``(h, w)`` in grey levels
    (``window``; NaN black), with the overlay ``codes`` ``(h, w)`` blended over it."""
    low, high = window
    grey = np.clip((np.asarray(image, np.float64) - low) / (high - low), 0.0, 1.0)
    grey[~np.isfinite(grey)] = 0.0
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    if codes is not None:
        for code, (colour, alpha, _) in PALETTE.items():
            where = codes == code
            rgb[where] = (1.0 - alpha) * rgb[where] + alpha * np.asarray(colour)
    return rgb


def extraction_preview(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    title: str = "",
    offset: Sequence[int] | None = None,
) -> bytes:
    """PNG of a patch as cut: its image, and the network's labels over it.

    Parameters
    ----------
    image, labels
        Image and label patch, ``(z, y, x)``, one shape.
    title
        The figure's title (the patch name, its centre).
    offset
        The patch's first voxel in its tomogram ``(z, y, x)``, to give the slices'
        tomogram indices too; ``None``: patch indices only.
    """
    rows = [("image", None), ("network labels", label_overlay(labels))]
    return _render(image, rows, (LABEL_MEMBRANE, LABEL_IGNORE), title, offset)


def merge_preview(
    image: np.ndarray,
    labels: np.ndarray,
    merged: np.ndarray,
    add: np.ndarray,
    remove: np.ndarray,
    ignore: np.ndarray,
    *,
    title: str = "",
    offset: Sequence[int] | None = None,
) -> bytes:
    """PNG of a merged patch: its image, the network's labels and the merged labels, the
    painted Add, Remove and Ignore voxels in their own colours.

    Parameters
    ----------
    image, labels, merged
        Image, label patch as cut and merged labels, ``(z, y, x)``, one shape.
    add, remove, ignore
        The painted masks, boolean, same shape.
    title, offset
        As for :func:`extraction_preview`.
    """
    cut = [mid_slices(m) for m in (merged, add, remove, ignore)]
    codes = [merge_overlay(*parts) for parts in zip(*cut)]
    rows = [
        ("image", None),
        ("network labels", label_overlay(labels)),
        ("merged labels", codes),
    ]
    legend = (LABEL_MEMBRANE, LABEL_IGNORE, ADDED, REMOVED, IGNORED_PAINTED)
    return _render(image, rows, legend, title, offset)


def _render(image, rows, legend: Sequence[int], title: str, offset) -> bytes:
    """One figure: a row per entry of ``rows`` (name, overlay codes: a volume, the three
    slices' codes, or ``None``), a column per slice; the legend of ``legend``'s codes."""
    from matplotlib.patches import Patch

    pictures = mid_slices(image)
    window = grey_window(pictures)
    centre = mid_indices(image.shape)
    top, bottom = 0.55, 0.3 + 0.2 * -(-len(legend) // 3)  # inches: titles; axis names, legend
    height = len(rows) * PANEL_INCHES + top + bottom
    figure = _figure(figsize=(3 * PANEL_INCHES + 0.5, height), dpi=DPI)
    axes = figure.subplots(len(rows), 3, squeeze=False)
    for row, (name, codes) in enumerate(rows):
        slices = mid_slices(codes) if isinstance(codes, np.ndarray) else codes
        for column in range(3):
            axis = axes[row][column]
            overlay = None if slices is None else slices[column]
            # origin "lower": y and z grow upwards, as IMOD shows a tomogram.
            axis.imshow(
                compose(pictures[column], overlay, window), origin="lower", interpolation="nearest"
            )
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(_slice_title(column, centre, offset), fontsize=9)
            if row == len(rows) - 1:
                axis.set_xlabel(("x", "x", "y")[column], fontsize=8, labelpad=2)
            axis.set_ylabel(("y", "z", "z")[column], fontsize=8, labelpad=2)
            if column == 0:
                axis.annotate(name, (0, 0.5), xytext=(-20, 0), **_ROW_NAME)
    handles = [
        Patch(facecolor=_swatch(code), edgecolor="0.3", label=PALETTE[code][2]) for code in legend
    ]
    figure.legend(
        handles=handles, loc="lower center", ncol=min(len(handles), 3), fontsize=8, frameon=False
    )
    if title:
        figure.suptitle(title, fontsize=10)
    margins = {"left": 0.08, "right": 0.99, "wspace": 0.12, "hspace": 0.06}
    figure.subplots_adjust(top=1 - top / height, bottom=bottom / height, **margins)
    return _png(figure, dpi=DPI)


_ROW_NAME = {
    "xycoords": "axes fraction",
    "textcoords": "offset points",
    "rotation": 90,
    "ha": "right",
    "va": "center",
    "fontsize": 10,
}
"""How a row's name is written left of its first slice."""


def _figure(**options):
    """A bare matplotlib ``Figure`` on the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(**options)
    FigureCanvasAgg(figure)
    return figure


def _png(figure, **options) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", **options)
    figure.clear()
    return buffer.getvalue()


def _slice_title(column: int, centre: tuple[int, int, int], offset) -> str:
    """``xy, z = 80 (tomogram 412)``: the plane and the index it is cut at."""
    # Column 0 (xy) is cut across z, array axis 0; xz across y, axis 1; yz across x, axis 2.
    plane, letter, index = ("xy", "xz", "yz")[column], "zyx"[column], centre[column]
    text = f"{plane}, {letter} = {index}"
    if offset is not None:
        text += f" (tomogram {int(offset[column]) + index})"
    return text


def _swatch(code: int) -> tuple[float, float, float]:
    """A legend swatch: the overlay's colour as it looks over a mid-grey voxel."""
    colour, alpha, _ = PALETTE[code]
    return tuple(float((1 - alpha) * 0.5 + alpha * c) for c in colour)  # type: ignore[return-value]


def training_curves(rows: list[dict]) -> bytes:
    """PNG of a training run's metrics rows (``step``, ``train_loss``, ``lr`` and, with
    validation, ``val_loss`` and ``val_dice``, with probes ``moved_new`` and
    ``moved_lost``): the losses, validation Dice and learning rate against the iteration,
    and where there are probes, the share of their voxels whose call moved."""
    probes = "moved_new" in rows[0]
    figure = _figure(figsize=(15 if probes else 10, 4))
    axes = figure.subplots(1, 3 if probes else 2)
    left, right = axes[:2]
    steps = [r["step"] for r in rows]
    left.plot(steps, [r["train_loss"] for r in rows], label="train loss")
    if "val_loss" in rows[0]:
        left.plot(steps, [r["val_loss"] for r in rows], label="val loss")
        right.plot(steps, [r["val_dice"] for r in rows], label="val Dice (ignore excluded)")
    highest = max(r["lr"] for r in rows)
    right.plot(steps, [r["lr"] / highest for r in rows], "--", label="learning rate (relative)")
    if probes:
        for key, text in (("moved_new", "new membrane"), ("moved_lost", "lost membrane")):
            axes[2].plot(steps, [100 * r[key] for r in rows], label=text)
        axes[2].set_ylabel("% of probe voxels nobody corrected")
        axes[2].set_title("what moved since the segmentation", fontsize=10)
    for axis in axes:
        axis.set_xlabel("iteration")
        axis.legend()
    figure.tight_layout()
    return _png(figure, dpi=100)


SuggestionPlanes = tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]
"""The tomogram's, the probabilities' and the variance's x-y, x-z and y-z planes through a
suggestion's centre: ``(y, x)``, ``(z, x)``, ``(z, y)`` each."""


def suggestion_preview(
    planes: SuggestionPlanes,
    low: Sequence[int],
    centre: Sequence[int],
    size: int,
    border: int,
    threshold: float,
    title: str,
) -> bytes:
    """PNG of three orthogonal slices through a suggestion's centre: the tomogram, the
    membrane the network sees (cyan), the disagreement of its flipped passes (their
    standard deviation, orange), and the patch drawn as a box with its scored part (inside
    the ignore band ``border``) dashed.

    Parameters
    ----------
    planes
        See :data:`SuggestionPlanes`; ``low`` ``(z, y, x)`` is the tomogram index of their
        first voxel.
    centre
        The suggestion's centre ``(z, y, x)``; the patch is ``size`` voxels around it.
    threshold
        Probability above which a voxel is membrane.
    """
    from matplotlib.patches import Rectangle

    figure = _figure(figsize=(13, 4.6), layout="constrained")
    half = size // 2
    views = (("x", "y", 2, 1), ("x", "z", 2, 0), ("y", "z", 1, 0))
    for ax, (across, down, a, b), *maps in zip(figure.subplots(1, 3), views, *planes):
        t, p, v = maps
        high = (low[a] + t.shape[1], low[b] + t.shape[0])
        extent = (low[a] - 0.5, high[0] - 0.5, high[1] - 0.5, low[b] - 0.5)
        ax.imshow(t.astype(np.float32), cmap="gray", extent=extent, **_grey_limits(t))
        for overlay in (_membrane_overlay(p, threshold), _disagreement_overlay(v)):
            ax.imshow(overlay, extent=extent, interpolation="nearest")
        start = (centre[a] - half - 0.5, centre[b] - half - 0.5)
        ax.add_patch(Rectangle(start, size, size, fill=False, color="yellow", lw=1.5))
        inner = (start[0] + border, start[1] + border)
        box = {"fill": False, "color": "yellow", "lw": 0.8, "ls": "--"}
        ax.add_patch(Rectangle(inner, size - 2 * border, size - 2 * border, **box))
        ax.plot([centre[a]], [centre[b]], "+", color="yellow", ms=10)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        plane = ({"x", "y", "z"} - {across, down}).pop()
        level = centre["zyx".index(plane)]
        ax.set_title(f"{across}-{down} plane at {plane} = {level}", fontsize=10)
        ax.set_xlabel(across)
        ax.set_ylabel(down)
    figure.suptitle(
        f"{title}\ncyan: segmentation  orange: TTA disagreement (standard deviation)  "
        "yellow: patch, dashed: its part outside the ignore band (scored)",
        fontsize=9,
    )
    return _png(figure, dpi=80, bbox_inches="tight")


def _grey_limits(values: np.ndarray) -> dict[str, float]:
    """``vmin`` and ``vmax`` of a tomogram slice: its 1st and 99th percentiles."""
    finite = values[np.isfinite(values)].astype(np.float32)
    low, high = np.percentile(finite, (1, 99)) if finite.size else (0.0, 1.0)
    return {"vmin": float(low), "vmax": float(high if high > low else low + 1)}


def _membrane_overlay(p: np.ndarray, threshold: float) -> np.ndarray:
    """RGBA ``(h, w, 4)``: membrane (``p`` above ``threshold``) in translucent cyan."""
    membrane = np.nan_to_num(p.astype(np.float32)) > threshold
    rgba = np.zeros((*membrane.shape, 4), np.float32)
    rgba[membrane] = (0.0, 0.9, 1.0, 0.35)
    return rgba


def _disagreement_overlay(v: np.ndarray) -> np.ndarray:
    """RGBA ``(h, w, 4)``: orange, as opaque as the flipped passes' standard deviation
    (from their variance ``v``) is large, fully (0.8) from 0.25."""
    deviation = np.sqrt(np.clip(np.nan_to_num(v.astype(np.float32)), 0, None))
    rgba = np.zeros((*deviation.shape, 4), np.float32)
    rgba[..., 0], rgba[..., 1] = 1.0, 0.35
    rgba[..., 3] = np.clip(deviation / 0.25, 0, 1) * 0.8
    return rgba
