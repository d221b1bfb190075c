#!/usr/bin/env bash
# Rollout benchmark on ONE GPU: the agent loop over vLLM's offline engine with the tiny random Qwen2.5-VL,
# adaptive (4 frames + one request for 4) vs single-turn (8 frames), batches of 64 and 256 dialogues
# (8 rollouts per question), prefix caching on, then off (one engine per process).
#
#   bash scripts/gpu/bench_rollout.sh OUT_DIR
#
# Writes OUT_DIR/{rollout_vllm_prefix_on,rollout_vllm_prefix_off}.{json,txt}, the two logs and nvidia-smi.txt.
# About 3-5 minutes on one H100/H200 (two engine starts of ~40-90 s each, ~30 s of videos, the batches).
# PREFIX=on or PREFIX=off runs one setting only (two calls then share WORK, default /tmp/svr1_bench_rollout).
# CPU check of the same code path: python benchmarks/rollout.py --backend transformers --dialogues 4 --out /tmp/r
set -euo pipefail
OUT=$(mkdir -p "${1:?usage: bench_rollout.sh OUT_DIR}" && cd "$1" && pwd)
WORK=${WORK:-/tmp/svr1_bench_rollout}
export RAY_AUTH_MODE=disabled VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
mkdir -p "$WORK"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
[ -f "$WORK/tiny/config.json" ] || python -m sparse_video_r1.tiny_model "$WORK/tiny"
for prefix in ${PREFIX:-on off}; do
  echo "== prefix caching $prefix =="
  python benchmarks/rollout.py --backend vllm --model "$WORK/tiny" --work "$WORK" --out "$OUT" \
    --dialogues 64 256 --prefix-caching "$prefix" "${@:2}" 2>&1 | tee "$OUT/rollout_prefix_$prefix.log"
done
cat "$OUT"/rollout_vllm_prefix_*.txt
