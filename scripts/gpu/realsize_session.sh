#!/usr/bin/env bash
# Everything that needs the 3B stand-in, on one machine (its checkpoint cannot travel): the vision-cache check on
# the freshly built model (while the CPU makes the data), then the real-size training run (train_realsize.sh); packs
# RESULTS/run into RESULTS/realsize.tgz for $OUT. VISION_CHECK=0 skips the check; SFT_BENCH=1 first times the cold
# start with and without batched vision windows (benchmarks/sft_step.py, on the random model). RETRY_ENV (e.g.
# "PARAM_OFFLOAD=False") runs the train stage once more with those variables if it failed; SESSION_STAGES (default
# "build data sft train") picks the steps. Meant for
# scripts/gpu/detached.sh:
#
#   bash scripts/gpu/detached.sh realsize 540 bash scripts/gpu/realsize_session.sh RESULTS ANNOTATIONS [overrides]
set -uo pipefail
RESULTS=${1:?usage: realsize_session.sh RESULTS_DIR ANNOTATIONS_DIR [overrides...]}
ANNOTATIONS=${2:?usage: realsize_session.sh RESULTS_DIR ANNOTATIONS_DIR [overrides...]}
shift 2
cd "$(dirname "$0")/../.."
export WORK=${WORK:-/tmp/svr1_realsize}
PY=${PYTHON:-python3}
mkdir -p "$RESULTS/run"
run=(bash scripts/gpu/train_realsize.sh "$RESULTS/run" "$ANNOTATIONS")
# SESSION_STAGES: which of build, data, sft and train this call runs (e.g. only train again on a warm machine).
SESSION_STAGES=${SESSION_STAGES:-build data sft train}
step() { case " $SESSION_STAGES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
if step build; then STAGES=build "${run[@]}" || exit $?; fi
# The cache check needs any weights, not trained ones: it runs on the random model while the CPU makes the data.
check=
if step build && [ "${VISION_CHECK:-1}" = 1 ]; then
  timeout 420 "$PY" scripts/gpu/vision_cache_check.py --model "$WORK/model" --out "$RESULTS/run/vision_cache.json" \
    > "$RESULTS/run/vision_cache.log" 2>&1 &
  check=$!
fi
if step data; then STAGES=data "${run[@]}"; fi
if [ -n "$check" ]; then
  wait "$check"
  echo "[realsize_session] vision-cache check exited with $?"
  tail -n 30 "$RESULTS/run/vision_cache.log"
fi
if [ "${SFT_BENCH:-0}" = 1 ]; then STAGES=bench "${run[@]}"; fi
if step sft; then
  STAGES=sft "${run[@]}" || exit $?
  # Training starts from the cold start; the random model (16.6 GB at 7B) would only take disk and page cache.
  rm -rf "$WORK/model"
fi
status=0
if step train; then
  STAGES=train "${run[@]}" "$@"
  status=$?
  echo "[realsize_session] training exited with $status"
fi
if step train && [ "$status" != 0 ] && [ -n "${RETRY_ENV:-}" ]; then
  # A second setting on the same machine (the cold start stays in WORK): the failed attempt's files move aside.
  mkdir -p "$RESULTS/run/attempt1"
  for f in grpo.log metrics.jsonl rollouts tensorboard gpu_memory.csv host_memory.csv host_pressure.txt \
    vllm_memory.log command.txt summary.json; do
    if [ -e "$RESULTS/run/$f" ]; then mv "$RESULTS/run/$f" "$RESULTS/run/attempt1/"; fi
  done
  ray stop --force > /dev/null 2>&1 || true
  echo "[realsize_session] retrying the train stage with $RETRY_ENV"
  env $RETRY_ENV STAGES=train "${run[@]}" "$@"
  status=$?
  echo "[realsize_session] retry exited with $status"
fi
tar czf "$RESULTS/realsize.tgz" -C "$RESULTS" run
exit "$status"
