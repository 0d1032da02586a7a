#!/usr/bin/env bash
# The project's device check, one call on the GPU machine (DEVELOPERS.md): a table on stdout, JSON,
# the table and the log under $OUT (benchmarks/results here). Rehearse on the CPU first:
#   bash benchmarks/gpu_check.sh --device cpu --quick
# Needs python3 with numpy, scipy, h5py (and CuPy for the GPU) and nothing the services need.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
command -v nvidia-smi >/dev/null && nvidia-smi > "$out/nvidia-smi.txt" 2>&1
# under 9 minutes whatever happens: each section saves gpu_check.json as it ends
# the project's venv where there is one (here), else the machine's python3 (the GPU machine)
py="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
timeout 520 "$py" benchmarks/gpu_check.py --out "$out" "$@" 2>&1 | tee "$out/gpu_check.log"
