#!/usr/bin/env bash
# The users' path at the users' size on ONE GPU: a random Qwen2.5-VL with the published 3B (or 7B) dimensions,
# a NExT-QA-shaped set (real annotation rows, generated 640x480 videos), a format cold start with
# sparse_video_r1.training.sft, then `sh train.sh` itself (verl's default v1 trainer, the template's dialogue,
# micro-batches and sequence limits), changing only what a one-GPU host without flash-attn needs.
#
#   bash scripts/gpu/train_realsize.sh OUT_DIR ANNOTATIONS_DIR [extra hydra overrides...]
#
# Host changes, each an environment variable of the template: N_GPUS=1, GPU_MEMORY_UTILIZATION (vLLM's share
# of the one GPU the actor also lives on), the paths; attention falls back to sdpa by itself. Fewer questions
# per step than the default 32 (QUESTIONS, with PPO_MINI_BATCH_SIZE equal) so that STEPS fit one machine.
# STAGES picks steps of "build data bench sft train" (default all but bench, in that order; bench times the cold
# start with and without batched vision windows, benchmarks/sft_step.py); WORK (default /tmp/svr1_realsize)
# holds model, data and checkpoint between them.
# 7B on one H200: SHAPE=7b SFT_PRECISION=bfloat16 STATE_DTYPE=bfloat16, and the template's PARAM_OFFLOAD=True
# exported. Float32 actor states (8.29 B x 16 B = 123.6 GiB) fit neither the GPU in the update nor, offloaded, this
# host's 128 GiB of RAM; STATE_DTYPE sets the actor's and reference's fsdp_config.model_dtype (verl: fp32).
# Writes OUT_DIR/{build.log,sft.log,sft_metrics.json,grpo.log,metrics.jsonl,rollouts/,gpu_memory.csv,host_memory.csv,
# summary.json}, and host_pressure.txt if RAM ran short.
set -euo pipefail
OUT=$(mkdir -p "${1:?usage: train_realsize.sh OUT_DIR ANNOTATIONS_DIR}" && cd "$1" && pwd)
ANNOTATIONS=$(cd "${2:?usage: train_realsize.sh OUT_DIR ANNOTATIONS_DIR}" && pwd)
shift 2
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PYTHON:-python3}
SHAPE=${SHAPE:-3b}
DEVICE=${DEVICE:-cuda}
WORK=${WORK:-/tmp/svr1_realsize}
STAGES=${STAGES:-build data sft train}
VIDEOS=${VIDEOS:-16}
STEPS=${STEPS:-5}
QUESTIONS=${QUESTIONS:-8}
SFT_EPOCHS=${SFT_EPOCHS:-2}
SFT_LR=${SFT_LR:-1e-4}
# Seconds of SFT after which it stops at the next optimizer step (a lease has a fixed length); empty = no limit.
SFT_TIME_BUDGET=${SFT_TIME_BUDGET:-}
# verl quiets vLLM to WARN unless the variable is already set; INFO brings vLLM's weights/KV-cache report.
export RAY_AUTH_MODE=disabled VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1 VLLM_LOGGING_LEVEL=${VLLM_LOGGING_LEVEL:-INFO}
mkdir -p "$WORK"
cd "$ROOT"

