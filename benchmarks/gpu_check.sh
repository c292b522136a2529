#!/usr/bin/env bash
# One short device check of the fused kernels (run from the repo root on the GPU machine):
#   GPU tests, then the benchmark at a few sizes. Logs go to $OUT (or ./runs/gpu_check).
#   SIZES / TILES / BT / BENCH_S override the defaults.
set -o pipefail
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD PYTHONUNBUFFERED=1
# Peers (pure-Python wheels) when carried in .whl/kernels.
if ls .whl/kernels/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/kernels/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv;
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } 2>&1 | tee "$OUT/env.txt"
timeout "${TEST_S:-60}" python3 -m pytest -q -p no:cacheprovider tests/kernels/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.log"
timeout "${BENCH_S:-100}" python3 benchmarks/kernels.py --sizes "${SIZES:-tiny,flickr30k}" --repeats 5 \
  --tiles "${TILES:-1,4,64,4,3;1,4,64,4,4;2,4,64,8,2;2,8,64,8,3;1,8,64,8,3;2,4,32,8,4}" --sinkhorn-bt "${BT:-2:4,1:4,4:8}" \
  --out "$OUT" 2>&1 | tee "$OUT/bench.log"
