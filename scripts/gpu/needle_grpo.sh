#!/usr/bin/env bash
# Proof of learning on ONE GPU: does GRPO teach the tiny Qwen2.5-VL *where to look*? Needle task
# (sparse_video_r1/synthetic/needle.py), SFT cold start on uninformed traces, then two GRPO runs that differ only in
# sparse_video.training.loss_on: `main` (all_turns) and `ablation` (last_turn: request turns get no gradient).
#
#   STAGE=prepare,train DEADLINE_S=570 bash scripts/gpu/needle_grpo.sh OUT_DIR [extra hydra overrides...]
#
# STAGE is a comma list of parts, run in this order:
#   prepare   tiny model, needle data, cold-start traces, SFT (WORK/{tiny,data,sft}).
#   train     `main`, then `ablation`, each until STEPS or its share of the deadline: `main` stops halfway
#             to it, `ablation` has the rest. Not side by side: two verl jobs on one host (each its own local
#             Ray cluster) both get Ray job id 01000000, and verl names the socket of its colocated weight sync
#             /tmp/rl-colocate-zmq-<job id>-replica-0-rank-0.sock, so the two runs share one socket; both runs
#             of attempts 2 and 4 hung in update_weights (docs/results/needle/attempt4/README.md).
#             Each vLLM engine has a fixed KV cache (kv_cache_memory_bytes: skips vLLM's memory profiling,
#             which fails when another process on the GPU frees memory meanwhile).
#             PARALLEL=1 runs them side by side instead, each until the deadline, each verl job on a Ray cluster
#             of its own whose job id differs (scripts/gpu/ray_slot.sh), so their weight-sync sockets differ.
#             RL_SEEDS (default "0") repeats both arms per seed from the same cold start: the seed sets verl's
#             data order (data.seed) and vLLM's sampling (rollout.seed = 42 + seed); runs of seed s > 0 are named
#             main_s<s> and ablation_s<s>. With PARALLEL=1 all 2 x seeds runs share the GPU: lower GPU_UTIL.
#   main, ablation   one run alone, for each of RL_SEEDS in turn (the fallback if runs side by side do not fit).
#   report    held-out evaluation (python -m sparse_video_r1.tools.evaluate, vLLM, greedy) on TEST_VIDEOS (512)
#             fresh videos drawn with TEST_SEED (1000), a seed no training or tuning used: the SFT model (adaptive
#             and uniform 4/6/8/16/32) and every RL run (adaptive and uniform 4/5/6, around its own frame count),
#             then the table.
# Every call ends by writing the curves of what the runs have done so far (OUT_DIR/needle_curves.{png,json}),
# OUT_DIR/needle_runs.tgz (logs, metrics, dumps, evaluations, memory samples of each train stage:
# scripts/gpu/sample_memory.sh) and OUT_DIR/needle_models.tgz (HF models; in 15 MiB parts when larger).
#
# The runs are time-bounded and resumable: each is stopped at DEADLINE_S seconds after this script started
# (less PACK_S for packing up) and continues from its last checkpoint when `train` is called again, until
# STEPS steps. verl saves a checkpoint every SAVE_EVERY steps and, through its capacity-expiration hook
# (MLP_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP), after every step of the last minute before the deadline;
# metrics and rollout dumps are written every step, so a stopped run keeps its curve. WORK (default
# /tmp/svr1_needle) holds the state between calls. DEADLINE_AT (epoch seconds) sets the deadline outright, for a
# `train` longer than one device call, started and attached to with scripts/gpu/detached.sh.
# A watchdog stops a run that logs no step for STALL_S seconds (START_S for the first), saves every process's
# Python stack next to its log (scripts/gpu/dump_stacks.sh) and resumes it from its last checkpoint; a run that
# exits with an error before the deadline is resumed the same way (attempt 3's `main` died at step 31 in verl's
# update_actor when all 64 dialogues of a step had the same length: verl issue #6073, tests/test_verl_known_bugs.py).
# Both runs take the old log-probs from the rollout (verl's algorithm.rollout_correction.bypass_mode, PPO-clip
# against the vLLM policy): the FSDP recomputation was a quarter of a step and matched vLLM's to 2e-5 KL.
# vLLM stays awake between rollouts (rollout.free_cache_engine=False): the tiny model's engine needs no room freed
# for the update, and vLLM checks its sleep by the GPU's memory as a whole, so with runs side by side the others'
# allocations failed one run's sleep ("Memory usage increased after sleeping", attempt 5). verl still clears vLLM's
# prefix, multimodal and encoder caches after every weight update (vllm_rollout.update_weights -> clear_kv_cache).
# Knobs: STEPS (150), DEADLINE_S (570), PACK_S (40), SAVE_EVERY (10), VAL_EVERY (0: held-out accuracy comes
# from the report stage), START_S (480), STALL_S (150), POLL_S (10) and MAX_RESTARTS (3) for the watchdog,
# BATCH (8 questions per step), N (8 rollouts each), MINI_BATCH (8 questions per update, a divisor of BATCH: one update a step),
# PPO_EPOCHS (1: passes over each step's batch; BATCH / MINI_BATCH x PPO_EPOCHS optimizer steps a GRPO step), LR (3e-4),
# GPU_UTIL (0.25 per run),
# PROXIMITY (0.5: the weight of sparse_video_r1.synthetic.needle's shaping term for where a dialogue looked; 0 = accuracy alone),
# KV_CACHE_GB (4 per run), TRAIN (512), VAL (128), TRACES (1 per train video),
# READING (256 cold-start videos whose opening frames show the card), SFT_EPOCHS (6), SFT_LR (3e-4), SEED (0),
# SFT_MAX_GRAD_NORM (1.0: the setting that took informed traces to 100 % at 3 seeds, docs/results/needle/learnability).
# The SFT defaults come from the CPU sweep in docs/results/needle/cold_start_cpu.md: 3 epochs at 1e-3 read a
# shown card in about half the uniform_32 videos; 6 epochs at 3e-4 read it reliably. GRPO's LR is the SFT's:
# at 1e-4 (attempt 2) the policy moved by a PPO KL of 1e-5..1e-4 per step with no clipping, too slowly for ~100 steps.
# One update of the whole batch per step (attempt 3 made two of 4 questions): the tiny model's update is bound by
# kernel launches per micro-batch, not by tokens, so this shortens a step and buys more steps in the device time.
# SFT_FROM=DIR makes `prepare` take the cold start from DIR (an `sft` folder of an earlier needle_models.tgz)
# instead of training one, so that seeds run on different machines share it.
# PRINT_OVERRIDES=1 prints the `main` run's hydra overrides, one per line, and exits (the tests compose them).
set -euo pipefail
PY=${PYTHON:-python3}
STARTED=$(date +%s)
OUT=$(mkdir -p "${1:?usage: needle_grpo.sh OUT_DIR [hydra overrides...]}" && cd "$1" && pwd)
shift
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
WORK=${WORK:-/tmp/svr1_needle}
STAGE=${STAGE:-prepare,train,report}
STEPS=${STEPS:-150}
DEADLINE_S=${DEADLINE_S:-570}
PACK_S=${PACK_S:-40}
SAVE_EVERY=${SAVE_EVERY:-10}
VAL_EVERY=${VAL_EVERY:-0}
START_S=${START_S:-480}
STALL_S=${STALL_S:-150}
POLL_S=${POLL_S:-10}
BATCH=${BATCH:-8}
N=${N:-8}
MINI_BATCH=${MINI_BATCH:-8}
PPO_EPOCHS=${PPO_EPOCHS:-1}
LR=${LR:-3e-4}
PROXIMITY=${PROXIMITY:-0.5}
GPU_UTIL=${GPU_UTIL:-0.25}
KV_CACHE_GB=${KV_CACHE_GB:-4}
SEED=${SEED:-0}
RL_SEEDS=${RL_SEEDS:-0}
PARALLEL=${PARALLEL:-0}
PROMPT_LENGTH=${PROMPT_LENGTH:-768}
RESPONSE_LENGTH=${RESPONSE_LENGTH:-384}
DEADLINE=$((${DEADLINE_AT:-$((STARTED + DEADLINE_S))} - PACK_S))
if [ $((BATCH % MINI_BATCH)) != 0 ]; then  # verl's validate_config lets this through and the run fails later
  echo "MINI_BATCH=$MINI_BATCH must divide BATCH=$BATCH: each step's batch is split into mini-batches" >&2
  exit 2
