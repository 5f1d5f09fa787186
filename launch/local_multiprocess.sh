#!/usr/bin/env bash
# Runs one jaxalign command as N cooperating CPU processes on this machine, the
# way a pod runs it on N hosts: each process gets fake CPU devices, they meet
# at a coordinator on 127.0.0.1 and talk over gloo. For trying out multi-host
# behaviour (sharded data, checkpoints, resume with another process count).
#
# Usage:
#   launch/local_multiprocess.sh [-n PROCESSES] [-d DEVICES] [-p PORT] [-l LOG_DIR] -- JAXALIGN_ARGS...
#
#   -n  processes (default 2)
#   -d  fake CPU devices per process (default 2)
#   -p  coordinator port (default: a free one)
#   -l  folder for process_<i>.log (default: a new temporary folder)
#
# Example (the quickstart reward model on 2 processes x 2 devices = a 4-device mesh):
#   launch/local_multiprocess.sh -n 2 -d 2 -- train configs/quickstart/rm.yaml --set max_steps=20
#
# Process 0's output is shown; every process's goes to its log. Ctrl-C or
# SIGTERM is passed to all of them (they save a checkpoint and exit). Exits with
# the first non-zero status of any process.
set -euo pipefail

usage() { awk 'NR == 1 { next } /^#SBATCH/ || !/^#/ { exit } { sub(/^# ?/, ""); print }' "$0"; }

if [[ "${1:-}" == "--help" ]]; then
  usage
  exit 0
fi
processes=2
devices=2
port=""
log_dir=""
while getopts "n:d:p:l:h" option; do
  case "$option" in
    n) processes=$OPTARG ;;
    d) devices=$OPTARG ;;
    p) port=$OPTARG ;;
    l) log_dir=$OPTARG ;;
    h) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[[ "${1:-}" == "--" ]] && shift
if [[ $# -eq 0 ]]; then
  usage >&2
  exit 2
fi
if ! [[ "$processes" =~ ^[1-9][0-9]*$ && "$devices" =~ ^[1-9][0-9]*$ ]]; then
  echo "local_multiprocess.sh: -n and -d take positive integers" >&2
  exit 2
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
if ! "$python" -c "import jaxalign" 2>/dev/null; then
  # shellcheck source=launch/env.sh
  source "$repo/launch/env.sh" cpu
  python=python
fi
port=${port:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
log_dir=${log_dir:-$(mktemp -d -t jaxalign-local-XXXXXX)}
mkdir -p "$log_dir"

pids=()
# shellcheck disable=SC2317  # called by the trap below
stop_all() {
  echo "local_multiprocess.sh: stopping all processes (SIGTERM)" >&2
  kill -TERM "${pids[@]}" 2>/dev/null || true
}
trap stop_all INT TERM

echo "local_multiprocess.sh: $processes processes x $devices CPU devices, coordinator 127.0.0.1:$port, logs in $log_dir" >&2
for ((index = 0; index < processes; index++)); do
  JAX_PLATFORMS=cpu XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices" \
    "$python" -m jaxalign.cli "$@" --coordinator "127.0.0.1:$port" --num-processes "$processes" \
    --process-id "$index" >"$log_dir/process_$index.log" 2>&1 &
  pids+=("$!")
done

tail -n +1 -f "$log_dir/process_0.log" &
tail_pid=$!

status=0
for pid in "${pids[@]}"; do
  # `wait` returns early when a trapped signal arrives; wait again until the process is gone.
  while true; do
    code=0
    wait "$pid" || code=$?
    if kill -0 "$pid" 2>/dev/null; then
      continue
    fi
    break
  done
  if [[ $code -ne 0 && $status -eq 0 ]]; then
    status=$code
  fi
done
kill "$tail_pid" 2>/dev/null || true
wait "$tail_pid" 2>/dev/null || true
if [[ $status -ne 0 ]]; then
  echo "local_multiprocess.sh: a process exited with status $status; see $log_dir" >&2
fi
exit "$status"
