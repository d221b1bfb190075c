#!/usr/bin/env bash
# GRPO training of Qwen2.5-VL with the Sparse-Video-R1 frame-request agent loop (verl + vLLM).
#
# Edit the three paths below (or export them), then:  bash scripts/run_qwen2_5_vl_template.sh [hydra overrides...]
# Defaults: Qwen2.5-VL-3B-Instruct on one node of 4 GPUs (A100/H100 80 GB).
# 7B: MODEL_PATH=Qwen/Qwen2.5-VL-7B-Instruct ROLLOUT_TP=2 PARAM_OFFLOAD=True bash scripts/run_qwen2_5_vl_template.sh
# PRINT_OVERRIDES=1 prints the hydra overrides (one per line) instead of training; the tests compose them.
set -euo pipefail
PY=${PYTHON:-python3}

export HF_HOME=${HF_HOME:-/path/to/hf_home}
DATA_DIR=${DATA_DIR:-/path/to/data/nextqa}        # parquet files written by dataset/NExT_QA.py
ROW_DATA=${ROW_DATA:-/path/to/NExT-QA}            # the unzipped NExT-QA release (CSVs, map, NExTVideo/)

MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-VL-3B-Instruct}
N_GPUS=${N_GPUS:-4}
NNODES=${NNODES:-1}
ROLLOUT_TP=${ROLLOUT_TP:-1}
PARAM_OFFLOAD=${PARAM_OFFLOAD:-False}
GPU_MEMORY_UTILIZATION=${GPU_MEMORY_UTILIZATION:-0.6}

TRAIN_BATCH_SIZE=${TRAIN_BATCH_SIZE:-32}          # questions per step
ROLLOUT_N=${ROLLOUT_N:-8}                         # GRPO group size
PPO_MINI_BATCH_SIZE=${PPO_MINI_BATCH_SIZE:-16}
MICRO_BATCH_PER_GPU=${MICRO_BATCH_PER_GPU:-2}
LR=${LR:-1e-6}
TOTAL_EPOCHS=${TOTAL_EPOCHS:-1}

# The dialogue (sparse_video_r1.env.config.DialogueRules, DecodingConfig): frames, turns and the per-frame pixel
# budget. Each variable is its field's name in capitals.
INITIAL_FRAMES=${INITIAL_FRAMES:-4}
MAX_FRAMES_PER_REQUEST=${MAX_FRAMES_PER_REQUEST:-4}
MAX_TOTAL_FRAMES=${MAX_TOTAL_FRAMES:-16}
MAX_TURNS=${MAX_TURNS:-4}
MAX_PIXELS=${MAX_PIXELS:-100352}                  # 128 visual tokens per frame
PROMPT_LENGTH=${PROMPT_LENGTH:-1536}
RESPONSE_LENGTH=${RESPONSE_LENGTH:-4096}
FRAME_COST=${FRAME_COST:-0.0}

PROJECT_NAME=${PROJECT_NAME:-sparse_video_r1}
EXPERIMENT_NAME=${EXPERIMENT_NAME:-qwen2_5_vl_grpo_nextqa}
KEEP_CHECKPOINTS=${KEEP_CHECKPOINTS:-2}            # a 3B actor checkpoint is ~45 GB (float32 + Adam moments)

ROOT=$(cd "$(dirname "$0")/.." && pwd)

# Tracking: console plus TensorBoard files (no account). W&B: LOGGER='["console","wandb"]' (WANDB_MODE=offline
# keeps it local). Curves: python -m sparse_video_r1.tools.curves "$RUN_DIR"; dialogues of a step:
# python -m sparse_video_r1.tools.viewer rollouts "$RUN_DIR/rollouts" --step N. ROLLOUT_DATA_DIR= turns the dumps off.
LOGGER=${LOGGER:-'["console","tensorboard"]'}
RUN_DIR=${RUN_DIR:-${ROOT}/outputs/${PROJECT_NAME}/${EXPERIMENT_NAME}}
export TENSORBOARD_DIR=${TENSORBOARD_DIR:-${RUN_DIR}/tensorboard}
# verl's "file" logger truncates its file on start: one file per start keeps a resumed run's earlier steps.
export VERL_FILE_LOGGER_PATH=${VERL_FILE_LOGGER_PATH:-${RUN_DIR}/metrics_$(date -u +%Y%m%dT%H%M%S).jsonl}
ROLLOUT_DATA_DIR=${ROLLOUT_DATA_DIR-${RUN_DIR}/rollouts}

