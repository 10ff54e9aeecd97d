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
PAINTED_IN_BAND = False
"""Whether merge keeps painted Add and Remove voxels inside the band as labels by default
(MemBrain-seg's merge makes them ignore like the rest of the band)."""

MANIFEST_NAME = "manifest.json"
"""File name of the extraction manifest inside an extraction output folder."""
IMAGES_SUBDIR = "images"
LABELS_SUBDIR = "labels"

MERGE_SUMMARY_NAME = "merge_summary.json"
"""Per-patch report of merge_corrections inside its output folder."""
PREVIEWS_SUBDIR = "previews"
"""Folder of an output folder that holds its PNG previews."""

TRAIN_IMAGES_SUBDIR = "imagesTr"
TRAIN_LABELS_SUBDIR = "labelsTr"
TRAIN_IMAGE_SUFFIX = "_0000"
"""Training folders follow the nnU-Net / MemBrain-seg layout: ``imagesTr/<name>_0000.nii.gz``
beside ``labelsTr/<name>.nii.gz``."""

NORMALISATION = "robust_z"
"""Our intensity normalisation, recorded in checkpoints for ``segment`` to repeat: median
and 1.4826 x MAD, clipped to ±10."""
ZSCORE = "zscore"
"""MemBrain-seg's normalisation: the whole tomogram's mean and standard deviation, not
clipped; the one its checkpoints were trained with."""
NORMALISATIONS = (NORMALISATION, ZSCORE)

LAST_CHECKPOINT = "last.pt"
"""A training run's latest weights and state, in its output folder."""
BEST_CHECKPOINT = "best.pt"
"""A training run's weights of the best validation Dice, in its output folder."""

PRESET_NAMES = ("full", "small", "tiny")
"""Network widths a new run may start from: ``full`` is MemBrain-seg's (for a GPU),
``tiny`` runs tests on a CPU."""
MEMBRAIN_PIXEL_SIZE = 10.0
"""Pixel size (Å) MemBrain-seg trains its networks at."""
RELABEL_MAX = 0.5
"""Default share of the predicted membrane in ignore regions adopted by the last
relabeling round."""
WARMUP_SHARE = 0.05
"""Default share of a run's steps that warm the learning rate up."""

DEFAULT_LOSS = "bce+dice"
"""Training loss of ``retrain``: masked BCE plus soft Dice, as nnU-Net and MemBrain-seg."""
RELABEL_DIR = "adopted"
"""Folder of a relabeling round holding the voxels it adopted as membrane, per patch."""

CORRECTION_KINDS = ("remove", "add", "ignore")
"""Correction file prefixes, in the order they are applied (MemBrain-seg's precedence)."""
