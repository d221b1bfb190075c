#!/usr/bin/env bash
# Can the tiny Qwen2.5-VL learn the needle task's cue at all? A CPU check, no GPU needed (~12 min on 2 cores).
# SFT on *informed* traces (every request goes straight to the card, `needle --informed`), then the held-out
# evaluation (transformers, greedy): if the model then requests the card's time far more often than the
# uninformed cold start does (10 % of dialogues), the cue -> time mapping is learnable, and an RL run that does
# not find it is short of signal or steps, not of capacity. Never a cold start for RL.
#
#   bash scripts/needle_learnability.sh OUT_DIR     # writes OUT_DIR/{needle_table.md,needle_table.json,settings.json}
#
# Knobs: WORK (/tmp/svr1_learnability), TRAIN (512), VAL (128), READING (256), EPOCHS (6), LR (3e-4), SEED (0),
# SHAPE (tiny: a tiny_model.SHAPES name), MAX_GRAD_NORM (unset: no clipping).
set -euo pipefail
PY=${PYTHON:-python3}
OUT=$(mkdir -p "${1:?usage: needle_learnability.sh OUT_DIR}" && cd "$1" && pwd)
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/svr1_learnability}
source scripts/needle_dialogue.sh
rm -rf "$WORK" && mkdir -p "$WORK"
"$PY" -m sparse_video_r1.synthetic.tiny_model "$WORK/tiny" --shape "${SHAPE:-tiny}"
"$PY" -m sparse_video_r1.synthetic.needle --out "$WORK/data" --train "${TRAIN:-512}" --val "${VAL:-128}" --seed "${SEED:-0}" \
  --traces 1 --reading "${READING:-256}" --informed --dialogue "$DIALOGUE" > "$WORK/needle_data.json"
"$PY" -m sparse_video_r1.training.sft --dialogue "$DIALOGUE" train --model "$WORK/tiny" --traces "$WORK/data/traces.jsonl" \
  --out "$WORK/sft" --epochs "${EPOCHS:-6}" --lr "${LR:-3e-4}" --seed "${SEED:-0}" --dtype float32 \
  ${MAX_GRAD_NORM:+--max-grad-norm "$MAX_GRAD_NORM"} > "$WORK/sft.log" 2>&1
"$PY" -m sparse_video_r1.tools.evaluate --model "$WORK/sft" --data "$WORK/data/val.parquet" --out "$WORK/eval" \
  --backend transformers --temperature 0 --uniform 4 "${EVAL_DIALOGUE[@]}" --response-length 384 > "$WORK/eval.log" 2>&1
"$PY" scripts/plot_needle_curves.py --val "$WORK/data/val.parquet" --eval "informed_sft=$WORK/eval" --out "$OUT"
cp "$WORK/sft/sft_metrics.json" "$OUT/"
"$PY" - "$OUT/settings.json" "$DIALOGUE" "$WORK/needle_data.json" <<'PY'
import json, os, sys
out, dialogue, data = sys.argv[1:]
settings = {
    "command": "bash scripts/needle_learnability.sh",
    "dialogue": json.loads(dialogue),
    "data": json.load(open(data)),
    "model": {"shape": os.environ.get("SHAPE", "tiny")},
    "sft": {"epochs": int(os.environ.get("EPOCHS", 6)), "lr": float(os.environ.get("LR", 3e-4)), "traces": "informed",
            "max_grad_norm": float(os.environ["MAX_GRAD_NORM"]) if os.environ.get("MAX_GRAD_NORM") else None},
    "evaluation": {"backend": "transformers", "temperature": 0, "response_length": 384, "uniform": [4]},
}
json.dump(settings, open(out, "w"), indent=2)
PY
echo "done: $(ls "$OUT")"
