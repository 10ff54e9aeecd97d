"""Workflows: one function per job, taking paths and a frozen settings dataclass and
returning a report. Every front end (the command line, a notebook, a viewer plugin, a
cluster job) calls these; they validate once, never print, and report progress through a
:class:`Listener` and warnings in their report.
"""

from .batch_segmentation import BatchSegmentReport, segment_many
from .copick_runs import CopickSegmentReport, segment_runs
from .demo import DemoReport, DemoSettings, demo
from .evaluation import EvaluateReport, EvaluateSettings, evaluate
from .events import Listener, Progress
from .export import ExportReport, ExportSettings, export_membrain
from .extraction import ExtractedPatch, ExtractReport, ExtractSettings, extract_patches
from .merging import MergeReport, MergeSettings, merge_corrections
from .pasting import PasteReport, PasteSettings, paste_corrections
from .segmentation import SegmentReport, SegmentSettings, segment
from .sparse_simulation import SparseReport, SparseSettings, simulate_sparse
from .suggestion import Suggestion, SuggestReport, SuggestSettings, suggest
from .training import RetrainReport, RetrainSettings, retrain

__all__ = [
    "BatchSegmentReport",
    "CopickSegmentReport",
    "DemoReport",
    "DemoSettings",
    "EvaluateReport",
    "EvaluateSettings",
    "ExportReport",
    "ExportSettings",
    "ExtractReport",
    "ExtractSettings",
    "ExtractedPatch",
    "Listener",
    "MergeReport",
    "MergeSettings",
    "PasteReport",
    "PasteSettings",
    "Progress",
    "RetrainReport",
    "RetrainSettings",
    "SegmentReport",
    "SegmentSettings",
    "SparseReport",
    "SparseSettings",
    "SuggestReport",
    "SuggestSettings",
    "Suggestion",
    "demo",
    "evaluate",
    "export_membrain",
    "extract_patches",
    "merge_corrections",
    "paste_corrections",
    "retrain",
    "segment",
    "segment_many",
    "segment_runs",
    "simulate_sparse",
    "suggest",
]