fi
export RAY_AUTH_MODE=disabled VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
source scripts/needle_dialogue.sh  # DIALOGUE, DIALOGUE_OVERRIDES, EVAL_DIALOGUE
# (evaluate sizes the prompt itself: uniform_32 needs a longer one than training does).
EVAL_DIALOGUE+=(--response-length "$RESPONSE_LENGTH")

has_stage() { [[ ",$STAGE," == *",$1,"* ]]; }
log() { echo "[needle_grpo $(($(date +%s) - STARTED))s] $*"; }

run_name() { if [ "$2" = 0 ]; then echo "$1"; else echo "$1_s$2"; fi; }  # run_name ARM RL_SEED

overrides() {  # overrides RUN_NAME LOSS_ON RL_SEED
  local run=$WORK/runs/$1
  printf '%s\n' \
    "data.seed=$3" \
    "actor_rollout_ref.rollout.seed=$((42 + $3))" \
    "data.train_files=$WORK/data/train.parquet" \
    "data.val_files=$WORK/data/val.parquet" \
    "data.train_batch_size=$BATCH" \
    "data.dataloader_num_workers=0" \
    "data.max_prompt_length=$PROMPT_LENGTH" \
    "data.max_response_length=$RESPONSE_LENGTH" \
    "actor_rollout_ref.model.path=$WORK/sft" \
    "actor_rollout_ref.model.use_remove_padding=False" \
    "+actor_rollout_ref.model.override_config.attn_implementation=sdpa" \
    "actor_rollout_ref.model.enable_gradient_checkpointing=False" \
    "actor_rollout_ref.actor.optim.lr=$LR" \
    "actor_rollout_ref.actor.use_kl_loss=False" \
    "algorithm.rollout_correction.bypass_mode=True" \
    "actor_rollout_ref.actor.ppo_mini_batch_size=$MINI_BATCH" \
    "actor_rollout_ref.actor.ppo_epochs=$PPO_EPOCHS" \
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=$((MINI_BATCH * N))" \
    "actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra,hf_model]" \
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=$((BATCH * N))" \
    "actor_rollout_ref.rollout.tensor_model_parallel_size=1" \
    "actor_rollout_ref.rollout.gpu_memory_utilization=$GPU_UTIL" \
    "+actor_rollout_ref.rollout.engine_kwargs.vllm.kv_cache_memory_bytes=$((KV_CACHE_GB << 30))" \
    "actor_rollout_ref.rollout.enforce_eager=True" \
    "actor_rollout_ref.rollout.free_cache_engine=False" \
    "actor_rollout_ref.rollout.n=$N" \
    "actor_rollout_ref.rollout.prompt_length=$PROMPT_LENGTH" \
    "actor_rollout_ref.rollout.response_length=$RESPONSE_LENGTH" \
    "actor_rollout_ref.rollout.agent.num_workers=2" \
    "actor_rollout_ref.rollout.agent.agent_loop_config_path=$ROOT/configs/agent_loops.yaml" \
    "${DIALOGUE_OVERRIDES[@]}" \
    "sparse_video.training.loss_on=$2" \
    "reward.custom_reward_function.path=pkg://sparse_video_r1.synthetic.needle" \
    "++reward.custom_reward_function.reward_kwargs.proximity_weight=$PROXIMITY" \
    "+ray_kwargs.ray_init.address=$( [ -n "${SLOT:-}" ] && echo auto || echo local)" \
    "trainer.use_v1=False" \
    "+actor_rollout_ref.rollout.agent.agent_loop_manager_class=sparse_video_r1.training.verl_metrics.DialogueMetricsAgentLoopManager" \
    "trainer.n_gpus_per_node=1" \
    "trainer.nnodes=1" \
    "trainer.total_epochs=1000" \
    "trainer.total_training_steps=$STEPS" \
    "trainer.val_before_train=True" \
    "trainer.test_freq=$VAL_EVERY" \
    "trainer.save_freq=$SAVE_EVERY" \
    "trainer.max_actor_ckpt_to_keep=1" \
    "trainer.resume_mode=auto" \
    "trainer.default_local_dir=$WORK/ckpt_$1" \
    "trainer.logger=[console,file]" \
    "trainer.rollout_data_dir=$run/rollouts" \
    "trainer.validation_data_dir=$run/validation" \
    "trainer.project_name=sparse_video_r1" \
    "trainer.experiment_name=needle_$1"
}

