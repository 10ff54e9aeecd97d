"""The demo: the whole correction loop on the bundled sample data, step by step."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from ..constants import LAST_CHECKPOINT
from ..errors import InputError
from ..io.names import RoundFolders, segment_output
from ..io.volumes import read_volume
from ..metrics import counts, summarise
from .events import SILENT, Listener
from .extraction import ExtractSettings, extract_patches
from .merging import merge_corrections
from .segmentation import SegmentSettings, segment
from .training import RetrainSettings, retrain

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "sample_data"
DEMO_OUT_DIR = Path("work/demo")
"""Where the demo writes every step's output, by default."""
DEMO_PATCH_SIZE = 96
DEMO_SEGMENT = SegmentSettings(window=64, overlap=0.5, batch_size=4, threshold=0.5, device="cpu")
"""How the demo segments; sample_data/make_sample_data.py makes prediction.mrc with it."""
DEMO_FINE_TUNING = RetrainSettings(
    iterations=300, crop_size=48, optimizer="adamw", lr=1e-3, val_fraction=0.0, device="cpu"
)
"""The demo's fine-tuning (logging as retrain's own defaults: the same final loss); the
benchmarks' correction rounds replace its iterations."""
METRICS = ("dice", "iou", "precision", "recall", "tolerant_dice_2")
"""The metrics the demo compares, before and after fine-tuning."""
_NEEDED = ("tomogram.mrc", "truth.mrc", "centres.csv", "starting_model.pt", "corrections")


@dataclass(frozen=True)
class DemoSettings:
    """How long the demo fine-tunes, and whether it may replace an earlier run."""

    iterations: int = 300
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise InputError(f"--iterations must be at least 1, got {self.iterations}")


@dataclass(frozen=True)
class DemoReport:
    """Every step's report, and the metrics before and after against the true mask."""

    out_dir: Path
    steps: list
    metrics: dict[str, dict[str, float]]
    """``"before"`` and ``"after"``: metric name -> value (see :data:`METRICS`)."""


def demo(
    out_dir: Path = DEMO_OUT_DIR,
    sample_dir: Path = SAMPLE_DIR,
    *,
    settings: DemoSettings = DemoSettings(),
    listener: Listener = SILENT,
) -> DemoReport:
    """Segment the sample tomogram, cut patches where it is wrong, merge the bundled
    corrections, fine-tune, segment again and evaluate both against the true mask.

    ``listener.stage`` hears each step's title before it starts and
    ``listener.step_done`` each step's report.
    """
    out_dir, sample_dir = Path(out_dir), Path(sample_dir)
    missing = [n for n in _NEEDED if not (sample_dir / n).exists()]
    if missing:
        raise InputError(f"{sample_dir}: no {missing[0]}; pass --sample-dir with the sample data")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not settings.overwrite:
            raise InputError(
                f"{out_dir}: holds an earlier run; pass --overwrite or another --out-dir"
            )
        shutil.rmtree(out_dir)
    tomogram, starting = sample_dir / "tomogram.mrc", sample_dir / "starting_model.pt"
    # One round's folders (patches/, train/, model/), and the segmentations before and after.
    round_ = RoundFolders(out_dir)
    before, after = out_dir / "before", out_dir / "after"
    fine_tuning = replace(DEMO_FINE_TUNING, iterations=settings.iterations)
    steps = [
        (
            "1. Segment with the starting model (a tiny network trained on other data)",
            lambda: segment(tomogram, starting, before, settings=DEMO_SEGMENT, listener=listener),
        ),
        (
            "2. Cut patches where it is wrong",
            lambda: extract_patches(
                tomogram,
                segment_output(before, "tomogram", "segmented"),
                round_.patches,
                sample_dir / "centres.csv",
                settings=ExtractSettings(patch_size=DEMO_PATCH_SIZE),
                listener=listener,
            ),
        ),
        (
            "3. Merge the bundled corrections (what an annotator painted on those patches)",
            lambda: merge_corrections(
                round_.patches, sample_dir / "corrections", round_.train, listener=listener
            ),
        ),
        (
            "4. Fine-tune the starting model on the corrected patches",
            lambda: retrain(
                round_.train, round_.model, starting, settings=fine_tuning, listener=listener
            ),
        ),
        (
            "5. Segment again with the fine-tuned model",
            lambda: segment(
                tomogram,
                round_.model / LAST_CHECKPOINT,
                after,
                settings=DEMO_SEGMENT,
                listener=listener,
            ),
        ),
    ]
    reports = []
    for title, run in steps:
        listener.stage(title)
        reports.append(run())
        listener.step_done(reports[-1])
    listener.stage("6. Evaluate both against the sample's true membrane mask")
    truth, _ = read_volume(sample_dir / "truth.mrc")
    metrics = {}
    for name, folder in (("before", before), ("after", after)):
        predicted, _ = read_volume(segment_output(folder, "tomogram", "segmented"))
        result = summarise(counts(predicted != 0, truth.astype("uint8"), 2), 2)
        metrics[name] = {key: result[key] for key in METRICS}
    return DemoReport(out_dir, reports, metrics)
