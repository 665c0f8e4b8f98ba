#!/usr/bin/env bash
# The GPU checks in one run, on a machine with CUDA: the device, the CUDA tests, then gpu_throughput.py.
#
#     benchmarks/gpu_check.sh [OUTDIR]        (default: $OUT, else benchmarks/)
#
# Where the machine's Python lacks some of the project's pure dependencies (an image with torch and timm but
# no pycocotools or datasets), put their wheels in .whl/ first (pip download on a networked machine); they are
# installed into a private folder, never into the machine's environment. Each step has a time limit, so one
# run fits a short lease; what a step printed is kept in OUTDIR even when a later step fails.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-benchmarks}}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    site="$(mktemp -d)"
    python3 -m pip install --quiet --no-index --no-deps --target "$site" .whl/*.whl
    export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu_check_device.txt"
python3 -c "import torch, timm, pyarrow; print('torch', torch.__version__, 'timm', timm.__version__,
    'pyarrow', pyarrow.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$out/gpu_check_device.txt"
mapfile -t gpu_tests < <(grep -l 'pytest.mark.gpu' tests/test_*.py)  # every test file with a CUDA test
timeout "${GPU_TESTS_S:-240}" python3 -m pytest -q -m gpu -p no:cacheprovider --continue-on-collection-errors \
    "${gpu_tests[@]}" 2>&1 | tee "$out/gpu_check_tests.txt" | tail -30
tests=${PIPESTATUS[0]}
PYTHONUNBUFFERED=1 timeout "${GPU_BENCH_S:-300}" python3 benchmarks/gpu_throughput.py \
    --out "$out/gpu_throughput.json" > "$out/gpu_check_throughput.txt" 2>&1
bench=$?
tail -60 "$out/gpu_check_throughput.txt"
echo "gpu tests: exit $tests; gpu_throughput: exit $bench"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
