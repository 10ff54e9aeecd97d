"""Label arrays in, label arrays out, no PyTorch: what extraction and merging need.

- ``patches``: image and label patches cut at a box (``io.geometry.PatchBox``, re-exported
  here), where centres fall, binarisation;
- ``density``: whether a "segmentation" is a tomogram's densities;
- ``corrections``: Add / Remove / Ignore masks merged into a label patch;
- ``compositing``: merged patches written back into a full-size volume;
- ``sparse``: which voxels a sparse annotation keeps;
- ``relabel``: which ignore voxels a relabeling round adopts.

Labels are ``0`` background, ``1`` membrane, ``2`` ignore; arrays are ``(z, y, x)``.
"""

from ..io.geometry import PatchBox
from .corrections import MergeCounts, merge_labels, union_mask
from .patches import (
    Binarisation,
    ValueRange,
    add_border_band,
    centre_index,
    choose_binarisation,
    image_patch,
    label_patch,
)
from .relabel import adopt, curriculum_share, relabel_candidates, with_adopted
from .sparse import parse_slices, random_boxes, slices_mask, spaced_slices, sparsify

__all__ = [
    "Binarisation",
    "MergeCounts",
    "PatchBox",
    "ValueRange",
    "add_border_band",
    "adopt",
    "centre_index",
    "choose_binarisation",
    "curriculum_share",
    "image_patch",
    "label_patch",
    "merge_labels",
    "parse_slices",
    "random_boxes",
    "relabel_candidates",
    "slices_mask",
    "spaced_slices",
    "sparsify",
    "union_mask",
    "with_adopted",
]
