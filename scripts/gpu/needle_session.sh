#!/usr/bin/env bash
# The needle runs (scripts/gpu/needle_grpo.sh) as one train stage spanning several device calls, so the two
# GRPO runs start once (about 2.5 minutes of Ray, FSDP and vLLM start-up) instead of once per 10-minute call.
#
#   bash scripts/gpu/needle_session.sh start  OUT_DIR [hydra overrides...]   # copy the repo to /tmp, start `train` detached
#   bash scripts/gpu/needle_session.sh wait   OUT_DIR   # attach for at most WAIT_S, write the curves so far
#   bash scripts/gpu/needle_session.sh report OUT_DIR   # wait for the end of `train`, then the report stage
#
# `start` expects WORK (default /tmp/svr1_needle) prepared by `STAGE=prepare` (here or carried from another
# machine: its paths must be the same). The train stage stops TRAIN_S seconds after `start` (DEADLINE_AT).
# If the machine kills what a call leaves running (scripts/gpu/detached.sh exits 3), `wait` falls back to a
# foreground train stage of CALL_S seconds that resumes from the last checkpoint.
# Knobs: TRAIN_S (1330), WAIT_S (585), CALL_S (570), REPORT_S (200); needle_grpo.sh's knobs pass through.
set -uo pipefail
PY=${PYTHON:-python3}
PHASE=${1:?usage: needle_session.sh start|wait|report OUT_DIR}
OUT=$(mkdir -p "${2:?usage: needle_session.sh start|wait|report OUT_DIR}" && cd "$2" && pwd)
REPO=/tmp/svr1_repo
export WORK=${WORK:-/tmp/svr1_needle}
export PYTHONPATH=/tmp/site:$REPO VLLM_USE_FLASHINFER_SAMPLER=0
TRAIN_OUT=$WORK/train_out

curves() {  # the curves so far of every run (each arm at each of RL_SEEDS), and the stacks of any stall
  local runs=() run
  for run in "$WORK"/runs/*/; do [ -d "$run" ] && runs+=(--run "$(basename "$run")=$run"); done
  [ ${#runs[@]} -gt 0 ] && { (cd "$REPO" && "$PY" scripts/plot_needle_curves.py "${runs[@]}" --out "$OUT") || echo "plotting failed"; }
  for stall in "$WORK"/runs/*/stall_*.txt; do
    [ -f "$stall" ] && cp "$stall" "$OUT/$(basename "$(dirname "$stall")")_$(basename "$stall")"
  done
}

case $PHASE in
  start)
    # The detached job must not depend on this call's copy of the working tree.
    rm -rf "$REPO" && mkdir -p "$REPO"
    tar --exclude=./.gpu --exclude=./.git --exclude=./.cache -cf - . | tar -xf - -C "$REPO"
    cd "$REPO"
    bash scripts/gpu/detached.sh needle "${WAIT_S:-420}" env STAGE=train \
      DEADLINE_AT=$(($(date +%s) + ${TRAIN_S:-1330})) bash scripts/gpu/needle_grpo.sh "$TRAIN_OUT" "${@:3}"
    ;;
  wait)
    cd "$REPO"
    bash scripts/gpu/detached.sh needle "${WAIT_S:-585}"
    if [ $? = 3 ]; then
      echo "the detached train stage was killed; resuming it in this call"
      STAGE=train DEADLINE_S=${CALL_S:-570} bash scripts/gpu/needle_grpo.sh "$TRAIN_OUT"
    fi
    curves
    ;;
  report)
    cd "$REPO"
    bash scripts/gpu/detached.sh needle "${WAIT_S:-300}"
    cp /tmp/detached/needle/log "$WORK/train_stage.log" 2>/dev/null || true  # packed into needle_runs.tgz
    STAGE=report DEADLINE_S=${REPORT_S:-200} PACK_S=${PACK_S:-25} bash scripts/gpu/needle_grpo.sh "$OUT"
    ;;
  *)
    echo "unknown phase $PHASE (start, wait or report)" >&2
    exit 2
    ;;
esac
