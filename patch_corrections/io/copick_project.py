"""copick projects: which tomogram a selection names, and where a segmentation lives.

A copick project (a JSON configuration over ``ExperimentRuns/<run>/VoxelSpacing<Å>/
<tomo_type>.zarr`` and ``ExperimentRuns/<run>/Segmentations/<Å>_<user>_<session>_<name>
.zarr``) is read through copick's own API, which is imported here only, and only when a
project is given (the ``copick`` extra). Its tomograms and segmentations are OME-Zarr
images; once this module has named their folders, :mod:`.omezarr` reads them and
:mod:`.omezarr_writer` writes them like any other ``.zarr`` path. Data on remote storage
(``s3://``, the CZ cryoET Data Portal) is refused: this reads projects on a local or
mounted file system.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, warn

COPICK_INSTALL = 'pip install "patch_corrections[copick]"'

DEFAULT_NAME = "membrane"
"""The pickable object a segmentation is named after unless ``--copick-name`` says."""
DEFAULT_USER = "patch-corrections"
"""Its user unless ``--copick-user`` or the configuration's ``user_id`` says (copick
names hold no underscore)."""
DEFAULT_SESSION = "0"

_SPACING_TOLERANCE = 5e-4
"""copick names a voxel spacing with 3 decimals (``VoxelSpacing10.000``)."""
_LISTED = 12
"""How many of a project's runs, spacings or types an error line lists."""


@dataclass(frozen=True)
class CopickSelection:
    """What ``--copick-config``, ``--run``, ``--tomo-type`` and ``--voxel-spacing`` select."""

    config: Path
    runs: tuple[str, ...] = ()
    """No run: every run of the project."""
    tomo_type: str | None = None
    """``None``: the only tomogram type the runs hold."""
    voxel_spacing: float | None = None
    """``None``: the only voxel spacing the runs hold."""


@dataclass(frozen=True)
class SegmentationName:
    """copick's name of a segmentation: ``--copick-name``, ``--copick-user``,
    ``--copick-session``; a binary one (``is_multilabel`` false)."""

    name: str = DEFAULT_NAME
    user: str | None = None
    """``None``: the configuration's ``user_id``, else :data:`DEFAULT_USER`."""
    session: str = DEFAULT_SESSION


@dataclass(frozen=True)
class CopickTomogram:
    """One run's tomogram, found: its folder on disk is an OME-Zarr image."""

    run: str
    voxel_spacing: float
    tomo_type: str
    path: Path


def _listing(values) -> str:
    values = list(values)
    shown = ", ".join(map(str, values[:_LISTED]))
    more = f", … ({len(values)} in all)" if len(values) > _LISTED else ""
    return (shown + more) if values else "none"


def _spacing(value: float) -> str:
    return f"{value:.3f}"


