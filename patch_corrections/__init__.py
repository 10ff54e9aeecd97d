"""patch_corrections: correct a membrane segmentation in patches, turn the corrections into
training pairs, and fine-tune the network on them.

Arrays are ``(z, y, x)``; users give coordinates as ``x, y, z``.
"""

__version__ = "0.1.0"

from .constants import BACKGROUND, BORDER_WIDTH, IGNORE, MEMBRANE, PATCH_SIZE
from .corrections import MergeCounts, merge_labels, union_mask
from .errors import InputError, PatchCorrectionsWarning
from .io import Geometry, read_centres, read_info, read_volume, write_volume
from .patches import (
    Binarisation,
    PatchBox,
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
    "BACKGROUND",
    "BORDER_WIDTH",
    "IGNORE",
    "MEMBRANE",
    "PATCH_SIZE",
    "Binarisation",
    "Geometry",
    "InputError",
    "MergeCounts",
    "PatchBox",
    "PatchCorrectionsWarning",
    "ValueRange",
    "__version__",
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
    "read_centres",
    "read_info",
    "read_volume",
    "relabel_candidates",
    "slices_mask",
    "spaced_slices",
    "sparsify",
    "union_mask",
    "with_adopted",
    "write_volume",
]
