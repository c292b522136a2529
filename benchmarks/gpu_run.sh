#!/usr/bin/env bash
# The session's one GPU run (device tool, H100/H200): GPU tests of the aligners and kernels, all
# seven aligners profiled at Flickr30K-test scale, and the fused-kernel benchmark. Logs → $OUT.
#   bash benchmarks/gpu_run.sh          (from the repo root; carry .whl/kernels for the peers)
set -o pipefail
OUT=${OUT:-runs/gpu_run}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD PYTHONUNBUFFERED=1
if ls .whl/kernels/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/kernels/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv;
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } 2>&1 | tee "$OUT/env.txt"
timeout 90 python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels/test_gpu.py tests/aligners/test_validation.py 2>&1 | tee "$OUT/gpu_tests.log"
timeout 200 python3 benchmarks/profile_aligners.py --budget 3 --repeats 10 --warmup 2 --out "$OUT/profile" 2>&1 | tee "$OUT/profile.log"
timeout 90 python3 benchmarks/kernels.py --sizes flickr30k --repeats 5 --out "$OUT/kernels" 2>&1 | tee "$OUT/kernels.log"