class CopickProject:
    """A copick project opened from its configuration file."""

    def __init__(self, selection: CopickSelection):
        self.selection = selection
        config = Path(selection.config)
        try:
            import copick
        except ImportError:
            raise InputError(
                f"--copick-config {config}: copick projects need the copick extra "
                f"({COPICK_INSTALL})"
            ) from None
        try:
            content = json.loads(config.read_text(encoding="utf-8"))
            kind = content.get("config_type")
        except (OSError, ValueError, AttributeError) as exc:
            text = getattr(exc, "strerror", None) or str(exc)
            raise InputError(
                f"--copick-config {config}: not a copick configuration: {text}"
            ) from None
        if kind not in (None, "filesystem"):
            raise InputError(
                f"--copick-config {config}: a {kind!r} project; patch_corrections reads copick "
                'projects on a file system (config_type "filesystem")'
            )
        for key in ("overlay_root", "static_root"):
            root = content.get(key)
            scheme = root.split("://", 1)[0] if isinstance(root, str) and "://" in root else "file"
            if scheme not in ("file", "local"):
                raise InputError(
                    f"--copick-config {config}: its {key} lies on {scheme}:// storage; "
                    "patch_corrections reads copick projects on a local or mounted file system"
                )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # copick warns, then raises, on odd names
                self.root = copick.from_file(str(config))
        except (ValueError, TypeError, KeyError) as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            text = "; ".join(line for line in lines if not line.startswith("For further"))
            raise InputError(
                f"--copick-config {config}: not a copick configuration: "
                f"{text or type(exc).__name__}"
            ) from None
        self.name = str(config)

    # Tomograms.

    def runs(self) -> list:
        """The selected runs (all of the project's without ``--run``), sorted by name."""
        held = {run.name: run for run in self.root.runs}
        wanted = self.selection.runs or tuple(sorted(held))
        missing = [name for name in wanted if name not in held]
        if missing:
            raise InputError(
                f"--run {missing[0]}: no such run in the copick project {self.name}; it holds "
                f"{_listing(sorted(held))}"
            )
        if not wanted:
            raise InputError(f"the copick project {self.name} holds no run")
        return [held[name] for name in dict.fromkeys(wanted)]

    def tomograms(self, *, one: bool = False) -> list[CopickTomogram]:
        """The selected runs' tomograms of the chosen type and voxel spacing. ``one``: the
        command reads one tomogram, so the selection must name one run."""
        runs = self._one_run() if one else self.runs()
        spacing = self._voxel_spacing(runs)
        tomo_type = self._tomo_type(runs, spacing)
        found, lacking = [], []
        for run in runs:
            tomogram = _tomogram_of(run, spacing, tomo_type)
            if tomogram is None and not self.selection.runs:
                lacking.append(run.name)  # every run was asked for: those that have it
                continue
            if tomogram is None:
                raise InputError(
                    f"run {run.name} of the copick project {self.name} holds no {tomo_type!r} "
                    f"tomogram at {_spacing(spacing)} Å; it holds "
                    f"{_listing(_held_tomograms(run))}"
                )
            path = _local_path(
                tomogram.fs_static if tomogram.read_only else tomogram.fs_overlay,
                tomogram.static_path if tomogram.read_only else tomogram.overlay_path,
                f"tomogram {run.name}/{tomo_type}",
            )
            found.append(CopickTomogram(run.name, spacing, tomo_type, path))
        if lacking:
            warn(
                f"{len(lacking)} run(s) of the copick project {self.name} hold no {tomo_type!r} "
                f"tomogram at {_spacing(spacing)} Å and were left out: {_listing(lacking)}"
            )
        return found

    def run_and_spacing(self) -> tuple[str, float]:
        """The one run and the voxel spacing selected, whatever its tomograms."""
        runs = self._one_run()
        return runs[0].name, self._voxel_spacing(runs)

    def _one_run(self) -> list:
        runs = self.runs()
        if len(runs) > 1:
            raise InputError(
                f"the copick project {self.name} holds {len(runs)} runs; choose one with "
                f"--run ({_listing(r.name for r in runs)})"
            )
        return runs

    def _voxel_spacing(self, runs) -> float:
        held = sorted(
            {round(vs.voxel_size, 3) for run in runs for vs in run.voxel_spacings if vs.tomograms}
        )
        if not held:
            raise InputError(
                f"the copick project {self.name} holds no tomogram in run(s) "
                f"{_listing(r.name for r in runs)}"
            )
        given = self.selection.voxel_spacing
        if given is not None:
            if not any(_same_spacing(v, given) for v in held):
                raise InputError(
                    f"--voxel-spacing {given:g}: the copick project {self.name} holds "
                    f"{_listing(map(_spacing, held))} Å"
                    + (f" in run {runs[0].name}" if len(runs) == 1 else "")
                )
            return round(given, 3)
        if len(held) != 1:
            raise InputError(
                f"give --voxel-spacing: the copick project {self.name} holds "
                f"{_listing(map(_spacing, held))} Å"
            )
        return held[0]

    def _tomo_type(self, runs, spacing: float) -> str:
        held = sorted({t.tomo_type for run in runs for t in _tomograms_at(run, spacing)})
        given = self.selection.tomo_type
        if given is not None:
            if given not in held:
                raise InputError(
                    f"--tomo-type {given}: the copick project {self.name} holds "
                    f"{_listing(held)} at {_spacing(spacing)} Å"
                )
            return given
        if len(held) != 1:
            raise InputError(
                f"give --tomo-type: the copick project {self.name} holds {_listing(held)} at "
                f"{_spacing(spacing)} Å"
            )
        return held[0]

    # Segmentations.

    def existing_segmentation(self, run_name: str, spacing: float, seg: SegmentationName) -> Path:
        """The folder of a segmentation the project holds for run ``run_name`` at voxel
        spacing ``spacing``; an error line lists those it holds if there is none."""
        run = self._run(run_name)
        user = self._user(seg)
        found = [
            s
            for s in run.segmentations
            if s.name == seg.name
            and s.user_id == user
            and s.session_id == seg.session
            and _same_spacing(s.voxel_size, spacing)
            and not (s.is_multilabel or getattr(s, "is_instance", False))
        ]
        if not found:
            held = [
                f"{s.name} by {s.user_id}, session {s.session_id}, {_spacing(s.voxel_size)} Å"
                + (" (multilabel)" if s.is_multilabel else "")
                + (" (instance)" if getattr(s, "is_instance", False) else "")
                for s in run.segmentations
            ]
            raise InputError(
                f"run {run.name} of the copick project {self.name} holds no segmentation "
                f"{seg.name!r} by {user}, session {seg.session}, at "
                f"{_spacing(spacing)} Å (--copick-name, --copick-user, "
                f"--copick-session); it holds {_listing(held)}"
            )
        s = min(found, key=lambda f: bool(f.read_only))  # the overlay's shadows the static one
        return _local_path(s.fs, s.path, f"segmentation {run.name}/{seg.name}")

    def new_segmentation(
        self,
        run_name: str,
        spacing: float,
        seg: SegmentationName,
        session_option: str = "--copick-session",
    ) -> Path:
        """Where a binary segmentation named ``seg`` of run ``run_name`` at voxel spacing
        ``spacing`` is written (in the project's overlay), checked against copick's rules
        for names; its ``Segmentations`` folder is created."""
        from copick.util.escape import sanitize_name
        from copick.util.segmentation import segmentation_store_name

        user = self._user(seg)
        for option, value in (
            ("--copick-name", seg.name),
            ("--copick-user", user),
            (session_option, seg.session),
        ):
            try:
                clean = sanitize_name(value, suppress_warnings=True)
            except ValueError:
                clean = ""
            if clean != value:
                raise InputError(
                    f"{option} {value!r}: copick names hold no space, underscore or any of "
                    f'<>:"/\\|?*' + (f"; e.g. {clean!r}" if clean else "")
                )
        objects = [o.name for o in self.root.config.pickable_objects]
        if seg.name not in objects:
            raise InputError(
                f"--copick-name {seg.name}: the copick project {self.name} has no pickable "
                f"object of that name (it has {_listing(objects)}); a binary segmentation is "
                "named after one: add it to the configuration (is_particle false) or name one "
                "it has with --copick-name"
            )
        run = self._run(run_name)
        name = segmentation_store_name(spacing, user, seg.session, seg.name)
        folder = _local_path(run.fs_overlay, f"{run.overlay_path}/Segmentations", "overlay")
        folder.mkdir(parents=True, exist_ok=True)
        return folder / name

    def _run(self, name: str):
        run = self.root.get_run(name)
        if run is None:
            raise InputError(f"no run {name} in the copick project {self.name}")
        return run

    def _user(self, seg: SegmentationName) -> str:
        return seg.user or self.root.config.user_id or DEFAULT_USER


def _same_spacing(a: float, b: float) -> bool:
    return abs(a - b) < _SPACING_TOLERANCE


def _tomograms_at(run, spacing: float) -> list:
    """The run's tomograms at voxel spacing ``spacing``."""
    return [
        t
        for vs in run.voxel_spacings
        if _same_spacing(vs.voxel_size, spacing)
        for t in vs.tomograms
    ]


def _tomogram_of(run, spacing: float, tomo_type: str):
    return next((t for t in _tomograms_at(run, spacing) if t.tomo_type == tomo_type), None)


def _held_tomograms(run) -> list[str]:
    return [
        f"{t.tomo_type} at {_spacing(vs.voxel_size)} Å"
        for vs in run.voxel_spacings
        for t in vs.tomograms
    ]


def _local_path(fs, path: str, what: str) -> Path:
    """``path`` on ``fs`` as a local path, or an error line if ``fs`` is remote."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    if not {"file", "local"} & set(protocols):
        raise InputError(
            f"copick {what} lies on {protocols[0]}:// storage; patch_corrections reads "
            "copick projects on a local or mounted file system"
        )
    return Path(path)
