#!/usr/bin/env bash
# Everything a GPU session checks, in one go: build, tests, both benchmarks. Results and logs go
# to $OUT (default ./gpu-results). Usage: bash benchmarks/run_gpu.sh [--quick]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-results}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
python -m cachekern info | tee "$OUT/info.json"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/nvidia-smi.txt"

pytest tests -q -rs 2>&1 | tee "$OUT/tests.log" | tail -15
(cd benchmarks && python bench_kernels.py --out "../$OUT/kernels.md") 2>&1 | tail -40
(cd benchmarks && python bench_block_cache.py --out "../$OUT/block_cache.md") 2>&1 | tail -30
