"""The napari layers the widget makes and reads: the patch being painted, and points.

Its image, its labels (hidden), the merged preview, and one labels layer per correction
kind to paint into, named as the mask files are (``Add``, ``Remove``, ``Ignore``), each
in its own colour. Every layer's ``scale`` and ``translate`` are the patch's voxel size
and origin ``(z, y, x)`` in Å, so it overlays on the full tomogram. Beside them, the
points layers that patches are cut at.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from napari.utils.colormaps import DirectLabelColormap

from ..constants import IGNORE, MEMBRANE
from ..errors import InputError
from ..io.centres import Centre
from ..io.correction_folders import KIND_NAMES
from ..io.geometry import Geometry, from_xyz
from ..io.volumes import read_volume
from ._reader import geometry_kwargs
from ._state import OpenPatch

CENTRES_NAME = "centres"
"""The points layer that :func:`add_centres` makes."""
KIND_COLOURS = {"add": "lime", "remove": "magenta", "ignore": "yellow"}
PREVIEW_NAME = "merged preview"
_LABEL_COLOURS = {None: "transparent", 0: "transparent", MEMBRANE: "cyan", IGNORE: "gray"}
_PREVIEW_COLOURS = {None: "transparent", 0: "transparent", MEMBRANE: "orange", IGNORE: "gray"}
_BRUSH_SIZE = 5


def add_patch_layers(viewer, opened: OpenPatch, on_paint: Callable) -> tuple[dict, list[str]]:
    """Add the layers of ``opened`` to ``viewer``, the Add layer on top and selected, and
    centre the view on the patch; ``on_paint`` hears every stroke on a correction layer.

    Returns
    -------
    layers
        By kind: ``image`` (when its file reads), ``labels``, ``preview``, ``add``,
        ``remove``, ``ignore``.
    problems
        A line for an image patch that cannot be read (the patch opens without it).
    """
    name, place = opened.patch.name, geometry_kwargs(opened.geometry)
    layers: dict = {}
    problems: list[str] = []
    image = opened.patch.image
    if image is not None and image.exists():
        try:
            layers["image"] = viewer.add_image(
                read_volume(image)[0], name=f"{name} image", **place
            )
        except InputError as exc:
            problems.append(str(exc))
    layers["labels"] = _add_labels(
        viewer, opened.base, f"{name} labels", _LABEL_COLOURS, 0.4, place, visible=False
    )
    preview = np.zeros_like(opened.base, dtype=np.uint8)
    layers["preview"] = _add_labels(viewer, preview, PREVIEW_NAME, _PREVIEW_COLOURS, 0.5, place)
    for kind in ("ignore", "remove", "add"):  # Add ends on top and selected
        colours = {None: "transparent", 0: "transparent", 1: KIND_COLOURS[kind]}
        mask = opened.saved[kind].astype(np.uint8)
        layer = _add_labels(viewer, mask, KIND_NAMES[kind], colours, 0.7, place)
        layer.events.paint.connect(on_paint)
        layer.events.data.connect(on_paint)
        layers[kind] = layer
    add = layers["add"]
    add.selected_label = 1
    add.brush_size = _BRUSH_SIZE
    viewer.layers.selection.active = add
    _centre_view(viewer, opened)
    return layers, problems


def remove_layers(viewer, layers: dict) -> None:
    """Take ``layers`` out of ``viewer`` (those the user has not removed already)."""
    for layer in layers.values():
        if layer in viewer.layers:
            viewer.layers.remove(layer)


def add_centres(viewer, centres: list[Centre], geometry: Geometry):
    """A points layer, selected, of ``centres`` (tomogram voxels) on the tomogram's grid."""
    zyx = np.array([from_xyz(c.xyz, float) for c in centres], dtype=float).reshape(-1, 3)
    layer = viewer.add_points(
        zyx, name=CENTRES_NAME, size=8, face_color="cyan", **geometry_kwargs(geometry)
    )
    viewer.layers.selection.active = layer
    return layer


def points_layer(viewer):
    """The points to cut at: the selected layer if it is a points layer, else the last
    points layer added (``None`` without one)."""
    active = viewer.layers.selection.active
    if active is not None and active.__class__.__name__ == "Points":
        return active
    layers = [x for x in viewer.layers if x.__class__.__name__ == "Points"]
    return layers[-1] if layers else None


def _add_labels(viewer, data, name: str, colours: dict, opacity: float, place: dict, **kwargs):
    colormap = DirectLabelColormap(color_dict=colours)
    return viewer.add_labels(
        data, name=name, colormap=colormap, opacity=opacity, **place, **kwargs
    )


def _centre_view(viewer, opened: OpenPatch) -> None:
    world = opened.geometry.position_of([s // 2 for s in opened.base.shape])
    viewer.reset_view()
    ndim = viewer.dims.ndim  # the patch's axes are the viewer's last three
    viewer.dims.set_point(range(ndim - 3, ndim), world)
