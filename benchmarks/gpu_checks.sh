#!/usr/bin/env bash
# Every GPU check of issue 20 in one run, since a lent GPU's time is short (3 min 47 s on an H200
# on 2026-12-04, most of it compiling):
#   1. the Pallas kernel (compiled by Triton) and the cuDNN backend against the exact
#      attention, values and gradients (tests/test_attention_gpu.py);
#   2. model-FLOPs utilisation of a DPO step on a 0.96B Llama in bfloat16 (gpu_mfu.py);
#   3. every attention backend's time on packed DPO rows (attention_backends.py).
# Each part has its own time limit, so one that hangs does not cost the others; each log
# goes to OUTDIR (default gpu-checks/).
#
# Usage, from the repository root on a machine with a GPU and jax's CUDA plugin:
#     benchmarks/gpu_checks.sh [OUTDIR]
# (PYTHON, GPU_MFU_ARGS and ATTENTION_ARGS override the interpreter and the benchmarks' arguments:
# JAX_PLATFORMS=cpu with small GPU_MFU_ARGS and ATTENTION_ARGS smoke-tests this script on a CPU.)
set -u
out=${1:-gpu-checks}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 JAX_PLATFORMS=${JAX_PLATFORMS:-cuda} PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
python=${PYTHON:-python3}

part() {  # part NAME SECONDS COMMAND...: run with a limit, log to OUTDIR/NAME.log, say how it ended
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    echo "=== $name (limit ${limit} s)"
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
    local status=${PIPESTATUS[0]}
    echo "=== $name: exit $status after $((SECONDS - start)) s" | tee -a "$out/$name.log"
}

part environment 60 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv;
    $python -c 'import jax, jaxlib, flax, optax, orbax.checkpoint as ocp, grain, transformers;
print(\"jax\", jax.__version__, \"jaxlib\", jaxlib.__version__, \"flax\", flax.__version__, \"optax\", optax.__version__,
      \"orbax\", ocp.__version__, \"transformers\", transformers.__version__); print(jax.devices())'"
part kernel_tests 120 "$python" -m pytest tests/test_attention_gpu.py --noconftest -n 0 -q -p no:cacheprovider
part gpu_mfu 240 "$python" benchmarks/gpu_mfu.py ${GPU_MFU_ARGS:-}
part attention_backends 150 "$python" benchmarks/attention_backends.py \
    ${ATTENTION_ARGS:---dtype bfloat16 --lengths 1024 2048 4096 --repeats 5}
