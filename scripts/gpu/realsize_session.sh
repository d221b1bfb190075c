#!/usr/bin/env bash
# Everything that needs the 3B stand-in, on one machine (its checkpoint cannot travel): the real-size
# training run (train_realsize.sh), then the vision-cache check on the same cold-started model; packs
# RESULTS/run into RESULTS/realsize.tgz for $OUT. Meant for scripts/gpu/detached.sh:
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
bash scripts/gpu/train_realsize.sh "$RESULTS/run" "$ANNOTATIONS" "$@"
status=$?
echo "[realsize_session] training exited with $status; vision-cache check next"
nvidia-smi --query-gpu=memory.used --format=csv 2>/dev/null || true
timeout 480 "$PY" scripts/gpu/vision_cache_check.py --model "$WORK/sft" --out "$RESULTS/run/vision_cache.json" \
  > "$RESULTS/run/vision_cache.log" 2>&1
echo "[realsize_session] vision-cache check exited with $?"
tail -n 30 "$RESULTS/run/vision_cache.log"
tar czf "$RESULTS/realsize.tgz" -C "$RESULTS" run
exit "$status"
