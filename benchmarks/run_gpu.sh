#!/usr/bin/env bash
# Everything a GPU session checks, in one go: build, tests, both benchmarks. Results and logs go
# to $OUT (default ./gpu-results). Usage: bash benchmarks/run_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-results}"
mkdir -p "$OUT" && OUT="$(realpath "$OUT")"
export PYTHONUNBUFFERED=1

python3 -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
cachekern info | tee "$OUT/info.json"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/nvidia-smi.txt"

python3 -m pytest tests -q -rs 2>&1 | tee "$OUT/tests.log" | tail -15
if [ "${PIPESTATUS[0]}" -ge 128 ]; then   # the test process crashed: get a native backtrace
    cuda-gdb -batch -ex run -ex bt --args python3 -m pytest tests -q -x 2>&1 | tail -40
fi
python3 -m benchmarks.bench_kernels --out "$OUT/kernels.md" 2>&1 | tail -40
python3 -m benchmarks.bench_block_cache --out "$OUT/block_cache.md" 2>&1 | tail -30
python3 -m pytest benchmarks/bench_kernels.py -q --benchmark-only \
    --benchmark-json "$OUT/pytest_benchmark.json" -p no:cacheprovider 2>&1 | tail -30
