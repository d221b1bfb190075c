#!/usr/bin/env bash
# Everything that needs the 3B stand-in, on one machine (its checkpoint cannot travel): the vision-cache check on
# the freshly built model (while the CPU makes the data), then the real-size training run (train_realsize.sh); packs
# RESULTS/run into RESULTS/realsize.tgz for $OUT. VISION_CHECK=0 skips the check; SFT_BENCH=1 first times the cold
# start with and without batched vision windows (benchmarks/sft_step.py, on the random model). Meant for
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
STAGES="sft train" "${run[@]}" "$@"
status=$?
echo "[realsize_session] training exited with $status"
tar czf "$RESULTS/realsize.tgz" -C "$RESULTS" run
exit "$status"
