#!/usr/bin/env bash
# The needle models of a GPU attempt, re-evaluated on CPU on a larger fresh held-out set: the GPU report stage
# scores 128 videos (one standard error of a 10 % hit rate is ~2.7 points); this scores VAL (512) new ones, drawn
# by the same generator with another seed. Adaptive dialogues only, greedy, transformers backend (~8 min a model on
# 2 cores): the SFT model and every RL run in the archive (bfloat16 RL models are widened to float32 without loss).
#
#   bash scripts/needle_heldout_cpu.sh needle_models.tgz OUT_DIR
#   (an archive that came back in parts: cat needle_models.tgz.part* > needle_models.tgz first)
# The videos come from today's generator: models trained on another cue (attempt 4's grey level) are re-checked from
# their own commit (git worktree add /tmp/a4 0f6e590), where the generator drew that cue.
#
# Writes OUT_DIR/{needle_table.md,needle_table.json,settings.json}. Knobs: WORK (/tmp/svr1_heldout), VAL (512), SEED (7).
set -euo pipefail
PY=${PYTHON:-python3}
MODELS=$(realpath "${1:?usage: needle_heldout_cpu.sh MODELS_TGZ OUT_DIR}")
OUT=$(mkdir -p "${2:?usage: needle_heldout_cpu.sh MODELS_TGZ OUT_DIR}" && cd "$2" && pwd)
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/svr1_heldout}
VAL=${VAL:-512}
SEED=${SEED:-7}
source scripts/needle_dialogue.sh
rm -rf "$WORK" && mkdir -p "$WORK/models"
tar xzf "$MODELS" -C "$WORK/models"
"$PY" -m sparse_video_r1.synthetic.needle --out "$WORK/data" --train 0 --val "$VAL" --seed "$SEED" --traces 0 --reading 0 \
  --dialogue "$DIALOGUE" > "$WORK/needle_data.json"
evals=()
runs=$(cd "$WORK/models" && for model in runs/*/hf_model; do if [ -d "$model" ]; then basename "$(dirname "$model")"; fi; done)
for name in sft $runs; do
  model=$WORK/models/sft
  [ "$name" = sft ] || model=$WORK/models/runs/$name/hf_model
  "$PY" -m sparse_video_r1.tools.evaluate --backend transformers --device cpu --model "$model" \
    --data "$WORK/data/val.parquet" --out "$WORK/eval/$name" --temperature 0 --uniform "" \
    "${EVAL_DIALOGUE[@]}" --response-length 384 > "$WORK/eval_$name.log" 2>&1
  evals+=(--eval "$name=$WORK/eval/$name")
done
"$PY" scripts/plot_needle_curves.py --val "$WORK/data/val.parquet" "${evals[@]}" --out "$OUT"
"$PY" - "$OUT/settings.json" "$WORK" "$1" "$VAL" "$SEED" <<'PY'
import json, sys
from pathlib import Path
out, work, models, val, seed = sys.argv[1:]
steps = {step.parent.name: step.read_text().strip() for step in sorted(Path(work, "models/runs").glob("*/hf_model_step.txt"))}
settings = {
    "command": f"bash scripts/needle_heldout_cpu.sh {models} OUT",
    "held_out": {"videos": int(val), "seed": int(seed), "generator": "python -m sparse_video_r1.synthetic.needle --train 0"},
    "models": {"sft": "sft", **{run: f"GRPO step {step}" for run, step in steps.items()}},
    "evaluation": {"backend": "transformers", "device": "cpu", "temperature": 0, "methods": ["adaptive"]},
    "evaluate_settings": json.load(open(Path(work, "eval/sft/settings.json"))),
}
json.dump(settings, open(out, "w"), indent=2)
PY
echo "done: $(ls "$OUT")"
