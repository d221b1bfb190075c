#!/usr/bin/env bash
# Rollout benchmark on ONE GPU: the agent loop over vLLM's AsyncLLM with the tiny random Qwen2.5-VL,
# adaptive (4 frames + one request for 4) vs single-turn (8 frames), batches of 64 and 256 dialogues
# (8 rollouts per question), 3 repeats each (medians), prefix caching on (profiled with py-spy), then off
# (one engine per process).
#
#   bash scripts/gpu/bench_rollout.sh OUT_DIR [extra benchmarks/rollout.py flags]
#
# Writes OUT_DIR/rollout_vllm_prefix_{on,off}.{json,txt}, their logs, profile_rollout_vllm_prefix_on.* and
# nvidia-smi.txt. About 5 minutes on one H100/H200 (two engine starts of ~40-90 s, ~30 s of videos, batches).
# PREFIX=on or PREFIX=off runs one setting only (calls then share WORK, default /tmp/svr1_bench_rollout).
# BASELINE_TREE=DIR also runs DIR's benchmarks/rollout.py (an older checkout, e.g. `git archive REV
# sparse_video_r1 benchmarks`) with prefix caching on, into OUT_DIR/baseline: a before/after on one machine.
# CPU check of the same code path: python benchmarks/rollout.py --backend transformers --dialogues 4 --out /tmp/r
set -euo pipefail
PY=${PYTHON:-python3}
OUT=$(mkdir -p "${1:?usage: bench_rollout.sh OUT_DIR}" && cd "$1" && pwd)
WORK=${WORK:-/tmp/svr1_bench_rollout}
export RAY_AUTH_MODE=disabled VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
mkdir -p "$WORK"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
[ -f "$WORK/tiny/config.json" ] || "$PY" -m sparse_video_r1.synthetic.tiny_model "$WORK/tiny"
# `pip install --target` leaves py-spy's binary out of the target's bin/: take it from the staged wheel.
if ! command -v py-spy > /dev/null && compgen -G "/tmp/gpu-wheels/py_spy-*.whl" > /dev/null; then
  "$PY" -m zipfile -e /tmp/gpu-wheels/py_spy-*.whl "$WORK/py_spy" && mkdir -p "$WORK/bin"
  install -m 755 "$(find "$WORK/py_spy" -name py-spy -type f | head -1)" "$WORK/bin/py-spy"
  export PATH="$WORK/bin:$PATH"
fi
for prefix in ${PREFIX:-on off}; do
  echo "== prefix caching $prefix =="
  profile=$([ "$prefix" = on ] && echo --profile || true)
  "$PY" benchmarks/rollout.py --backend vllm --model "$WORK/tiny" --work "$WORK" --out "$OUT" \
    --dialogues 64 256 --repeats 3 --prefix-caching "$prefix" $profile "${@:2}" 2>&1 | tee "$OUT/rollout_prefix_$prefix.log"
done
if [ -n "${BASELINE_TREE:-}" ]; then
  echo "== baseline: $BASELINE_TREE, prefix caching on =="
  (cd "$BASELINE_TREE" && PYTHONPATH="$BASELINE_TREE:${PYTHONPATH:-}" "$PY" benchmarks/rollout.py --backend vllm \
    --model "$WORK/tiny" --work "$WORK" --out "$OUT/baseline" --dialogues 64 256 --prefix-caching on) 2>&1 \
    | tee "$OUT/baseline.log"
fi
cat "$OUT"/rollout_vllm_prefix_*.txt
