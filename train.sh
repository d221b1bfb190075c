#!/bin/sh
# Train Sparse-Video-R1 on NExT-QA:  sh train.sh [hydra overrides...]
# Edit the three paths (the same ones as in scripts/run_qwen2_5_vl_template.sh) or export them.
# Preprocessing runs once, when the parquet files are missing.
set -eu
PY=${PYTHON:-python3}

export HF_HOME="${HF_HOME:-/path/to/hf_home}"
export DATA_DIR="${DATA_DIR:-/path/to/data/nextqa}"
export ROW_DATA="${ROW_DATA:-/path/to/NExT-QA}"

cd "$(dirname "$0")"
if [ ! -f "$DATA_DIR/train.parquet" ] || [ ! -f "$DATA_DIR/val.parquet" ]; then
  "$PY" dataset/NExT_QA.py --raw "$ROW_DATA" --out "$DATA_DIR" --splits train val
fi
exec bash scripts/run_qwen2_5_vl_template.sh "$@"