if [ "${PRINT_OVERRIDES:-0}" = 1 ]; then
  overrides main all_turns 0
  [ $# -gt 0 ] && printf '%s\n' "$@"
  exit 0
fi

STALLED=75  # grpo_once's status when its watchdog stopped a hanging run
CRASHED=76  # ... when the run exited with an error before the deadline

grpo() {  # grpo RUN_NAME LOSS_ON RL_SEED [extra overrides...]: run until STEPS or RUN_DEADLINE (default DEADLINE),
  # then export the last HF model. With SLOT set, verl runs on a Ray cluster of its own (scripts/gpu/ray_slot.sh).
  local name=$1 stalls=0 status
  mkdir -p "$WORK/runs/$1"
  while :; do
    status=0
    grpo_once "$@" || status=$?
    [ "$status" = "$STALLED" ] || [ "$status" = "$CRASHED" ] || break
    stalls=$((stalls + 1))
    if [ "$stalls" -gt "${MAX_RESTARTS:-3}" ]; then
      log "$name: stalled or crashed $stalls times, giving up"
      break
    fi
    log "$name: resuming from its last checkpoint after a $( [ "$status" = "$STALLED" ] && echo stall || echo crash)"
  done
  export_hf_model "$name"
}

grpo_once() {  # one verl process, until it ends, meets the deadline, or stalls (then it returns STALLED)
  local name=$1 loss_on=$2 run=$WORK/runs/$1 part budget pid status=0 metrics launcher=()
  mapfile -t args < <(overrides "$1" "$2" "$3")
  shift 3
  [ -n "${SLOT:-}" ] && launcher=(bash "$ROOT/scripts/gpu/ray_slot.sh" "$SLOT")
  part=$(date +%Y%m%d-%H%M%S)
  local deadline=${RUN_DEADLINE:-$DEADLINE}
  budget=$((deadline - $(date +%s)))
  metrics=$run/metrics_$part.jsonl
  if [ "$budget" -lt 150 ]; then
    log "$name: only ${budget}s before the deadline, not starting"
    return 0
  fi
  echo "$PY -m verl.trainer.main_ppo --config-path=$ROOT/configs --config-name=sparse_video_grpo ${args[*]} $*" \
    > "$run/command.txt"
  log "$name: starting (loss_on=$loss_on, at most ${budget}s; log $run/grpo_$part.log)"
  # timeout puts the run in its own process group and signals all of it (Ray and vLLM processes included).
  MLP_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP=$deadline VERL_FILE_LOGGER_PATH=$metrics \
    timeout -s TERM -k 20 "$budget" "${launcher[@]}" "$PY" -m verl.trainer.main_ppo --config-path="$ROOT/configs" \
    --config-name=sparse_video_grpo "${args[@]}" "$@" > "$run/grpo_$part.log" 2>&1 &
  pid=$!
  # Watchdog: verl logs a metrics line per step. None for START_S after the start, or for STALL_S after the
  # last one, means the run hangs (seen once: both runs silent after step 10, until the deadline).
  local logged=0 lines changed allowance=$START_S verdict=0
  changed=$(date +%s)
  while kill -0 "$pid" 2>/dev/null; do
    sleep "$POLL_S"
    lines=0
    [ -f "$metrics" ] && lines=$(wc -l < "$metrics")
    if [ "$lines" != "$logged" ]; then
      logged=$lines changed=$(date +%s) allowance=$STALL_S
    elif [ $(($(date +%s) - changed)) -gt "$allowance" ]; then
      log "$name: no step logged for ${allowance}s; stacks in $run/stall_$part.txt, then stopping it"
      bash "$ROOT/scripts/gpu/dump_stacks.sh" > "$run/stall_$part.txt" 2>&1 || true
      kill -TERM -- "-$pid" 2>/dev/null || true
      verdict=$STALLED
      break
    fi
  done
  wait "$pid" || status=$?
  kill -KILL -- "-$pid" 2>/dev/null || true
  case $verdict:$status in 0:0 | 0:124 | 0:137) ;; 0:*) verdict=$CRASHED ;; esac  # 124, 137: the deadline
  log "$name: exit status $status ($( [ "$status" = 124 ] && echo 'stopped at the deadline' || echo finished)); last lines:"
  grep -E "step:[0-9]+ " "$run/grpo_$part.log" | tail -n 1 | cut -c 1-400 || true
  tail -n 5 "$run/grpo_$part.log"
  return "$verdict"
}

