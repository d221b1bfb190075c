#!/usr/bin/env bash
# Evaluation on ONE GPU, from nothing: a tiny random Qwen2.5-VL, a NExT-QA-shaped set (real annotation rows,
# generated videos), a short SFT cold start, then `python -m sparse_video_r1.tools.evaluate --backend vllm`:
# adaptive frame requests against uniform 4/8/16/32-frame baselines on the val split.
#
#   bash scripts/gpu/evaluate_smoke.sh OUT_DIR [ANNOTATIONS_DIR] [extra sparse_video_r1.tools.evaluate flags...]
#
# ANNOTATIONS_DIR holds the NExT-QA CSVs and map (default .cache/nextqa, else ../shared/nextqa, else
# tests/fixtures/nextqa). Writes OUT_DIR/{results.json,table.md,accuracy_vs_frames.png,dialogues.html,
# evaluate.log,sft_metrics.json,command.txt,evaluation.tgz}; evaluation.tgz holds the whole evaluation folder
# (per-question records, settings, engine batch stats). Knobs: VIDEOS (24 per split: ~220 val questions),
# SFT_EPOCHS (3), LIMIT (all val questions), WORK (/tmp/svr1_eval). MODEL=path skips the tiny model and SFT
# and evaluates that checkpoint instead. Budget on an H100/H200: about 1 min data + SFT, 1 min vLLM start,
# 1-2 min for the five methods.
set -euo pipefail
PY=${PYTHON:-python3}
OUT=$(mkdir -p "${1:?usage: evaluate_smoke.sh OUT_DIR [ANNOTATIONS_DIR] [evaluate flags...]}" && cd "$1" && pwd)
shift
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
ANNOTATIONS=${1:-}
[ $# -gt 0 ] && shift
if [ -z "$ANNOTATIONS" ]; then
  for candidate in .cache/nextqa ../shared/nextqa tests/fixtures/nextqa; do
    if [ -d "$candidate" ]; then ANNOTATIONS=$candidate; break; fi
  done
fi
WORK=${WORK:-/tmp/svr1_eval}
VIDEOS=${VIDEOS:-24}
SFT_EPOCHS=${SFT_EPOCHS:-3}
export RAY_AUTH_MODE=disabled VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$WORK"
# The dialogue of the GRPO smoke run (scripts/gpu/grpo_smoke.sh), for the traces, SFT and the evaluation alike.
DIALOGUE='{"dialogue": {"initial_frames": 4, "max_frames_per_request": 4, "max_total_frames": 12, "max_turns": 3}}'
stage() { echo "[evaluate_smoke ${SECONDS}s] $*"; }

stage "data from $ANNOTATIONS"
"$PY" -m sparse_video_r1.synthetic.nextqa --annotations "$ANNOTATIONS" --out "$WORK/raw" \
  --split train=val.csv --split val=test.csv --videos "$VIDEOS"
"$PY" dataset/NExT_QA.py --raw "$WORK/raw" --out "$WORK/data" --splits train val
if [ -z "${MODEL:-}" ]; then
  stage "tiny model and SFT cold start ($SFT_EPOCHS epochs)"
  "$PY" -m sparse_video_r1.synthetic.tiny_model "$WORK/tiny"
  "$PY" -m sparse_video_r1.training.sft --dialogue "$DIALOGUE" make-traces --data "$WORK/data/train.parquet" \
    --out "$WORK/traces.jsonl"
  "$PY" -m sparse_video_r1.training.sft --dialogue "$DIALOGUE" train --model "$WORK/tiny" --traces "$WORK/traces.jsonl" \
    --out "$WORK/sft" --epochs "$SFT_EPOCHS" --lr 1e-3 --grad-accumulation 1 --dtype float32
  cp "$WORK/sft/sft_metrics.json" "$OUT/"
  MODEL=$WORK/sft
fi

stage "evaluate $MODEL"
rm -rf "$WORK/eval"
command=(
  "$PY" -m sparse_video_r1.tools.evaluate --backend vllm --model "$MODEL" --data "$WORK/data/val.parquet"
  --out "$WORK/eval" --uniform 4,8,16,32
  --initial-frames 4 --max-frames-per-request 4 --max-total-frames 12 --max-turns 3 --max-tokens-per-turn 96
  --response-length 1024 --gpu-memory-utilization 0.3 --enforce-eager
)
if [ -n "${LIMIT:-}" ]; then command+=(--limit "$LIMIT"); fi
command+=("$@")
echo "${command[*]}" > "$OUT/command.txt"
"${command[@]}" 2>&1 | tee "$OUT/evaluate.log"

stage "collect"
cp "$WORK/eval/"{results.json,table.md,accuracy_vs_frames.png,dialogues.html} "$OUT/"
tar czf "$OUT/evaluation.tgz" -C "$WORK" eval
stage "done: $(ls "$OUT" | tr '\n' ' ')"
