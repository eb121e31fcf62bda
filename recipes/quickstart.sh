#!/usr/bin/env bash
# minimodel quick start: the main job end to end on a CPU, no GPU and no hub needed.
#   bash recipes/quickstart.sh          # re-running skips finished stages
#   FORCE=1 bash recipes/quickstart.sh  # redo every stage
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE="${WANDB_MODE:-disabled}"
OUT="${OUT:-runs/quickstart}"
DATA="${DATA_DIR:-data}"
FORCE="${FORCE:-0}"
stage() { echo; echo "==> [$(date +%H:%M:%S)] $*"; }
done_or_force() { [ "$FORCE" != "1" ] && [ -e "$1" ]; }

stage "1/2 data: English demo set (tokenizer + shards) in $DATA/demo_en"
if done_or_force "$DATA/demo_en/manifest.json"; then echo "already prepared"; else
    "$PY" -m data_prep.demo --out "$DATA" ${FORCE:+$( [ "$FORCE" = 1 ] && echo --force)}
fi

stage "2/2 pretrain: tiny core, QK-norm + Muon -> $OUT/core"
if done_or_force "$OUT/core/final/model.safetensors"; then echo "already trained"; else
    [ "$FORCE" = "1" ] && rm -rf "$OUT/core"
    "$PY" -m minimodel.pretrain --config recipes/configs/core_tiny.toml \
        data.path="$DATA/demo_en" train.out_dir="$OUT/core"
fi

stage "done: run directory $OUT/core (config.toml, metrics.jsonl, checkpoints/, final/)"