export_hf_model() {  # export_hf_model RUN_NAME: the latest checkpoint's HF model, for evaluate
  local run=$WORK/runs/$1 ckpt=$WORK/ckpt_$1 step
  [ -f "$ckpt/latest_checkpointed_iteration.txt" ] || return 0
  step=$(cat "$ckpt/latest_checkpointed_iteration.txt")
  rm -rf "$run/hf_model"
  cp -r "$ckpt/global_step_$step/actor/huggingface" "$run/hf_model"
  echo "$step" > "$run/hf_model_step.txt"
  log "$1: HF model of step $step in $run/hf_model"
}

runs() {  # one line per run, "NAME LOSS_ON RL_SEED": for each of RL_SEEDS, main (all_turns) then ablation (last_turn)
  local seed
  for seed in $RL_SEEDS; do
    echo "$(run_name main "$seed") all_turns $seed"
    echo "$(run_name ablation "$seed") last_turn $seed"
  done
}
run_names() { runs | cut -d ' ' -f 1; }

curves() {
  local runs=() name
  for name in $(run_names); do runs+=(--run "$name=$WORK/runs/$name"); done
  "$PY" scripts/plot_needle_curves.py "${runs[@]}" --out "$OUT" || log "plotting failed"
}

if has_stage prepare; then
  if [ -n "${SFT_FROM:-}" ]; then
    SFT_FROM=$(cd "$SFT_FROM" && pwd) || exit 1
    case $SFT_FROM/ in "$WORK"/*) echo "SFT_FROM=$SFT_FROM lies in WORK, which prepare empties" >&2; exit 1 ;; esac
    [ -f "$SFT_FROM/sft_metrics.json" ] || { echo "SFT_FROM=$SFT_FROM holds no sft_metrics.json" >&2; exit 1; }
  fi
  rm -rf "$WORK"
  mkdir -p "$WORK/runs"
  [ -n "${SFT_FROM:-}" ] || "$PY" -m sparse_video_r1.synthetic.tiny_model "$WORK/tiny"  # the base of the cold start
  log "generating needle videos"
  "$PY" -m sparse_video_r1.synthetic.needle --out "$WORK/data" --train "${TRAIN:-512}" --val "${VAL:-128}" --seed "$SEED" \
    --traces "${TRACES:-1}" --reading "${READING:-256}" --dialogue "$DIALOGUE" > "$WORK/needle_data.json"
  if [ -n "${SFT_FROM:-}" ]; then
    # Seeds spread over several machines share one cold start: the data regenerate identically from SEED (under
    # the same WORK), the SFT model (not bit-reproducible on a GPU) comes from an earlier needle_models.tgz.
    log "SFT cold start taken from $SFT_FROM"
    cp -r "$SFT_FROM" "$WORK/sft"
  else
    log "SFT cold start"
    "$PY" -m sparse_video_r1.training.sft --dialogue "$DIALOGUE" train --model "$WORK/tiny" \
      --traces "$WORK/data/traces.jsonl" --out "$WORK/sft" --epochs "${SFT_EPOCHS:-6}" --lr "${SFT_LR:-3e-4}" \
      --seed "$SEED" --dtype float32 --max-grad-norm "${SFT_MAX_GRAD_NORM:-1.0}" > "$WORK/sft.log" 2>&1
  fi
  cp "$WORK/sft/sft_metrics.json" "$OUT/"
  log "SFT done: $("$PY" -c 'import json, sys; m = json.load(open(sys.argv[1])); print({k: m[k] for k in ("examples", "first_epoch_loss", "last_epoch_loss", "seconds")})' "$WORK/sft/sft_metrics.json")"
fi
[ -d "$WORK/sft" ] || { echo "no $WORK/sft: run STAGE=prepare first (the device machine was replaced?)" >&2; exit 1; }
mapfile -t RUNS < <(runs)
SAMPLER=
if has_stage train || has_stage main || has_stage ablation; then  # what the runs take of the GPU and the host
  bash scripts/gpu/sample_memory.sh "$WORK/memory/$(date +%s)" &
  SAMPLER=$!
  trap 'kill $SAMPLER 2>/dev/null || true' EXIT
fi
if has_stage train && [ "$PARALLEL" = 1 ]; then
  pids=()
  for slot in "${!RUNS[@]}"; do
    read -r name loss_on seed <<< "${RUNS[$slot]}"
    mkdir -p "$WORK/runs/$name"
    log "$name: slot $((slot + 1)) (log $WORK/runs/$name/driver.log)"
    SLOT=$((slot + 1)) grpo "$name" "$loss_on" "$seed" "$@" > "$WORK/runs/$name/driver.log" 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}"  # the runs, not the memory sampler
  for name in $(run_names); do tail -n 8 "$WORK/runs/$name/driver.log"; done
elif has_stage train; then
  left=${#RUNS[@]}
  for line in "${RUNS[@]}"; do  # each run gets an equal share of what is left of the deadline
    read -r name loss_on seed <<< "$line"
    RUN_DEADLINE=$(($(date +%s) + (DEADLINE - $(date +%s)) / left)) grpo "$name" "$loss_on" "$seed" "$@"
    left=$((left - 1))
  done
fi
for arm in main:all_turns ablation:last_turn; do  # the single-arm stages: every seed of that arm, in turn
  has_stage "${arm%%:*}" || continue
  for line in "${RUNS[@]}"; do
    read -r name loss_on seed <<< "$line"
    if [ "$loss_on" = "${arm#*:}" ]; then grpo "$name" "$loss_on" "$seed" "$@"; fi
  done
done
{ [ -n "$SAMPLER" ] && kill "$SAMPLER"; } 2>/dev/null || true  # before the report, whose `wait` is for its evaluations
if ! has_stage report && compgen -G "$WORK/runs/*/" > /dev/null; then curves; fi

