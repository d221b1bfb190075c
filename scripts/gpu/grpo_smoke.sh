#!/usr/bin/env bash
# GRPO through the frame-request loop on ONE GPU, from nothing: a tiny random Qwen2.5-VL, a NExT-QA-shaped
# set (real annotation rows, generated videos), an SFT cold start, then verl GRPO with vLLM rollouts.
#
#   bash scripts/gpu/grpo_smoke.sh OUT_DIR [ANNOTATIONS_DIR] [extra hydra overrides...]
#
# ANNOTATIONS_DIR holds the NExT-QA CSVs and map (default ../shared/nextqa, else tests/fixtures/nextqa).
# Writes OUT_DIR/{grpo.log,metrics.jsonl,rollouts/,summary.json}. STEPS (default 6) sets the GRPO steps.
# STAGE=prepare (model, data, SFT) or STAGE=train (GRPO, summary) runs half of it, sharing WORK
# (default /tmp/svr1_smoke), so each half fits a time-limited call; the default runs both.
set -euo pipefail
PY=${PYTHON:-python3}
OUT=$(mkdir -p "${1:?usage: grpo_smoke.sh OUT_DIR [ANNOTATIONS_DIR]}" && cd "$1" && pwd)
shift
ANNOTATIONS=${1:-}
[ $# -gt 0 ] && shift
if [ -z "$ANNOTATIONS" ]; then
  if [ -d ../shared/nextqa ]; then ANNOTATIONS=../shared/nextqa; else ANNOTATIONS=tests/fixtures/nextqa; fi
fi
STEPS=${STEPS:-6}
SFT_EPOCHS=${SFT_EPOCHS:-6}
WORK=${WORK:-/tmp/svr1_smoke}
export RAY_AUTH_MODE=disabled VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
mkdir -p "$WORK"
STAGE=${STAGE:-all}
DIALOGUE='{"dialogue": {"initial_frames": 4, "max_frames_per_request": 4, "max_total_frames": 12, "max_turns": 3}}'

if [ "$STAGE" != train ]; then
"$PY" -m sparse_video_r1.synthetic.tiny_model "$WORK/tiny"
"$PY" -m sparse_video_r1.synthetic.nextqa --annotations "$ANNOTATIONS" --out "$WORK/raw" \
  --split train=val.csv --split val=test.csv --videos "${VIDEOS:-24}"
"$PY" dataset/NExT_QA.py --raw "$WORK/raw" --out "$WORK/data" --splits train val
"$PY" -m sparse_video_r1.training.sft --dialogue "$DIALOGUE" make-traces --data "$WORK/data/train.parquet" \
  --out "$WORK/traces.jsonl"
"$PY" -m sparse_video_r1.training.sft --dialogue "$DIALOGUE" train --model "$WORK/tiny" --traces "$WORK/traces.jsonl" \
  --out "$WORK/sft" --epochs "$SFT_EPOCHS" --lr 1e-3 --grad-accumulation 1 --dtype float32 2>&1 | tee "$OUT/sft.log"
cp "$WORK/sft/sft_metrics.json" "$OUT/"
fi
[ "$STAGE" = prepare ] && exit 0

overrides=(
  "data.train_files=$WORK/data/train.parquet"
  "data.val_files=$WORK/data/val.parquet"
  "data.train_batch_size=16"
  "data.dataloader_num_workers=0"
  "actor_rollout_ref.model.path=$WORK/sft"
  "actor_rollout_ref.model.use_remove_padding=False"
  "+actor_rollout_ref.model.override_config.attn_implementation=sdpa"
  "actor_rollout_ref.actor.optim.lr=1e-5"
  "actor_rollout_ref.actor.ppo_mini_batch_size=16"
  "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=32"
  "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=32"
  "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=32"
  "actor_rollout_ref.rollout.tensor_model_parallel_size=1"
  "actor_rollout_ref.rollout.gpu_memory_utilization=0.3"
  "actor_rollout_ref.rollout.enforce_eager=True"
  "actor_rollout_ref.rollout.n=4"
  "actor_rollout_ref.rollout.prompt_length=1024"
  "actor_rollout_ref.rollout.response_length=1024"
  "actor_rollout_ref.rollout.agent.num_workers=2"
  "actor_rollout_ref.rollout.agent.agent_loop_config_path=$PWD/configs/agent_loops.yaml"
  "data.max_prompt_length=1024"
  "data.max_response_length=1024"
  "sparse_video.dialogue.initial_frames=4"
  "sparse_video.dialogue.max_frames_per_request=4"
  "sparse_video.dialogue.max_total_frames=12"
  "sparse_video.dialogue.max_turns=3"
  "sparse_video.dialogue.max_tokens_per_turn=96"
  "trainer.use_v1=False"
  "+actor_rollout_ref.rollout.agent.agent_loop_manager_class=sparse_video_r1.training.verl_metrics.DialogueMetricsAgentLoopManager"
  "trainer.n_gpus_per_node=1"
  "trainer.nnodes=1"
  "trainer.total_training_steps=$STEPS"
  "trainer.val_before_train=False"
  "trainer.test_freq=-1"
  "trainer.save_freq=-1"
  "trainer.logger=[console,file]"
  "trainer.rollout_data_dir=$OUT/rollouts"
  "trainer.project_name=sparse_video_r1"
  "trainer.experiment_name=grpo_smoke"
)
COMMAND="$PY -m verl.trainer.main_ppo --config-path=$PWD/configs --config-name=sparse_video_grpo ${overrides[*]} $*"
echo "$COMMAND" > "$OUT/command.txt"
VERL_FILE_LOGGER_PATH="$OUT/metrics.jsonl" "$PY" -m verl.trainer.main_ppo --config-path="$PWD/configs" \
  --config-name=sparse_video_grpo "${overrides[@]}" "$@" 2>&1 | tee "$OUT/grpo.log"
"$PY" scripts/summarize_grpo_run.py --run "$OUT" --out "$OUT/summary.json"
