#!/usr/bin/env bash
# Pretrain the 104M cognitive core (QK-norm + Muon) on FineWeb-Edu: one 24 GB GPU by default,
# the same script on 8 GPUs or on several nodes (the global batch stays 512 x 1024 tokens).
# Global batch = sequences per optimizer step = MICRO_BATCH x grad_accum x GPUs (micro_batch and
# grad_accum are per GPU, as the trainer reads them); the recipe derives grad_accum from GLOBAL_BATCH
# so it is the same on any number of GPUs. PLAN=1 NPROC=8 plans exactly what
# `python -m scripts.plan CONFIG --n 8 --global-batch 512` does.
#   PLAN=1 bash recipes/pretrain_core.sh                 # memory, time and cost first; runs nothing
#   PLAN=1 GPU=h100 NPROC=8 bash recipes/pretrain_core.sh
#   bash recipes/pretrain_core.sh                        # every visible GPU of this machine
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 bash recipes/pretrain_core.sh   # then NODE_RANK=1 on host1
#   CONFIG=recipes/configs/core_104m_baseline.toml bash recipes/pretrain_core.sh  # Llama2 + AdamW
#   bash recipes/pretrain_core.sh train.steps=2000       # extra arguments are config overrides
# Knobs: those of recipes/lib.sh (NPROC NNODES NODE_RANK MASTER_ADDR MASTER_PORT WANDB_RUN DATA_DIR
# OUT PLAN GPU), and CONFIG, CORPUS, MAX_DOCS, VOCAB_SIZE, VAL_FRACTION, MICRO_BATCH, GLOBAL_BATCH.
# The run directory ($OUT/<config name>) gets config.toml with the resolved config and git commit.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

CONFIG="${CONFIG:-recipes/configs/core_104m.toml}"
NAME="${NAME:-$(basename "$CONFIG" .toml)}"
CORPUS="${CORPUS:-fineweb-edu}"   # fineweb-edu | minimind | a local file or glob (.jsonl, .parquet, .txt)
MAX_DOCS="${MAX_DOCS:-1000000}"   # ~1.3B tokens of FineWeb-Edu at vocab 6400; all held in RAM while preparing
VOCAB_SIZE="${VOCAB_SIZE:-6400}"  # MiniMind2's vocabulary size
VAL_FRACTION="${VAL_FRACTION:-0.005}"
MICRO_BATCH="${MICRO_BATCH:-16}"  # sequences per GPU per micro-step: fits 24 GB at seq 1024 (PLAN=1 checks)
GLOBAL_BATCH="${GLOBAL_BATCH:-512}"  # sequences per optimizer step over all GPUs, whatever their number

if (( GLOBAL_BATCH % (MICRO_BATCH * WORLD) )); then
    echo "error: GLOBAL_BATCH=$GLOBAL_BATCH is not a multiple of MICRO_BATCH=$MICRO_BATCH x $WORLD GPUs;" \
         "change MICRO_BATCH or GLOBAL_BATCH" >&2
    exit 2
fi
GRAD_ACCUM=$((GLOBAL_BATCH / (MICRO_BATCH * WORLD)))

case "$CORPUS" in
    fineweb-edu) SET=fineweb_edu
        SOURCE=(--hf HuggingFaceFW/fineweb-edu --hf-config sample-10BT --licence odc-by-1.0 --lang en) ;;
    minimind) SET=minimind_pretrain  # MiniMind's 1.6 GB pretraining jsonl, mostly Chinese
        SOURCE=(--hf jingyaogong/minimind_dataset --hf-data-files pretrain_hq.jsonl --licence apache-2.0 --lang zh) ;;
    *) SET="${SET:-local}"
        SOURCE=(--files "$CORPUS") ;;
esac
DATA="$DATA_DIR/$SET"
RUN_DIR="$OUT/$NAME"
OVERRIDES=(data.path="$DATA" train.out_dir="$RUN_DIR" model.vocab_size="$VOCAB_SIZE"
           train.micro_batch="$MICRO_BATCH" train.grad_accum="$GRAD_ACCUM" "${TRACKING[@]}" "$@")

PLAN_ARGS="--global-batch $GLOBAL_BATCH $PLAN_ARGS"   # the planner derives the same grad_accum
maybe_plan "$CONFIG" "${OVERRIDES[@]}"   # PLAN=1 stops here: no download, no data, no run

stage "data: $CORPUS -> $DATA (tokenizer $VOCAB_SIZE, up to $MAX_DOCS documents)"
# Streams the corpus from the Hugging Face hub, which the project's tests cannot reach: they run
# this recipe on a local file (CORPUS=path) instead.
if [ -f "$DATA/manifest.json" ]; then
    echo "already prepared"
elif [ "$NODE_RANK" = "0" ]; then
    "$PY" -m data_prep.prepare --out "$DATA" "${SOURCE[@]}" --max-docs "$MAX_DOCS" \
        --vocab-size "$VOCAB_SIZE" --val-fraction "$VAL_FRACTION" --num-proc "$(nproc)"
else  # other nodes read node 0's set: DATA_DIR on a shared filesystem (or copy it there first)
    echo "waiting for node 0 to prepare $DATA"
    until [ -f "$DATA/manifest.json" ]; do sleep 30; done
fi

stage "pretrain: $CONFIG on $NNODES node(s) x $NPROC GPU(s), micro batch $MICRO_BATCH x accum $GRAD_ACCUM -> $RUN_DIR"
launch minimodel.pretrain --config "$CONFIG" "${OVERRIDES[@]}"

stage "done: $RUN_DIR (config.toml, metrics.jsonl, checkpoints/, final/ in Hugging Face format)"