if has_stage report; then
  evaluate() {  # evaluate NAME MODEL [evaluate flags...]: vLLM, greedy, the held-out split
    local name=$1 model=$2
    shift 2
    if [ ! -d "$model" ]; then log "eval $name: no model at $model"; return 0; fi
    log "eval $name: $model"
    timeout -k 10 "$((DEADLINE - $(date +%s)))" "$PY" -m sparse_video_r1.tools.evaluate --model "$model" \
      --data "$WORK/test/val.parquet" --out "$WORK/eval/$name" --backend vllm --enforce-eager \
      --gpu-memory-utilization "$GPU_UTIL" --vllm-kwargs "{\"kv_cache_memory_bytes\": $((KV_CACHE_GB << 30))}" \
      "${EVAL_DIALOGUE[@]}" "$@" > "$WORK/eval/$name.log" 2>&1 \
      || log "eval $name failed or was stopped: $(tail -n 3 "$WORK/eval/$name.log")"
  }
  mkdir -p "$WORK/eval"
  "$PY" -m sparse_video_r1.synthetic.needle --out "$WORK/test" --train 0 --val "${TEST_VIDEOS:-512}" \
    --seed "${TEST_SEED:-1000}" --dialogue "$DIALOGUE" > "$WORK/test_data.json"
  # All engines at once, like the training runs: fixed KV caches, so no engine profiles memory.
  evaluate sft "$WORK/sft" --uniform 4,6,8,16,32 &
  evals=(--eval "sft=$WORK/eval/sft")
  for name in $(run_names); do
    evaluate "$name" "$WORK/runs/$name/hf_model" --uniform 4,5,6 &
    evals+=(--eval "$name=$WORK/eval/$name")
  done
  wait
  curves
  "$PY" scripts/plot_needle_curves.py --val "$WORK/test/val.parquet" --out "$OUT" "${evals[@]}" \
    || log "table failed"
