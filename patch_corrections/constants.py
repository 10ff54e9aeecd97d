"""Domain numbers and label values, kept in one place.

Every array in memory is ordered ``(z, y, x)``; users give coordinates as ``x, y, z``.
"""

from __future__ import annotations

BACKGROUND = 0
"""Label value of voxels known not to be membrane."""
MEMBRANE = 1
"""Label value of membrane voxels."""
IGNORE = 2
"""Label value of voxels excluded from training (the highest label, never predicted)."""
LABEL_VALUES = (BACKGROUND, MEMBRANE, IGNORE)

PATCH_SIZE = 160
"""Default edge length of a cubic patch, in voxels; the centre sits at local index 80."""
BORDER_WIDTH = 16
"""Width in voxels of the ignore band along every face of a label patch: the network sees
no context there."""

MANIFEST_NAME = "manifest.json"
"""File name of the extraction manifest inside an extraction output folder."""
IMAGES_SUBDIR = "images"
LABELS_SUBDIR = "labels"

MERGE_SUMMARY_NAME = "merge_summary.json"
"""Per-patch report of merge_corrections inside its output folder."""

TRAIN_IMAGES_SUBDIR = "imagesTr"
TRAIN_LABELS_SUBDIR = "labelsTr"
TRAIN_IMAGE_SUFFIX = "_0000"
"""Training folders follow the nnU-Net / MemBrain-seg layout: ``imagesTr/<name>_0000.nii.gz``
beside ``labelsTr/<name>.nii.gz``."""

DEFAULT_LOSS = "bce+dice"
"""Training loss of ``retrain``: masked BCE plus soft Dice, as nnU-Net and MemBrain-seg."""
RELABEL_DIR = "adopted"
"""Folder of a relabeling round holding the voxels it adopted as membrane, per patch."""

CORRECTION_KINDS = ("remove", "add", "ignore")
"""Correction file prefixes, in the order they are applied (MemBrain-seg's precedence)."""
