#!/usr/bin/env bash
# Runs a jaxalign command on every host of a Cloud TPU VM slice at once.
#
# Usage:
#   launch/tpu_pod.sh --tpu NAME --zone ZONE [options] -- JAXALIGN_ARGS...
#
# Options:
#   --project ID        gcloud project (default: gcloud's configured one)
#   --create TYPE       create the slice first, e.g. v5p-64 or v5litepod-8
#   --version RUNTIME   TPU VM runtime for --create (default: v2-alpha-tpuv5 for v5p,
#                       v2-alpha-tpuv5-lite for v5e)
#   --spot              with --create: a Spot slice (preemptible; runs resume, see below)
#   --no-sync           skip copying this checkout to the hosts (already there)
#   --remote-dir DIR    where the checkout lives on every host (default: ~/jaxalign)
#   --detach            start training under nohup and return; logs in DIR/train.log per host
#   --dry-run           print the gcloud commands instead of running them
#
# Example (DPO on a v5p-64, 8 hosts; the same command runs on each):
#   launch/tpu_pod.sh --tpu dpo-v5p --zone us-east5-a --create v5p-64 --spot -- \
#     train configs/examples/llama3_8b_dpo_v5p64.yaml --set model.path=/mnt/models/Llama-3-8B-Instruct
#
# Steps: (1) optionally create the slice; (2) copy `git archive HEAD` of this
# checkout to every host and install it with launch/env.sh tpu; (3) run
# `jaxalign JAXALIGN_ARGS...` on all hosts through
# `gcloud compute tpus tpu-vm ssh --worker=all`. jax finds the other hosts by
# itself on a TPU VM: no coordinator flags. Preempted or failed? Run the same
# command again (with --no-sync): training resumes from the latest checkpoint.
set -euo pipefail

usage() { awk 'NR == 1 { next } /^#SBATCH/ || !/^#/ { exit } { sub(/^# ?/, ""); print }' "$0"; }

# shellcheck disable=SC2088  # the tilde is for the remote shell to expand
tpu="" zone="" project="" create="" version="" spot=0 sync=1 remote_dir="~/jaxalign" detach=0 dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu) tpu=$2; shift 2 ;;
    --zone) zone=$2; shift 2 ;;
    --project) project=$2; shift 2 ;;
    --create) create=$2; shift 2 ;;
    --version) version=$2; shift 2 ;;
    --spot) spot=1; shift ;;
    --no-sync) sync=0; shift ;;
    --remote-dir) remote_dir=$2; shift 2 ;;
    --detach) detach=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "tpu_pod.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
if [[ -z "$tpu" || -z "$zone" || $# -eq 0 ]]; then
  echo "tpu_pod.sh: --tpu, --zone and a jaxalign command after -- are required" >&2
  usage >&2
  exit 2
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
common=(--zone "$zone")
[[ -n "$project" ]] && common+=(--project "$project")

run() {
  if ((dry_run)); then
    printf '%q ' "$@"
    echo
  else
    "$@"
  fi
}

on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$tpu" "${common[@]}" --worker=all --command "$1"
}

if [[ -n "$create" ]]; then
  if [[ -z "$version" ]]; then
    case "$create" in
      v5litepod-* | v5e-*) version=v2-alpha-tpuv5-lite ;;
      v5p-*) version=v2-alpha-tpuv5 ;;
      *) echo "tpu_pod.sh: pass --version for accelerator type $create" >&2; exit 2 ;;
    esac
  fi
  create_args=(--accelerator-type "$create" --version "$version")
  ((spot)) && create_args+=(--spot)
  run gcloud compute tpus tpu-vm create "$tpu" "${common[@]}" "${create_args[@]}"
fi

if ((sync)); then
  archive=$(mktemp -t jaxalign-XXXXXX.tar.gz)
  trap 'rm -f "$archive"' EXIT
  run git -C "$repo" archive --format=tar.gz --prefix=jaxalign/ -o "$archive" HEAD
  run gcloud compute tpus tpu-vm scp "$archive" "$tpu:/tmp/jaxalign.tar.gz" "${common[@]}" --worker=all
  # The remote dir's parent gets the archive's jaxalign/ folder; env.sh installs it (idempotent).
  on_all_workers "mkdir -p $remote_dir && tar -xzf /tmp/jaxalign.tar.gz -C $remote_dir --strip-components=1 && bash $remote_dir/launch/env.sh tpu"
fi

# The jaxalign arguments, quoted once for the remote shell.
printf -v jaxalign_args '%q ' "$@"
train="cd $remote_dir && export JAXALIGN_SKIP_INSTALL=1 && source launch/env.sh tpu && jaxalign $jaxalign_args"
if ((detach)); then
  # nohup: the run survives the ssh session; every host writes its own log.
  on_all_workers "cd $remote_dir && nohup bash -c $(printf '%q' "$train") > train.log 2>&1 < /dev/null &"
  echo "tpu_pod.sh: started on every host of $tpu; logs: $remote_dir/train.log on each host" >&2
else
  on_all_workers "$train"
fi
