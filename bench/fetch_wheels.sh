#!/usr/bin/env bash
# Run where a package registry is reachable: downloads bench/gpu_wheels.txt's wheels for the GPU
# machine (CPython 3.12, manylinux x86_64) into bench/wheels/, to be copied along with the tree.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d bench/wheels -r bench/gpu_wheels.txt
du -ch bench/wheels/*.whl | tail -1