overrides=(
  "data.train_files=${DATA_DIR}/train.parquet"
  "data.val_files=${DATA_DIR}/val.parquet"
  "data.train_batch_size=${TRAIN_BATCH_SIZE}"
  "data.max_prompt_length=${PROMPT_LENGTH}"
  "data.max_response_length=${RESPONSE_LENGTH}"
  "actor_rollout_ref.model.path=${MODEL_PATH}"
  "actor_rollout_ref.model.enable_gradient_checkpointing=True"
  "actor_rollout_ref.actor.optim.lr=${LR}"
  "actor_rollout_ref.actor.ppo_mini_batch_size=${PPO_MINI_BATCH_SIZE}"
  "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=${MICRO_BATCH_PER_GPU}"
  "actor_rollout_ref.actor.fsdp_config.param_offload=${PARAM_OFFLOAD}"
  "actor_rollout_ref.actor.fsdp_config.optimizer_offload=${PARAM_OFFLOAD}"
  "actor_rollout_ref.ref.fsdp_config.param_offload=True"
  "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=$((MICRO_BATCH_PER_GPU * 2))"
  "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=$((MICRO_BATCH_PER_GPU * 2))"
  "actor_rollout_ref.rollout.tensor_model_parallel_size=${ROLLOUT_TP}"
  "actor_rollout_ref.rollout.gpu_memory_utilization=${GPU_MEMORY_UTILIZATION}"
  "actor_rollout_ref.rollout.n=${ROLLOUT_N}"
  "actor_rollout_ref.rollout.prompt_length=${PROMPT_LENGTH}"
  "actor_rollout_ref.rollout.response_length=${RESPONSE_LENGTH}"
  "actor_rollout_ref.rollout.agent.agent_loop_config_path=${ROOT}/configs/agent_loops.yaml"
  "sparse_video.dialogue.initial_frames=${INITIAL_FRAMES}"
  "sparse_video.dialogue.max_frames_per_request=${MAX_FRAMES_PER_REQUEST}"
  "sparse_video.dialogue.max_total_frames=${MAX_TOTAL_FRAMES}"
  "sparse_video.dialogue.max_turns=${MAX_TURNS}"
  "sparse_video.decoding.max_pixels=${MAX_PIXELS}"
  "reward.custom_reward_function.reward_kwargs.frame_cost=${FRAME_COST}"
  "trainer.n_gpus_per_node=${N_GPUS}"
  "trainer.nnodes=${NNODES}"
  "trainer.total_epochs=${TOTAL_EPOCHS}"
  "trainer.project_name=${PROJECT_NAME}"
  "trainer.experiment_name=${EXPERIMENT_NAME}"
  "trainer.logger=${LOGGER}"
  "trainer.rollout_data_dir=${ROLLOUT_DATA_DIR:-null}"
  "trainer.save_freq=50"
  "trainer.max_actor_ckpt_to_keep=${KEEP_CHECKPOINTS}"
  "trainer.test_freq=25"
)

# verl's defaults assume flash-attn 2 (remove-padding, flash_attention_2); `pip install -e ".[gpu]"` does not bring it.
# Without it, attention falls back to torch's sdpa on padded batches (log-probs stay fused: configs/*.yaml).
# ATTENTION=flash_attention_2|sdpa|eager forces a choice; the default detects flash-attn.
ATTENTION=${ATTENTION:-$("$PY" -c "import flash_attn" >/dev/null 2>&1 && echo flash_attention_2 || echo sdpa)}
if [ "$ATTENTION" != flash_attention_2 ]; then
  echo "attention: ${ATTENTION} without remove-padding (flash-attn not in use on this node)" >&2
  overrides+=(
    "actor_rollout_ref.model.use_remove_padding=False"
    "+actor_rollout_ref.model.override_config.attn_implementation=${ATTENTION}"
  )
fi

if [ "${PRINT_OVERRIDES:-0}" = 1 ]; then
  printf '%s\n' "${overrides[@]}" "$@"
  exit 0
fi

echo "NExT-QA release: ${ROW_DATA}; parquet: ${DATA_DIR}; model: ${MODEL_PATH}; run: ${RUN_DIR}"
mkdir -p "$RUN_DIR"
cd "$ROOT"
exec "$PY" -m verl.trainer.main_ppo --config-path="${ROOT}/configs" --config-name=sparse_video_grpo \
  "${overrides[@]}" "$@"