fi
# What comes back (at most 8 files of 16 MiB): the curves and table above, sft_metrics.json and two archives,
# the models first (a failure in packing the logs must not cost them, as it did in attempt 5).
# needle_models.tgz: the SFT cold start in float32 (later seeds start from it: SFT_FROM) and each RL model in bfloat16,
# the weights vLLM evaluated (scripts/model_bf16.py), at half the bytes; in parts of MODELS_PART_MB (15) when larger.
rm -rf "$WORK/pack_models" "$OUT"/needle_models.tgz*
mkdir -p "$WORK/pack_models/runs"
cp -r "$WORK/sft" "$WORK/pack_models/sft"
for model in "$WORK"/runs/*/hf_model; do
  [ -d "$model" ] || continue
  run=$(basename "$(dirname "$model")")
  "$PY" scripts/model_bf16.py "$model" "$WORK/pack_models/runs/$run/hf_model" > /dev/null \
    || log "$run: no bfloat16 copy of its model"
  cp "$WORK/runs/$run/hf_model_step.txt" "$WORK/pack_models/runs/$run/" 2>/dev/null || true
done
tar czf "$WORK/needle_models.tgz" -C "$WORK/pack_models" sft runs
if [ "$(stat -c %s "$WORK/needle_models.tgz")" -le $((${MODELS_PART_MB:-15} << 20)) ]; then
  cp "$WORK/needle_models.tgz" "$OUT/"
else
  split -b "${MODELS_PART_MB:-15}M" -d -a 1 "$WORK/needle_models.tgz" "$OUT/needle_models.tgz.part"
  log "needle_models.tgz in parts: cat needle_models.tgz.part* > needle_models.tgz"
fi
# needle_runs.tgz: logs, verl metrics, validation dumps, evaluations, memory samples and the rollout dumps of step 1,
# every 25th and the last step, verl's (rollouts/) and the dialogue records (rollouts/dialogues/) alike; the curves hold
# every step's means. Each folder is listed on its own: attempt 5 took the last step from both folders at once and
# asked tar for rollouts/136.jsonl, which only dialogues/ had (the deadline stopped verl before its own dump), and
# tar's error stopped the script. A file tar cannot read is now skipped as well.
(
  cd "$WORK"
  find runs eval memory needle_data.json test_data.json sft.log train_stage.log -type f ! -path '*/rollouts/*' ! -path '*/hf_model/*' \
    2>/dev/null || true
  for dumps in runs/*/rollouts runs/*/rollouts/dialogues; do
    [ -d "$dumps" ] || continue
    find "$dumps" -maxdepth 1 -type f -name '*.jsonl' | "$PY" -c '
import sys
from pathlib import Path
dumps = sorted((int(Path(p).stem), p) for p in sys.stdin.read().split() if Path(p).stem.isdigit())
last = dumps[-1][0] if dumps else None
print("\n".join(p for step, p in dumps if step == 1 or step % 25 == 0 or step == last))'
  done
) > "$WORK/pack.txt"
tar czf "$OUT/needle_runs.tgz" --ignore-failed-read -C "$WORK" -T "$WORK/pack.txt" || log "needle_runs.tgz: tar reported errors"
log "done: $(cd "$OUT" && du -h -- * | tr '\t\n' ': ')"
