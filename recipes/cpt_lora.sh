#!/usr/bin/env bash
# Teach a base Korean by continued pretraining through LoRA (+ embed_tokens/lm_head), with replay.
#   RECIPE=core bash recipes/cpt_lora.sh        # our 104M core -> Korean Wikipedia, 5% English replay
#   RECIPE=mistral7b bash recipes/cpt_lora.sh   # the reference: Mistral-7B, 4-bit, rank 128, 5e-5/1e-5: unsloth
#                                               # where it imports, else peft + bitsandbytes (cpt_7b.toml)
#   RECIPE=qwen3_0.6b bash recipes/cpt_lora.sh  # a small hub base with its own tokenizer.json; also
#                                               # smollm2_360m, llama3.2_1b, gemma3_270m (gated ones need hf auth login)
#   RECIPE=all PLAN=1 bash recipes/cpt_lora.sh  # memory and time of every preset (reads each base's config.json)
#   REPLAY=0.25 RANK=64 bash recipes/cpt_lora.sh    # the knobs the forgetting report compares
#   LORA=false bash recipes/cpt_lora.sh             # full fine-tuning at the same token budget (reference arm)
# Knobs: those of recipes/lib.sh (NPROC NNODES NODE_RANK MASTER_ADDR MASTER_PORT WANDB_RUN DATA_DIR OUT)
# and RECIPE, BASE, KO_DOCS, EN_DOCS, REPLAY, RANK, LORA, NAME, PLAN, MISTRAL_CONFIG (RECIPE=mistral7b: force
# recipes/configs/cpt_7b.toml or cpt_7b_unsloth.toml). Needs the hub for the data (and base).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

RECIPE="${RECIPE:-core}"
KO_DOCS="${KO_DOCS:-300000}"        # ~5% of Korean Wikipedia's 650k articles, as in the reference run
REPLAY="${REPLAY:-0.05}"
LORA="${LORA:-true}"
# Small hub bases that ship their own tokenizer.json: hub id, learning rate, LoRA rank, sequence length.
declare -A HF_BASES=(
    [qwen3_0.6b]="Qwen/Qwen3-0.6B 1e-4 64 1024"
    [smollm2_360m]="HuggingFaceTB/SmolLM2-360M 2e-4 64 1024"
    [llama3.2_1b]="meta-llama/Llama-3.2-1B 1e-4 64 1024"
    [gemma3_270m]="google/gemma-3-270m 2e-4 32 1024"
)
if [ "$RECIPE" = all ]; then  # PLAN=1 for every preset, one after another
    [ "$PLAN" = 1 ] || { echo "error: RECIPE=all is for PLAN=1" >&2; exit 2; }
    for r in core mistral7b "${!HF_BASES[@]}"; do
        echo "== $r"; RECIPE="$r" PLAN=1 bash "$ROOT/recipes/cpt_lora.sh" || true
    done
    exit 0
fi
HF_ARGS=()
case "$RECIPE" in
    core) CONFIG=recipes/configs/cpt_core_ko.toml; BASE="${BASE:-$OUT/core_104m}" ;;
    mistral7b)  # unsloth's kernels where unsloth imports (a GPU); otherwise the peft path (QLoRA, checkpointing)
        if [ -z "${MISTRAL_CONFIG:-}" ] && "$PY" -c "import unsloth" >/dev/null 2>&1; then
            MISTRAL_CONFIG=recipes/configs/cpt_7b_unsloth.toml
        fi
        CONFIG="${MISTRAL_CONFIG:-recipes/configs/cpt_7b.toml}"; BASE="${BASE:-mistralai/Mistral-7B-v0.3}" ;;
    *)
        [ -n "${HF_BASES[$RECIPE]:-}" ] || {
            echo "error: RECIPE must be core, mistral7b, all (with PLAN=1) or one of: ${!HF_BASES[*]}" >&2; exit 2; }
        read -r hub lr rank seq <<< "${HF_BASES[$RECIPE]}"
        CONFIG=recipes/configs/cpt_hf_base.toml; BASE="${BASE:-$hub}"
        HF_ARGS=(optim.lr="$lr" data.seq_len="$seq")
        RANK="${RANK:-$rank}" ;;
esac
if [ "$RECIPE" = core ] && [ ! -d "$BASE" ]; then  # a local run by construction: never ask the hub for it
    echo "error: base not found locally: $BASE (the 104M core: pretrain it first with bash recipes/pretrain_core.sh," \
         "or set BASE to a run directory)" >&2
    exit 2
fi
NAME="${NAME:-cpt_${RECIPE}_ko_replay${REPLAY}_lora${LORA}${RANK:+_r$RANK}}"
KO_RAW="$DATA_DIR/kowiki_raw.jsonl"
# PLAN=1: memory per GPU, time and cost of this stage (frozen base, trainable adapters); runs nothing
maybe_plan "$CONFIG" base.path="$BASE" lora.enabled="$LORA" ${RANK:+lora.rank=$RANK} "${HF_ARGS[@]}"

stage "data: $KO_DOCS Korean Wikipedia articles -> $KO_RAW"
if [ ! -f "$KO_RAW" ]; then
    "$PY" - "$KO_RAW" "$KO_DOCS" <<'PY'
import itertools, json, sys
from data_prep.sources import hf_records
from minimodel.common.errors import cli_entry
from minimodel.common.io import write_text
def main():  # offline or unreachable hub: one error line (cli_entry), no file
    rows = (r for _, r in hf_records("wikimedia/wikipedia", "20231101.ko"))
    lines = (json.dumps({"id": r["id"], "text": r["text"]}, ensure_ascii=False) for r in rows)
    write_text(sys.argv[1], "\n".join(itertools.islice(lines, int(sys.argv[2]))) + "\n")
cli_entry(main)()
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
elif [ "$RECIPE" != mistral7b ]; then
    stage "data: Korean shards and the English replay set with $BASE's own tokenizer"
    KO_SET="$DATA_DIR/kowiki_$RECIPE" EN_SET="$DATA_DIR/fineweb_$RECIPE"
    [ -f "$KO_SET/manifest.json" ] || "$PY" -m data_prep.prepare --out "$KO_SET" --files "$KO_RAW" --lang ko \
        --licence cc-by-sa-4.0 --tokenizer "$BASE" --num-proc "$(nproc)"
    [ -f "$EN_SET/manifest.json" ] || "$PY" -m data_prep.prepare --out "$EN_SET" \
        --hf HuggingFaceFW/fineweb-edu --hf-config sample-10BT --max-docs "${EN_DOCS:-100000}" --lang en \
        --licence odc-by-1.0 --tokenizer "$BASE" --num-proc "$(nproc)"
    DATA_ARGS=(data.path="$KO_SET" replay.path="$EN_SET" replay.ratio="$REPLAY" "${HF_ARGS[@]}")
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
