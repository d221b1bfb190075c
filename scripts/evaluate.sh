#!/usr/bin/env bash
# Evaluate a checkpoint on NExT-QA: adaptive frame requests against single-turn uniform-N baselines (vLLM).
#
# Edit the paths below (the same variables as scripts/run_qwen2_5_vl_template.sh) or export them, then:
#   bash scripts/evaluate.sh [more sparse_video_r1.tools.evaluate flags...]
# e.g. MODEL_PATH=checkpoints/sparse_video_r1/qwen2_5_vl_grpo_nextqa/hf_step_50 SPLIT=test bash scripts/evaluate.sh --limit 500
# A training checkpoint's actor/huggingface/ holds no weights: turn global_step_N/actor into an HF directory first,
#   python -m verl.model_merger merge --backend fsdp --local_dir .../global_step_N/actor --target_dir .../hf_step_N
# Re-running with the same OUT_DIR resumes: questions already in OUT_DIR/records_*.jsonl are skipped.
# The dialogue variables must match training's to measure the trained policy (they default to the same values).
# PRINT_COMMAND=1 prints the command instead of running it.
set -euo pipefail
PY=${PYTHON:-python3}

export HF_HOME=${HF_HOME:-/path/to/hf_home}
DATA_DIR=${DATA_DIR:-/path/to/data/nextqa}        # parquet files written by dataset/NExT_QA.py
ROW_DATA=${ROW_DATA:-/path/to/NExT-QA}            # the unzipped NExT-QA release (CSVs, map, NExTVideo/)

MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-VL-3B-Instruct}
ROLLOUT_TP=${ROLLOUT_TP:-1}                       # vLLM tensor parallel size
GPU_MEMORY_UTILIZATION=${GPU_MEMORY_UTILIZATION:-0.8}

# The dialogue (sparse_video_r1.env.config.DialogueRules, DecodingConfig): frames, turns and the per-frame pixel
# budget. Each variable is its field's name in capitals.
INITIAL_FRAMES=${INITIAL_FRAMES:-4}
MAX_FRAMES_PER_REQUEST=${MAX_FRAMES_PER_REQUEST:-4}
MAX_TOTAL_FRAMES=${MAX_TOTAL_FRAMES:-16}
MAX_TURNS=${MAX_TURNS:-4}
MAX_PIXELS=${MAX_PIXELS:-100352}                  # 128 visual tokens per frame
PROMPT_LENGTH=${PROMPT_LENGTH:-}                  # empty: fits the largest opening prompt (uniform_32's 32 frames)
RESPONSE_LENGTH=${RESPONSE_LENGTH:-4096}

# Evaluation only.
SPLIT=${SPLIT:-val}                               # val or test
UNIFORM=${UNIFORM:-4,8,16,32}                     # uniform-frame baselines, one turn each
TEMPERATURE=${TEMPERATURE:-0}                     # 0: greedy
BATCH_SIZE=${BATCH_SIZE:-256}                     # dialogues in flight; turn t of all of them is one vLLM call
OUT_DIR=${OUT_DIR:-outputs/eval/$(basename "$MODEL_PATH")_${SPLIT}}

ROOT=$(cd "$(dirname "$0")/.." && pwd)

command=(
  "$PY" -m sparse_video_r1.tools.evaluate
  --model "$MODEL_PATH"
  --data "$DATA_DIR/$SPLIT.parquet"
  --out "$OUT_DIR"
  --backend vllm
  --uniform "$UNIFORM"
  --temperature "$TEMPERATURE"
  --initial-frames "$INITIAL_FRAMES"
  --max-frames-per-request "$MAX_FRAMES_PER_REQUEST"
  --max-total-frames "$MAX_TOTAL_FRAMES"
  --max-turns "$MAX_TURNS"
  --max-pixels "$MAX_PIXELS"
  --response-length "$RESPONSE_LENGTH"
  --batch-size "$BATCH_SIZE"
  --tensor-parallel-size "$ROLLOUT_TP"
  --gpu-memory-utilization "$GPU_MEMORY_UTILIZATION"
)
if [ -n "$PROMPT_LENGTH" ]; then command+=(--prompt-length "$PROMPT_LENGTH"); fi
command+=("$@")

if [ "${PRINT_COMMAND:-0}" = 1 ]; then
  printf '%s\n' "${command[@]}"
  exit 0
fi

cd "$ROOT"
if [ ! -f "$DATA_DIR/$SPLIT.parquet" ]; then
  "$PY" dataset/NExT_QA.py --raw "$ROW_DATA" --out "$DATA_DIR" --splits "$SPLIT"
fi
exec "${command[@]}"
