"""The copick options turned into a project and the tomogram they name."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..io.copick_project import CopickProject, CopickSelection, CopickTomogram


def project(
    config: Path | None,
    runs: list[str] | None,
    tomo_type: str | None,
    voxel_spacing: float | None,
    tomogram_given: bool,
) -> CopickProject | None:
    """The project ``--copick-config`` names (``None`` without it); copick options without
    a project, or a project and a tomogram both, are one error line."""
    if config is None:
        stray = [
            flag
            for flag, value in (
                ("--run", runs),
                ("--tomo-type", tomo_type),
                ("--voxel-spacing", voxel_spacing),
            )
            if value
        ]
        if stray:
            raise InputError(f"{stray[0]} selects in a copick project: give --copick-config")
        if not tomogram_given:
            raise InputError("give --tomogram, or a copick project with --copick-config")
        return None
    if tomogram_given:
        raise InputError("give --tomogram or --copick-config, not both")
    return CopickProject(
        CopickSelection(Path(config), tuple(runs or ()), tomo_type, voxel_spacing)
    )


def one_tomogram(
    config: Path | None,
    run: str | None,
    tomo_type: str | None,
    voxel_spacing: float | None,
    tomogram_given: bool,
) -> tuple[CopickProject, CopickTomogram] | None:
    """The project and the one tomogram a command that reads one (suggest,
    extract_patches) was given; ``None`` when ``--tomogram`` names it (see :func:`project`)."""
    chosen = project(config, [run] if run else None, tomo_type, voxel_spacing, tomogram_given)
    return None if chosen is None else (chosen, chosen.tomograms(one=True)[0])


def shown(chosen: CopickTomogram) -> Path:
    """How a report names a copick tomogram: by its run, type and spacing, not by the
    folder name every run's tomogram shares (``wbp.zarr``)."""
    return Path(f"run {chosen.run} ({chosen.tomo_type} at {chosen.voxel_spacing:g} Å)")
