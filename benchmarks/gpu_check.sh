#!/usr/bin/env bash
# Run benchmarks/gpu_check.py on a bare GPU node: no package index, PyTorch preinstalled,
# the project imported from this working tree (no install). The pure-Python wheels it needs
# (mrcfile, pynrrd, nibabel, typer, rich, pytest and their requirements) travel in .whl/;
# fetch them beforehand on a machine with an index (see the README, "Checking a GPU node").
#
#     bash benchmarks/gpu_check.sh            # on the node, from the repository root
#     bash benchmarks/gpu_check.sh --smoke    # rehearsal on a CPU: toy sizes, under a minute
#
# Writes gpu_check.json and gpu_check.log to $OUT (or the current folder); extra arguments
# go to gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD}"
PYTHON="${PYTHON:-python3}"
SITE="${SITE:-/tmp/site}"
if "$PYTHON" -m pip --version > /dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .whl/*.whl
else  # no pip: a wheel is a zip of what goes into site-packages
    for wheel in .whl/*.whl; do "$PYTHON" -m zipfile -e "$wheel" "$SITE"; done
fi
export PYTHONPATH="$SITE:$PWD"
PYTHONUNBUFFERED=1 "$PYTHON" benchmarks/gpu_check.py --json "$OUT/gpu_check.json" "$@" 2>&1 \
    | tee "$OUT/gpu_check.log"
