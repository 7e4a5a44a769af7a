#!/usr/bin/env bash
# Cloud TPU VM slice: create it, install audiolm_jax on every worker, run the same audiolm-jax
# command on all workers at once, delete it.
#
#   launch/tpu_pod.sh [--dry-run] STAGE [AUDIOLM_JAX_ARGS...]
#   STAGE: create | install | run | delete | all (create, install, run, then delete even if run
#          failed)
#
#   TPU_NAME=ss-pod ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 \
#     launch/tpu_pod.sh all train-codec --config=configs/codec/soundstream.py \
#       --workdir=gs://my-bucket/runs/ss
#
# Every worker runs the command; JAX finds the slice's coordinator itself
# (AUDIOLM_JAX_DISTRIBUTED=auto -> jax.distributed.initialize()). The workdir must be a gs://
# path that all workers share (orbax writes checkpoints to it collectively); a local path would
# leave each worker with a piece of the checkpoint, so it is refused.
#
# Environment: TPU_NAME (required), ZONE (required), ACCELERATOR_TYPE (default v4-8),
# RUNTIME_VERSION (default tpu-ubuntu2204-base), PROJECT (default: gcloud's), SPOT=1 for spot
# capacity, SRC (checkout copied to the workers, default: this repository),
# EXTRA_PIP (default "jax[tpu]"), DRY_RUN=1 (same as --dry-run: print the commands only).
set -euo pipefail

DRY_RUN="${DRY_RUN:-0}"
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
STAGE="${1:-}"
[[ $# -gt 0 ]] && shift
case "$STAGE" in
  create|install|run|delete|all) ;;
  *) echo "usage: $0 [--dry-run] create|install|run|delete|all [AUDIOLM_JAX_ARGS...]" >&2; exit 2 ;;
esac
: "${TPU_NAME:?set TPU_NAME (the TPU VM name)}"
: "${ZONE:?set ZONE (e.g. us-central2-b)}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
SRC="${SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
EXTRA_PIP="${EXTRA_PIP:-jax[tpu]}"
COMMON=(--zone="$ZONE")
[[ -n "${PROJECT:-}" ]] && COMMON+=(--project="$PROJECT")

run_cmd() {  # prints the command; runs it unless dry-run
  printf '+'; printf ' %q' "$@"; printf '\n'
  [[ "$DRY_RUN" == 1 ]] || "$@"
}

create() {
  local extra=()
  [[ "${SPOT:-0}" == 1 ]] && extra+=(--spot)
  run_cmd gcloud compute tpus tpu-vm create "$TPU_NAME" "${COMMON[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" "${extra[@]+"${extra[@]}"}"
}

install() {
  run_cmd gcloud compute tpus tpu-vm scp --recurse "$SRC" "$TPU_NAME":audiolm_jax \
    --worker=all "${COMMON[@]}"
  run_cmd gcloud compute tpus tpu-vm ssh "$TPU_NAME" --worker=all "${COMMON[@]}" \
    --command="pip install -U '$EXTRA_PIP' && pip install -e ~/audiolm_jax"
}

run() {
  if [[ $# -eq 0 ]]; then echo "$0 run: give the audiolm-jax arguments" >&2; exit 2; fi
  local arg workdir=""
  for arg in "$@"; do [[ "$arg" == --workdir=* ]] && workdir="${arg#--workdir=}"; done
  if [[ -n "$workdir" && "$workdir" != gs://* ]]; then
    echo "$0 run: --workdir must be a gs:// path shared by all workers, got '$workdir'" >&2
    exit 2
  fi
  local quoted
  quoted="$(printf ' %q' "$@")"
  run_cmd gcloud compute tpus tpu-vm ssh "$TPU_NAME" --worker=all "${COMMON[@]}" \
    --command="cd ~/audiolm_jax && AUDIOLM_JAX_DISTRIBUTED=auto audiolm-jax${quoted}"
}

delete() {
  run_cmd gcloud compute tpus tpu-vm delete "$TPU_NAME" "${COMMON[@]}" --quiet
}

case "$STAGE" in
  create) create ;;
  install) install ;;
  run) run "$@" ;;
  delete) delete ;;
  all)
    create
    trap delete EXIT  # the slice costs money: delete it however the run ends
    install
    run "$@"
    ;;
esac
