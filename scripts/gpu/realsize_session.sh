#!/usr/bin/env bash
# Everything that needs the 3B stand-in, on one machine (its checkpoint cannot travel): the vision-cache check on
# the freshly built model (while the CPU makes the data), then the real-size training run (train_realsize.sh); packs
# RESULTS/run into RESULTS/realsize.tgz for $OUT. VISION_CHECK=0 skips the check; SFT_BENCH=1 first times the cold
# start with and without batched vision windows (benchmarks/sft_step.py, on the random model). RETRY_ENV (e.g.
# "PARAM_OFFLOAD=False") runs the train stage once more with those variables if it failed. Meant for
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
STAGES=build "${run[@]}" || exit $?
# The cache check needs any weights, not trained ones: it runs on the random model while the CPU makes the data.
check=
if [ "${VISION_CHECK:-1}" = 1 ]; then
  timeout 420 "$PY" scripts/gpu/vision_cache_check.py --model "$WORK/model" --out "$RESULTS/run/vision_cache.json" \
    > "$RESULTS/run/vision_cache.log" 2>&1 &
  check=$!
fi
STAGES=data "${run[@]}"
if [ -n "$check" ]; then
  wait "$check"
  echo "[realsize_session] vision-cache check exited with $?"
  tail -n 30 "$RESULTS/run/vision_cache.log"
fi
[ "${SFT_BENCH:-0}" = 1 ] && STAGES=bench "${run[@]}"
STAGES=sft "${run[@]}" || exit $?
# Training starts from the cold start; the random model's copy (16.6 GB at 7B) would only take disk and page cache.
rm -rf "$WORK/model"
STAGES=train "${run[@]}" "$@"
status=$?
echo "[realsize_session] training exited with $status"
if [ "$status" != 0 ] && [ -n "${RETRY_ENV:-}" ]; then
  # A second setting on the same machine (the cold start stays in WORK): the failed attempt's files move aside.
  mkdir -p "$RESULTS/run/attempt1"
  for f in grpo.log metrics.jsonl rollouts gpu_memory.csv host_memory.csv vllm_memory.log command.txt summary.json; do
    [ -e "$RESULTS/run/$f" ] && mv "$RESULTS/run/$f" "$RESULTS/run/attempt1/"
  done
  ray stop --force > /dev/null 2>&1 || true
  echo "[realsize_session] retrying the train stage with $RETRY_ENV"
  env $RETRY_ENV STAGES=train "${run[@]}" "$@"
  status=$?
  echo "[realsize_session] retry exited with $status"
fi
tar czf "$RESULTS/realsize.tgz" -C "$RESULTS" run
exit "$status"
