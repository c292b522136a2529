#!/usr/bin/env bash
# The GPU machine's run (device tool, H100/H200; from the repo root, carry .whl/kernels for the
# peers): GPU tests of the aligners and kernels, all seven aligners profiled at Flickr30K-test
# scale, and the fused-kernel benchmark. Logs and tables → $OUT (or ./runs/gpu_run).
#   bash benchmarks/gpu_run.sh                                  # everything
#   STEPS=tests,kernels SIZES=tiny,flickr30k bash benchmarks/gpu_run.sh
# Knobs: STEPS (tests,profile,kernels), SIZES, TILES / BT (extra tiles, see kernels.py --help),
# TEST_S / PROFILE_S / BENCH_S (time limits, s).
set -o pipefail
OUT=${OUT:-runs/gpu_run}
STEPS=${STEPS:-tests,profile,kernels}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD PYTHONUNBUFFERED=1
if ls .whl/kernels/*.whl >/dev/null 2>&1; then  # peers and POT/geomloss, carried as wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/kernels/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv;
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } 2>&1 | tee "$OUT/env.txt"
step() { [[ ",$STEPS," == *",$1,"* ]]; }
if step tests; then
  timeout "${TEST_S:-120}" python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels/test_gpu.py \
    tests/aligners/test_validation.py 2>&1 | tee "$OUT/gpu_tests.log"
fi
if step profile; then
  timeout "${PROFILE_S:-200}" python3 benchmarks/profile_aligners.py --budget 3 --repeats 10 --warmup 2 \
    --out "$OUT/profile" 2>&1 | tee "$OUT/profile.log"
fi
if step kernels; then
  timeout "${BENCH_S:-150}" python3 benchmarks/kernels.py --sizes "${SIZES:-flickr30k}" --repeats 5 \
    --tiles "${TILES:-}" --sinkhorn-bt "${BT:-}" --out "$OUT/kernels" 2>&1 | tee "$OUT/kernels.log"
fi
