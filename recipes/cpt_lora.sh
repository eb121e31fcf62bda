#!/usr/bin/env bash
# Teach a base Korean by continued pretraining through LoRA (+ embed_tokens/lm_head), with replay.
#   RECIPE=core bash recipes/cpt_lora.sh        # our 104M core -> Korean Wikipedia, 5% English replay
#   RECIPE=mistral7b bash recipes/cpt_lora.sh   # the reference: Mistral-7B, unsloth 4-bit, rank 128, 5e-5/1e-5
#   REPLAY=0.25 RANK=64 bash recipes/cpt_lora.sh    # the knobs the forgetting report compares
#   LORA=false bash recipes/cpt_lora.sh             # full fine-tuning at the same token budget (reference arm)
# Knobs: those of recipes/lib.sh (NPROC NNODES NODE_RANK MASTER_ADDR MASTER_PORT WANDB_RUN DATA_DIR OUT)
# and RECIPE, BASE, KO_DOCS, EN_DOCS, REPLAY, RANK, LORA, NAME, PLAN. Needs the hub for the data (and base).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

RECIPE="${RECIPE:-core}"
KO_DOCS="${KO_DOCS:-300000}"        # ~5% of Korean Wikipedia's 650k articles, as in the reference run
REPLAY="${REPLAY:-0.05}"
LORA="${LORA:-true}"
case "$RECIPE" in
    core) CONFIG=recipes/configs/cpt_core_ko.toml; BASE="${BASE:-$OUT/core_104m}" ;;
    mistral7b) CONFIG=recipes/configs/cpt_7b_unsloth.toml; BASE="${BASE:-mistralai/Mistral-7B-v0.3}" ;;
    *) echo "error: RECIPE must be core or mistral7b" >&2; exit 2 ;;
esac
NAME="${NAME:-cpt_${RECIPE}_ko_replay${REPLAY}_lora${LORA}${RANK:+_r$RANK}}"
KO_RAW="$DATA_DIR/kowiki_raw.jsonl"
# PLAN=1: memory per GPU, time and cost of this stage (frozen base, trainable adapters); runs nothing
maybe_plan "$CONFIG" base.path="$BASE" lora.enabled="$LORA" ${RANK:+lora.rank=$RANK}

stage "data: $KO_DOCS Korean Wikipedia articles -> $KO_RAW"
if [ ! -f "$KO_RAW" ]; then
    "$PY" - "$KO_RAW" "$KO_DOCS" <<'PY'
import itertools, json, sys
from datasets import load_dataset
from minimodel.io import write_text
rows = load_dataset("wikimedia/wikipedia", "20231101.ko", split="train", streaming=True)
lines = (json.dumps({"id": r["id"], "text": r["text"]}, ensure_ascii=False) for r in rows)
write_text(sys.argv[1], "\n".join(itertools.islice(lines, int(sys.argv[2]))) + "\n")
PY
fi

if [ "$RECIPE" = core ]; then
    BASE_TOK="$BASE/final/tokenizer.model"
    EXT_TOK="$DATA_DIR/tokenizers/core_ext_ko.model"
    stage "tokenizer: extend the core's with Korean pieces (new rows start from their sub-pieces)"
    [ -f "$EXT_TOK" ] || "$PY" -m data_prep.vocab_ext --base "$BASE_TOK" --input "ko=$KO_RAW" \
        --new-vocab-size 8000 --out "$EXT_TOK"
    stage "data: Korean shards and the English replay set, both with the extended tokenizer"
    [ -f "$DATA_DIR/kowiki_ext/manifest.json" ] || "$PY" -m data_prep.prepare --out "$DATA_DIR/kowiki_ext" \
        --files "$KO_RAW" --lang ko --licence cc-by-sa-4.0 --tokenizer "$EXT_TOK" --num-proc "$(nproc)"
    [ -f "$DATA_DIR/fineweb_ext/manifest.json" ] || "$PY" -m data_prep.prepare --out "$DATA_DIR/fineweb_ext" \
        --hf HuggingFaceFW/fineweb-edu --hf-config sample-10BT --max-docs "${EN_DOCS:-100000}" --lang en \
        --licence odc-by-1.0 --tokenizer "$EXT_TOK" --num-proc "$(nproc)"
    DATA_ARGS=(data.path="$DATA_DIR/kowiki_ext" replay.path="$DATA_DIR/fineweb_ext" replay.ratio="$REPLAY")
else
    stage "data: Korean shards with Mistral's own tokenizer"
    TOK="$DATA_DIR/tokenizers/mistral7b.model"
    [ -f "$TOK" ] || "$PY" -c "from huggingface_hub import hf_hub_download as d; import shutil, sys; \
shutil.copy(d('$BASE', 'tokenizer.model'), sys.argv[1])" "$TOK"
    [ -f "$DATA_DIR/kowiki_mistral/manifest.json" ] || "$PY" -m data_prep.prepare --out "$DATA_DIR/kowiki_mistral" \
        --files "$KO_RAW" --lang ko --licence cc-by-sa-4.0 --tokenizer "$TOK" --num-proc "$(nproc)"
    DATA_ARGS=(data.path="$DATA_DIR/kowiki_mistral")
fi

stage "cpt: $BASE -> $OUT/$NAME (lora=$LORA${RANK:+ rank $RANK}, replay $REPLAY)"
launch minimodel.cpt --config "$CONFIG" base.path="$BASE" "${DATA_ARGS[@]}" lora.enabled="$LORA" \
    ${RANK:+lora.rank=$RANK} train.out_dir="$OUT/$NAME" "${TRACKING[@]}"
stage "done: $OUT/$NAME (adapter/, final/ merged, metrics.jsonl with val_bpb per language)"
