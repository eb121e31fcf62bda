#!/usr/bin/env bash
# Korean instruction SFT (LoRA) on top of a CPT result: the reference recipe's second stage.
#   BASE=runs/cpt_core_ko_replay0.05_loratrue bash recipes/sft.sh
# Knobs: those of recipes/lib.sh, and BASE (a CPT run dir), DATASET (default
# FreedomIntelligence/alpaca-gpt4-korean), MAX_EXAMPLES, STEPS, NAME, PLAN. Needs the hub for the data.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

BASE="${BASE:?set BASE to a CPT run directory, e.g. runs/cpt_core_ko_replay0.05_loratrue}"
[ -d "$BASE" ] || {  # a CPT run directory (its tokenizer makes the data): never a hub id
    echo "error: base not found locally: $BASE (a CPT run directory: run recipes/cpt_lora.sh first, or set BASE)" >&2
    exit 2; }
DATASET="${DATASET:-FreedomIntelligence/alpaca-gpt4-korean}"
NAME="${NAME:-sft_$(basename "$BASE")}"
SET="$DATA_DIR/sft_$(basename "$DATASET" | tr '[:upper:]' '[:lower:]')_$(basename "$BASE")"
maybe_plan recipes/configs/sft_ko.toml base.path="$BASE" ${STEPS:+train.steps=$STEPS}   # PLAN=1: plan only

stage "data: $DATASET -> $SET (ChatML, loss on assistant tokens only)"
[ -f "$SET/manifest.json" ] || "$PY" -m data_prep.sft --out "$SET" --tokenizer "$BASE/final/tokenizer.model" \
    --hf "$DATASET" ${MAX_EXAMPLES:+--max-examples $MAX_EXAMPLES} --max-tokens 2048

stage "sft: $BASE -> $OUT/$NAME"
launch minimodel.sft --config recipes/configs/sft_ko.toml base.path="$BASE" data.path="$SET" \
    ${STEPS:+train.steps=$STEPS} \
    train.out_dir="$OUT/$NAME" "${TRACKING[@]}"
stage "done: $OUT/$NAME"
