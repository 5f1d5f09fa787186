#!/usr/bin/env bash
# Submits a jaxalign run to a GKE TPU cluster with xpk (which writes a JobSet
# like launch/gke_jobset.yaml: one pod per host, the same command on each).
#
# Usage:
#   launch/gke_xpk.sh --cluster NAME --image IMAGE [--tpu-type v5p-64] [--slices 1]
#                     [--workload NAME] [--max-restarts 3] [--project ID] [--zone ZONE]
#                     [--dry-run] -- JAXALIGN_ARGS...
#
# IMAGE holds this repository at /app with `bash launch/env.sh tpu` run at build time.
#
# Example:
#   launch/gke_xpk.sh --cluster tpu-cluster --image us-docker.pkg.dev/p/jaxalign/jaxalign:latest \
#     --tpu-type v5p-64 -- train configs/examples/llama3_8b_dpo_v5p64.yaml
#
# --max-restarts: xpk recreates every pod after a failure or preemption; the run
# resumes from its latest checkpoint (put checkpoint.dir on gs://).
set -euo pipefail

usage() { awk 'NR == 1 { next } /^#SBATCH/ || !/^#/ { exit } { sub(/^# ?/, ""); print }' "$0"; }

cluster="" image="" tpu_type=v5p-64 slices=1 workload="jaxalign-$(date +%m%d-%H%M%S)" max_restarts=3
project="" zone="" dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cluster) cluster=$2; shift 2 ;;
    --image) image=$2; shift 2 ;;
    --tpu-type) tpu_type=$2; shift 2 ;;
    --slices) slices=$2; shift 2 ;;
    --workload) workload=$2; shift 2 ;;
    --max-restarts) max_restarts=$2; shift 2 ;;
    --project) project=$2; shift 2 ;;
    --zone) zone=$2; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "gke_xpk.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
if [[ -z "$cluster" || -z "$image" || $# -eq 0 ]]; then
  echo "gke_xpk.sh: --cluster, --image and a jaxalign command after -- are required" >&2
  usage >&2
  exit 2
fi

printf -v jaxalign_args '%q ' "$@"
command=(xpk workload create --cluster "$cluster" --workload "$workload" --tpu-type "$tpu_type"
  --num-slices "$slices" --docker-image "$image" --max-restarts "$max_restarts"
  --command "cd /app && export JAXALIGN_SKIP_INSTALL=1 && source launch/env.sh tpu && jaxalign $jaxalign_args")
[[ -n "$project" ]] && command+=(--project "$project")
[[ -n "$zone" ]] && command+=(--zone "$zone")
if ((dry_run)); then
  printf '%q ' "${command[@]}"
  echo
else
  "${command[@]}"
fi
