"""The package's layers hold: every import points down (or within a layer), no module
imports itself back through others, and extraction and merging run without PyTorch."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "patch_corrections"

LAYERS = {
    "constants": 0,
    "errors": 0,
    "_version": 0,
    "io": 1,
    "labels": 2,
    "metrics": 2,
    "previews": 2,
    "network": 3,
    "inference": 4,
    "training": 4,
    "workflows": 5,
    "cli": 6,
    "napari_plugin": 6,
    "__init__": 7,
    "__main__": 7,
}
"""Each top-level room of the package and its floor: a module imports only from its own
floor or those below (DESIGN.md's layers)."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The package modules ``path`` imports, at its top or inside functions."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [f"{target}.{alias.name}" for alias in node.names] + [target]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for candidate in candidates:
            if candidate.startswith("patch_corrections"):
                found.add(candidate)
    return found


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        # An imported name is a module when a file has its name; else the module holding it.
        targets = {t if t in paths else t.rpartition(".")[0] for t in _imports(path)}
        graph[name] = {t for t in targets if t in paths and t != name}
    return graph


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_import_points_down_or_within_its_floor():
    upward = [
        f"{module} -> {target}"
        for module, targets in _graph().items()
        for target in targets
        if _room(target) not in ("__init__",) and LAYERS[_room(target)] > LAYERS[_room(module)]
    ]
    assert upward == []


def test_no_module_imports_itself_back():
    graph = _graph()
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            # A package's __init__ re-exports its modules: importing it is importing them.
            if target == module.rpartition(".")[0]:
                continue
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


EXTRACT_AND_MERGE = r"""
import json, sys
from pathlib import Path

sys.modules["torch"] = None  # every `import torch` now fails

import mrcfile
import numpy as np

import patch_corrections.io
import patch_corrections.labels
from patch_corrections.io.geometry import Geometry
from patch_corrections.io.volumes import read_volume, write_volume
from patch_corrections.workflows.extraction import ExtractSettings, extract_patches
from patch_corrections.workflows.merging import merge_corrections

folder = Path(sys.argv[1])
tomogram = np.arange(16 * 16 * 16, dtype=np.float32).reshape(16, 16, 16) % 7
segmentation = np.zeros((16, 16, 16), np.int8)
segmentation[8] = 1  # a membrane: the plane z = 8
for name, data in (("tomo.mrc", tomogram), ("seg.mrc", segmentation)):
    with mrcfile.new(folder / name) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = 2.0
add = np.zeros((8, 8, 8), np.uint8)
add[4, 4, 4] = 1  # one voxel of membrane painted inside the patch
(folder / "corr" / "tomo_patch000").mkdir(parents=True)
patch_geometry = Geometry((2.0,) * 3, (8.0,) * 3)  # the patch's first voxel: (4, 4, 4)
write_volume(folder / "corr" / "tomo_patch000" / "Add1.nrrd", add, patch_geometry)
cut = extract_patches(
    folder / "tomo.mrc", folder / "seg.mrc", folder / "patches", points=[(8, 8, 8)],
    settings=ExtractSettings(patch_size=8, border=1),
)
merged = merge_corrections(folder / "patches", folder / "corr", folder / "train")
labels, _ = read_volume(folder / "train" / "labelsTr" / "tomo_patch000.nii.gz")
print(json.dumps({
    "patches": [p.name for p in cut.patches],
    "added": merged.rows[0]["added"],
    "membrane": int((labels == 1).sum()),
    "torch_loaded": any(m == "torch" or m.startswith("torch.") for m in sys.modules
                        if sys.modules[m] is not None),
}))
"""


def test_extraction_and_merging_run_without_pytorch(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", EXTRACT_AND_MERGE, str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    # The patch around (8, 8, 8) holds the plane z = 8 at its local z = 4: 6 x 6 interior
    # voxels outside the 1-voxel border band, and the painted voxel is already membrane.
    assert result == {
        "patches": ["tomo_patch000"],
        "added": 0,
        "membrane": 36,
        "torch_loaded": False,
    }


@pytest.mark.parametrize("room", ["io", "labels"])
def test_the_rooms_below_the_network_name_no_torch(room):
    users = [
        str(path.relative_to(PACKAGE))
        for path in (PACKAGE / room).rglob("*.py")
        if any(name == "torch" or name.startswith("torch.") for name in _all_imports(path))
    ]
    assert users == []


def _all_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module)
    return names
