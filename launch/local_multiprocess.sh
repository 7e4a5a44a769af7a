#!/usr/bin/env bash
# Runs COMMAND in NUM_PROCESSES local processes that form one multi-process JAX job, wired to a
# coordinator on 127.0.0.1 through the AUDIOLM_JAX_* variables (audiolm_jax/train/distributed.py).
#
#   launch/local_multiprocess.sh [--dry-run] NUM_PROCESSES COMMAND [ARGS...]
#   launch/local_multiprocess.sh 2 audiolm-jax train-codec --config=configs/codec/tiny_cnn.py \
#       --workdir=runs/mp
#
# Waits for all of them; if one fails, the others are stopped (SIGTERM, then SIGKILL after
# $KILL_GRACE seconds) and its exit status is returned. SIGTERM/SIGINT sent to this script are
# passed on to every process (a preemption: each checkpoints and exits with status 75).
# Environment: DRY_RUN=1 (same as --dry-run) prints the commands instead of running them;
# AUDIOLM_JAX_PORT picks the coordinator port (default: a free one).
set -euo pipefail

DRY_RUN="${DRY_RUN:-0}"
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
if [[ $# -lt 2 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 [--dry-run] NUM_PROCESSES COMMAND [ARGS...]" >&2
  exit 2
fi
NUM_PROCESSES="$1"; shift
KILL_GRACE="${KILL_GRACE:-10}"
PORT="${AUDIOLM_JAX_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"

if [[ "$DRY_RUN" == 1 ]]; then
  for ((i = 0; i < NUM_PROCESSES; i++)); do
    printf 'AUDIOLM_JAX_COORDINATOR=127.0.0.1:%s AUDIOLM_JAX_NUM_PROCESSES=%s AUDIOLM_JAX_PROCESS_ID=%s' \
      "$PORT" "$NUM_PROCESSES" "$i"
    printf ' %q' "$@"
    printf ' &\n'
  done
  echo "wait"
  exit 0
fi

pids=()
stop_all() {  # $1: signal for the first round
  local pid
  for pid in "${pids[@]}"; do kill "-$1" "$pid" 2>/dev/null || true; done
}
on_signal() {  # pass a preemption/interrupt on and let the processes finish their checkpoint
  trap - TERM INT
  stop_all "$1"
  local status=0
  for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
  exit "$status"
}
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT

for ((i = 0; i < NUM_PROCESSES; i++)); do
  AUDIOLM_JAX_COORDINATOR="127.0.0.1:$PORT" AUDIOLM_JAX_NUM_PROCESSES="$NUM_PROCESSES" \
    AUDIOLM_JAX_PROCESS_ID="$i" "$@" &
  pids+=("$!")
done

# Poll rather than `wait -n`, which needs bash >= 5.1 to say *which* process ended.
running=("${pids[@]}")
while ((${#running[@]} > 0)); do
  still=()
  for pid in "${running[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then still+=("$pid"); continue; fi
    status=0
    wait "$pid" || status=$?
    if ((status != 0)); then
      echo "local_multiprocess: process $pid exited with status $status; stopping the others" >&2
      stop_all TERM
      for ((t = 0; t < KILL_GRACE * 10; t++)); do
        alive=0
        for p in "${pids[@]}"; do if kill -0 "$p" 2>/dev/null; then alive=1; fi; done
        ((alive)) || break
        sleep 0.1
      done
      stop_all KILL
      wait || true
      exit "$status"
    fi
  done
  running=("${still[@]+"${still[@]}"}")
  ((${#running[@]} == 0)) || sleep 0.2
done
exit 0
