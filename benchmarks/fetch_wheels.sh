#!/usr/bin/env bash
# Fetch the wheels a bare GPU node lacks into .whl/ (git ignores it; add `/.whl/` to
# .git/info/exclude once), for benchmarks/gpu_check.sh. Run it where pip reaches a package
# index. The node has Python 3.12 with PyTorch, NumPy and SciPy; everything else the
# package, its command line and pytest import travels, and zarr 2 with what it needs (for
# segment's OME-Zarr case; install the copick extra here first, which pins zarr < 3). Each wheel is the version installed
# here, so the node runs what the tests ran with. MemBrain-seg, for the side-by-side timing
# (benchmarks/membrain_speed.py), goes to .whl/membrain/ with the packages it needs that the
# node lacks, at the versions its parity figures were measured with; it is installed into
# its own folder there, so its typer < 0.26 never meets ours. SimpleITK (a 50 MB wheel,
# imported but never called on MemBrain-seg's segment path) is left behind: the benchmark
# puts an empty stand-in in its place.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
names=(mrcfile pynrrd nibabel packaging typing_extensions typer click rich pygments
       markdown-it-py mdurl shellingham annotated-doc pydantic pydantic-core annotated-types
       typing-inspection pytest pluggy iniconfig
       zarr numcodecs deprecated wrapt asciitree fasteners)
membrain=(membrain-seg==0.0.10 monai==1.6.1 typer==0.25.1 mrcfile==1.5.4)
download() {  # folder, requirement
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$1" "$2"
}
rm -rf .whl && mkdir -p .whl/membrain
for name in "${names[@]}"; do
    version=$("$PYTHON" -c "import importlib.metadata as m, sys
try: print('==' + m.version(sys.argv[1]))
except m.PackageNotFoundError: print('')" "$name")
    download .whl "$name$version"
done
for requirement in "${membrain[@]}"; do download .whl/membrain "$requirement"; done
ls .whl .whl/membrain
du -sh .whl
