#!/usr/bin/env bash
# The optimizer x QK-norm ablation: {AdamW, Muon} x {QK-norm off, on}, each arm with its own
# learning-rate sweep and 2 seeds at its best lr, equal tokens, compared after decay.
#
#   bash recipes/ablation.sh                                   # CPU preset (~30-40 min on 2 cores)
#   PRESET=gpu104m DATA=data/pretrain NPROC=8 bash recipes/ablation.sh   # MiniMind2-sized, on GPUs
#
# Knobs: PRESET (cpu | gpu104m), OUT, DATA (a prepared set; cpu default: the demo's
# English-only set), NPROC, LRS (comma-separated grid), SEEDS, WANDB_MODE, PLAN (with GPU).
# Output: $OUT/summary.json, $OUT/ablation.md, $OUT/plots/{loss_curves,lr_sweep}.png, $OUT/runs/<arm>/...
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
PRESET="${PRESET:-cpu}"
OUT="${OUT:-runs/ablation_$PRESET}"
NPROC="${NPROC:-1}"
export WANDB_MODE="${WANDB_MODE:-disabled}"

if [ "$PRESET" = "cpu" ]; then
    DATA="${DATA:-data/demo_en_base}"
    [ -f "$DATA/manifest.json" ] || [ "${PLAN:-0}" = "1" ] || HF_HUB_OFFLINE=1 "$PY" -m data_prep.demo --out "$(dirname "$DATA")"
else
    DATA="${DATA:-data/pretrain}"   # prepare it first, e.g. as recipes/pretrain_core.sh does
    [ -f "$DATA/manifest.json" ] || [ "${PLAN:-0}" = "1" ] || {
        echo "error: $DATA holds no prepared set (manifest.json); prepare one first (e.g. as recipes/pretrain_core.sh" \
             "does) or set DATA" >&2; exit 2; }
fi

args=(--preset "$PRESET" --out "$OUT" "data.path=$DATA")
[ -n "${LRS:-}" ] && args+=(--lrs "$LRS")
[ -n "${SEEDS:-}" ] && args+=(--seeds "$SEEDS")

if [ "${PLAN:-0}" = "1" ]; then  # runs, memory, time and cost from scripts.plan; trains nothing
    exec "$PY" -m scripts.ablation "${args[@]}" --plan --gpu "${GPU:-4090}" --n "$NPROC"
fi
echo "==> ablation preset=$PRESET data=$DATA out=$OUT nproc=$NPROC"
if [ "$NPROC" -gt 1 ]; then
    "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" -m scripts.ablation "${args[@]}"
else
    "$PY" -m scripts.ablation "${args[@]}"
fi
echo
cat "$OUT/ablation.md"
