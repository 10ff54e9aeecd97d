#!/usr/bin/env bash
# Fetch the wheels a bare GPU node lacks into .whl/ (git ignores it; add `/.whl/` to
# .git/info/exclude once), for benchmarks/gpu_check.sh. Run it where pip reaches a package
# index. The node has Python 3.12 with PyTorch, NumPy and SciPy; everything else the
# package, its command line and pytest import travels. Each wheel is the version installed
# here, so the node runs what the tests ran with.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
names=(mrcfile pynrrd nibabel packaging typing_extensions typer click rich pygments
       markdown-it-py mdurl shellingham annotated-doc pydantic pydantic-core annotated-types
       typing-inspection pytest pluggy iniconfig)
rm -rf .whl && mkdir .whl
for name in "${names[@]}"; do
    version=$("$PYTHON" -c "import importlib.metadata as m, sys
try: print('==' + m.version(sys.argv[1]))
except m.PackageNotFoundError: print('')" "$name")
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "$name$version"
done
ls .whl
