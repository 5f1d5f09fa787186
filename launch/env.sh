#!/usr/bin/env bash
# One environment for every launcher: a virtualenv with jaxalign and the jax
# build for the platform, plus the XLA/JAX variables that platform wants.
#
# Usage:
#   source launch/env.sh [tpu|gpu|cpu]   install if needed, activate, export variables
#   bash launch/env.sh [tpu|gpu|cpu]     install only (e.g. once per host)
#
# Platform: the argument, else $JAXALIGN_PLATFORM, else guessed (TPU chips, nvidia-smi, CPU).
# Environment knobs (all optional):
#   JAXALIGN_VENV          virtualenv folder (default: <repo>/.venv)
#   JAXALIGN_SKIP_INSTALL  1 = use the virtualenv as it is (e.g. a container image)
#   JAX_CUDA_EXTRA         jax's CUDA extra for GPUs (default: cuda12)
#   JAXALIGN_CPU_DEVICES   fake CPU devices for trying meshes out on a laptop (default: 1)
# Variables already set in the caller's environment are never overwritten.

_jaxalign_usage() {
  awk 'NR == 1 { next } /^#SBATCH/ || !/^#/ { exit } { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"
}

_jaxalign_platform() {
  if [[ -n "${1:-}" ]]; then
    echo "$1"
  elif [[ -n "${JAXALIGN_PLATFORM:-}" ]]; then
    echo "$JAXALIGN_PLATFORM"
  elif [[ -e /dev/accel0 || -e /dev/vfio/0 ]]; then
    echo tpu
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo gpu
  else
    echo cpu
  fi
}

# Runs in a subshell with strict mode, so sourcing this file never changes the
# caller's shell options.
_jaxalign_install() (
  set -euo pipefail
  local repo=$1 venv=$2 platform=$3 jax_version jax_package
  jax_version=$(sed -n 's/^ *"jax==\([^"]*\)",.*/\1/p' "$repo/pyproject.toml")
  [[ -n "$jax_version" ]] || { echo "env.sh: no jax pin found in $repo/pyproject.toml" >&2; exit 1; }
  case "$platform" in
    tpu) jax_package="jax[tpu]==$jax_version" ;;
    gpu) jax_package="jax[${JAX_CUDA_EXTRA:-cuda12}]==$jax_version" ;;
    cpu) jax_package="jax==$jax_version" ;;
    *) echo "env.sh: unknown platform '$platform' (tpu, gpu or cpu)" >&2; exit 2 ;;
  esac
  if [[ ! -x "$venv/bin/python" ]]; then
    echo "env.sh: creating $venv" >&2
    python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  # The same pins as pyproject.toml; the extra only adds the platform's plugin (libtpu, CUDA).
  "$venv/bin/python" -m pip install --quiet -e "$repo" "$jax_package"
  echo "env.sh: $venv has jaxalign and $jax_package" >&2
)

_jaxalign_exports() {
  local platform=$1
  export JAXALIGN_PLATFORM="$platform"
  export PYTHONUNBUFFERED=1  # logs from every host arrive as they happen
  case "$platform" in
    tpu)
      # libtpu takes XLA TPU flags from LIBTPU_INIT_ARGS (left as the caller set it).
      export TPU_STDERR_LOG_LEVEL="${TPU_STDERR_LOG_LEVEL:-2}"
      ;;
    gpu)
      # jax preallocates 75% of GPU memory by default; the planner's budget assumes ~95%.
      export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}"
      # Overlap the fsdp all-gathers and reduce-scatters with compute.
      export XLA_FLAGS="${XLA_FLAGS:---xla_gpu_enable_latency_hiding_scheduler=true}"
      export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
      ;;
    cpu)
      export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
      export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=${JAXALIGN_CPU_DEVICES:-1}}"
      ;;
  esac
}

_jaxalign_env_main() {
  local arg=${1:-}
  if [[ "$arg" == "-h" || "$arg" == "--help" ]]; then
    _jaxalign_usage
    return 0
  fi
  local repo venv platform
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  venv=${JAXALIGN_VENV:-$repo/.venv}
  platform=$(_jaxalign_platform "$arg")
  if [[ "${JAXALIGN_SKIP_INSTALL:-0}" != 1 ]]; then
    _jaxalign_install "$repo" "$venv" "$platform" || return $?
  fi
  _jaxalign_exports "$platform"
  if [[ -f "$venv/bin/activate" ]]; then
    # shellcheck disable=SC1091  # created at run time
    source "$venv/bin/activate"
  fi
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
  _jaxalign_env_main "$@"
else
  _jaxalign_env_main "$@"
fi