stage() { case " $STAGES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

if stage build; then
  "$PY" -m sparse_video_r1.synthetic.tiny_model "$WORK/model" --shape "$SHAPE" --device "$DEVICE" 2>&1 | tee "$OUT/build.log"
fi
if stage data; then
  "$PY" -m sparse_video_r1.synthetic.nextqa --annotations "$ANNOTATIONS" --out "$WORK/raw" \
    --split train=val.csv --split val=test.csv --videos "$VIDEOS" --width 640 --height 480
  # The preprocessing train.sh runs when the parquet files are missing; the cold start needs them first.
  "$PY" dataset/NExT_QA.py --raw "$WORK/raw" --out "$WORK/data" --splits train val
  "$PY" -m sparse_video_r1.training.sft make-traces --data "$WORK/data/train.parquet" --out "$WORK/traces.jsonl"
fi
# Float32 weights and AdamW states with bfloat16 compute: exact updates for a model learning from random
# (16 bytes a parameter: 60 GiB at 3B). SFT_PRECISION=bfloat16 keeps 8 (a 7B's 62 GiB fits one GPU).
if [ "${SFT_PRECISION:-mixed}" = bfloat16 ]; then precision=(--dtype bfloat16); else
  precision=(--dtype float32 --autocast bfloat16); fi
sft_flags=(--device "$DEVICE" "${precision[@]}" --max-grad-norm 1.0 --gradient-checkpointing)
if stage bench; then
  # The cold start timed with and without batched vision windows, on the random model, with the flags below.
  "$PY" benchmarks/sft_step.py --model "$WORK/model" --traces "$WORK/traces.jsonl" --out "$OUT/sft_step" \
    --dialogues "${SFT_BENCH_DIALOGUES:-12}" "${sft_flags[@]}" 2>&1 | tail -n 20
fi
if stage sft; then
  budget=(); [ -n "$SFT_TIME_BUDGET" ] && budget=(--time-budget-s "$SFT_TIME_BUDGET")
  "$PY" -m sparse_video_r1.training.sft train --model "$WORK/model" --traces "$WORK/traces.jsonl" --out "$WORK/sft" \
    --epochs "$SFT_EPOCHS" --lr "$SFT_LR" --warmup-steps 20 "${sft_flags[@]}" "${budget[@]}" 2>&1 | tee "$OUT/sft.log"
  cp "$WORK/sft/sft_metrics.json" "$OUT/"
fi
stage train || exit 0

# GPU memory as the driver sees it (every process: FSDP actor, reference, vLLM) and the host's, once a second.
bash scripts/gpu/sample_memory.sh "$OUT" &
SAMPLER=$!
trap 'kill $SAMPLER 2>/dev/null || true' EXIT
overrides=(
  "trainer.total_training_steps=$STEPS"
  "trainer.val_before_train=False"
  "trainer.test_freq=-1"
  "trainer.save_freq=-1"
  "trainer.logger=[console,tensorboard,file]"
  "trainer.rollout_data_dir=$OUT/rollouts"
)
if [ -n "${STATE_DTYPE:-}" ]; then
  overrides+=("actor_rollout_ref.actor.fsdp_config.model_dtype=$STATE_DTYPE"
              "actor_rollout_ref.ref.fsdp_config.model_dtype=$STATE_DTYPE")
fi
overrides+=("$@")
host=(N_GPUS=1 "RUN_DIR=$OUT" "MODEL_PATH=$WORK/sft" "DATA_DIR=$WORK/data" "ROW_DATA=$WORK/raw" "HF_HOME=$WORK/hf_home"
      "TRAIN_BATCH_SIZE=$QUESTIONS" "PPO_MINI_BATCH_SIZE=$QUESTIONS"
      "GPU_MEMORY_UTILIZATION=${GPU_MEMORY_UTILIZATION:-0.35}" "VERL_FILE_LOGGER_PATH=$OUT/metrics.jsonl")
echo "${host[*]} sh train.sh ${overrides[*]}" > "$OUT/command.txt"
# When the host runs short, Ray's memory monitor kills workers and verl waits on them for ever (7B attempt 1 hung
# 12 minutes): the run is stopped OOM_GRACE_S after Ray says so, with status 137, so a RETRY_ENV can follow.
RAY_OOM="killed due to memory pressure"
status=0
env "${host[@]}" setsid sh train.sh "${overrides[@]}" > "$OUT/grpo.log" 2>&1 &
train=$!
tail -n +1 -f --pid="$train" "$OUT/grpo.log" &
while kill -0 "$train" 2>/dev/null; do
  if grep -q "$RAY_OOM" "$OUT/grpo.log"; then
    sleep "${OOM_GRACE_S:-60}"
    if kill -0 "$train" 2>/dev/null; then
      echo "[train_realsize] Ray killed workers for host memory and the run did not end: stopping it"
      stopped=1
      kill -- "-$train" 2>/dev/null
      ray stop --force > /dev/null 2>&1 || true
    fi
    break
  fi
  sleep 5
done
wait "$train" || status=$?
[ "${stopped:-0}" = 1 ] && status=137
# vLLM reports its weights and KV cache in the Ray workers' logs, not on the console.
grep -h -E "Model loading took|KV cache memory|GPU KV cache size|CUDA out of memory" \
  /tmp/ray/session_latest/logs/*.out /tmp/ray/session_latest/logs/*.err > "$OUT/vllm_memory.log" 2>/dev/null || true
"$PY" scripts/summarize_grpo_run.py --run "$OUT" --out "$OUT/summary.json" || true
exit "$status"
