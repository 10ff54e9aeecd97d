"""The names of what the package writes, and the rules for names it reads.

Every file and folder name of an output is made here once: a correction round's folders,
previews, ``segment``'s outputs, ``suggest``'s tables. A name or path read from a manifest,
a summary or a folder listing is used only if :func:`is_plain_name` or :func:`inside`
accepts it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..constants import PREVIEWS_SUBDIR
from ..errors import InputError, warn


def is_plain_name(name: object) -> bool:
    """Whether ``name`` is usable as one file name: a non-empty string without path
    separators, other than ``.`` and ``..``."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not any(c in name for c in "/\\\0")
        and Path(name).name == name
    )


def inside(folder: Path, relative: object) -> bool:
    """Whether the relative path ``relative`` stays inside ``folder`` once ``..`` and
    symbolic links are resolved."""
    if not isinstance(relative, str) or not relative or Path(relative).is_absolute():
        return False
    root = Path(folder).resolve()
    return (root / relative).resolve().is_relative_to(root)


def warn_links_out(root: Path, paths: Iterable[Path]) -> None:
    """One warning when files of the tree ``root`` are, or lie in, symbolic links to
    somewhere outside it: they are read from there, but never without a word."""
    top = Path(root).resolve()
    out = [(p, p.resolve()) for p in paths if not p.resolve().is_relative_to(top)]
    if out:
        (path, target), more = out[0], len(out) - 1
        others = f"; {more} more file(s) of it lead outside too" if more else ""
        warn(
            f"{path}: a symbolic link to {target}, outside {root}{others}; read from there "
            "(copy the files in to keep the folder whole)"
        )


_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
"""What a patch name prefix (``--token``) may hold: it becomes part of file names."""


def check_token(token: str) -> str:
    """``token``, if it may prefix patch names; ``InputError`` otherwise."""
    if not _TOKEN.fullmatch(token):
        raise InputError(
            f"--token {token!r}: use letters, digits and . _ + - only (it becomes a file name)"
        )
    return token


def token_of(stem: str, tomogram: Path) -> str:
    """The patch name prefix of ``tomogram``: its file name ``stem``, with each character a
    file name should not hold replaced by ``_`` (and said so)."""
    if _TOKEN.fullmatch(stem):
        return stem
    token = re.sub(r"[^A-Za-z0-9._+-]", "_", stem).lstrip("._+-") or "tomogram"
    warn(f"{tomogram}: patches are named {token}_patchNNN (give --token to choose)")
    return token


@dataclass(frozen=True)
class RoundFolders:
    """The folders of one correction round, side by side in ``root``: what each step
    writes, and what the next one reads.

    ``patches/`` (``extract_patches --out-dir``), ``corrections/`` (the painted Add /
    Remove / Ignore masks, one folder per patch), ``train/`` (``merge_corrections
    --out-dir``), ``model/`` (``retrain --out-dir``).
    """

    root: Path

    @classmethod
    def beside(cls, patches: Path) -> RoundFolders:
        """The round whose patches folder is ``patches`` (whatever its own name)."""
        return cls(Path(patches).parent)

    @property
    def patches(self) -> Path:
        return self.root / "patches"

    @property
    def corrections(self) -> Path:
        return self.root / "corrections"

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def model(self) -> Path:
        return self.root / "model"


def preview_path(out_dir: Path, name: str) -> Path:
    """Where the preview PNG of patch ``name`` goes in an extraction or merge folder."""
    return Path(out_dir) / PREVIEWS_SUBDIR / f"{name}.png"


SEGMENT_OUTPUTS = ("probabilities", "segmented", "uncertainty", "components")
"""What ``segment`` writes per tomogram, as ``<stem>_<kind>.mrc`` (or ``.zarr``)."""
SEGMENT_FORMATS = {"mrc": ".mrc", "zarr": ".zarr"}
"""The formats ``segment`` writes (``--format``), with their suffixes."""


def segment_output(out_dir: Path, stem: str, kind: str, fmt: str = "mrc") -> Path:
    """Where ``segment`` writes its ``kind`` (one of :data:`SEGMENT_OUTPUTS`) output of the
    tomogram ``stem`` in format ``fmt``: ``<stem>_probabilities.mrc`` is named apart from
    MemBrain-seg's ``<stem>_scores.mrc``, which holds logits."""
    if kind not in SEGMENT_OUTPUTS:
        raise ValueError(f"segment writes no {kind!r} output")
    return Path(out_dir) / f"{stem}_{kind}{SEGMENT_FORMATS[fmt]}"


def segmentation_beside(probabilities: Path) -> Path | None:
    """The segmentation ``segment`` wrote beside its ``probabilities`` file, if that is
    one of its outputs and the segmentation is there."""
    for fmt, suffix in SEGMENT_FORMATS.items():
        ending = f"_probabilities{suffix}"
        if probabilities.name.endswith(ending):
            stem = probabilities.name.removesuffix(ending)
            segmented = segment_output(probabilities.parent, stem, "segmented", fmt)
            return segmented if segmented.exists() else None
    return None


def suggestion_tables(out_dir: Path, stem: str) -> tuple[Path, Path]:
    """``suggest``'s centres file (``x,y,z,score,reason``) and napari points CSV."""
    return (
        Path(out_dir) / f"{stem}_suggestions.csv",
        Path(out_dir) / f"{stem}_suggestions_napari.csv",
    )


def suggestion_preview(out_dir: Path, stem: str, rank: int) -> Path:
    """The preview PNG of ``suggest``'s suggestion ``rank`` (1 for the best)."""
    return Path(out_dir) / PREVIEWS_SUBDIR / f"{stem}_suggestion{rank:02d}.png"


def suggestion_previews(out_dir: Path, stem: str) -> list[Path]:
    """The suggestion previews of ``stem`` in ``out_dir``, as an earlier run left them."""
    return sorted((Path(out_dir) / PREVIEWS_SUBDIR).glob(f"{stem}_suggestion[0-9]*.png"))
