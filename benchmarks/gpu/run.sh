#!/usr/bin/env bash
# The GPU suite on a lent device, in one command (device tool: `bash benchmarks/gpu/run.sh`, carry [".whl"]).
#
# Here, once: `python -m benchmarks.gpu.manifest --download` fills .whl/ with what the image lacks (wheels.txt).
# There: the wheels go to /tmp/site, the checkout and /tmp/site go on PYTHONPATH against the image's own jax
# (0.11.2 with CUDA), the suite writes its sections into BENCHMARKS.md, and BENCHMARKS.md, the suite's log and
# the machine's facts are copied under $OUT. The suite's runs have their own limits; the whole stays under
# SUITE_LIMIT_S (default 470 s), so the call ends inside 8 minutes with what finished.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/jaxemo_gpu_out}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python3}"

if compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || { echo "installing the carried wheels failed" | tee "$OUT/error.txt"; exit 1; }
else
  echo "no .whl/: run 'python -m benchmarks.gpu.manifest --download' here and carry .whl" | tee "$OUT/error.txt"
fi
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # each run is its own process; none should hold the whole card

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  "$PYTHON" -c "import sys, jax; print(sys.version.split()[0], 'jax', jax.__version__, jax.devices())" 2>&1
  # jaxemo pins flax <0.13, optax <0.3, orbax-checkpoint <0.13 (pyproject); the image's own are used as they are
  "$PYTHON" -m pip list 2>/dev/null | grep -iE "^(flax|optax|orbax-checkpoint|numpy|ml.dtypes|chex) "
} | tee "$OUT/machine.txt"
"$PYTHON" -m benchmarks.gpu.manifest --check 2>&1 | tee "$OUT/manifest_check.txt"

timeout "${SUITE_LIMIT_S:-470}" "$PYTHON" -m benchmarks.gpu_suite "$@" 2>&1 | tee "$OUT/gpu_suite.log"
status=${PIPESTATUS[0]}
cp BENCHMARKS.md "$OUT/BENCHMARKS.md"
echo "gpu_suite exit status: $status" | tee -a "$OUT/gpu_suite.log"
exit "$status"
