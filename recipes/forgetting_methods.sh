#!/usr/bin/env bash
# Forgetting methods at the same Korean token budget and seeds: no replay, real English replay,
# generated ("dream") replay that the base writes itself, and generated replay + self-distillation,
# at 5% (and 25% for the two replay kinds). One table, one plot, summary.json -> $OUT.
#   bash recipes/forgetting_methods.sh                       # CPU preset: the quick start's tiny core
#   PRESET=gpu bash recipes/forgetting_methods.sh            # the 104M core (runs/core_104m) on GPUs
# Knobs: OUT (runs/forgetting_methods), PRESET (cpu | gpu), SEEDS ("0 1"), ARMS (a subset of
#   "none data5 gen5 gen5d data25 gen25"), DISTILL (the distillation weight, 1.0), BASE, CONFIG, EN, KO
#   (prepared sets), EN_HELDOUT, KO_HELDOUT (what eval.bpb scores; default the sets' held-out text),
#   CTX (evaluation context), KO_STEPS (steps of the no-replay arm; a replay arm at
#   ratio r runs KO_STEPS / (1 - r) steps, so every arm reads the same Korean tokens), FORCE=1.
# The CPU preset reuses runs/quickstart/core when it exists (else it trains the same core into $OUT/core)
# and takes about 20 minutes on 2 cores.
set -euo pipefail
METHODS_OUT="${OUT:-runs/forgetting_methods}"  # lib.sh reads OUT as the runs root
source "$(dirname "$0")/lib.sh"
OUT="$METHODS_OUT"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}"
export WANDB_MODE="${WANDB_MODE:-disabled}"
PRESET="${PRESET:-cpu}"
SEEDS=(${SEEDS:-0 1})
ARMS=(${ARMS:-none data5 gen5 gen5d data25 gen25})
DISTILL="${DISTILL:-1.0}"
FORCE="${FORCE:-0}"
case "$PRESET" in
    cpu) CONFIG="${CONFIG:-recipes/configs/cpt_tiny.toml}"; EN="${EN:-$DATA_DIR/demo_en}"
         KO="${KO:-$DATA_DIR/demo_ko}"; CTX="${CTX:-256}"; KO_STEPS="${KO_STEPS:-150}"
         if [ -z "${BASE:-}" ]; then
             BASE=runs/quickstart/core; [ -f "$BASE/final/model.safetensors" ] || BASE="$OUT/core"
         fi
         run_stage() { "$PY" -m "$@"; } ;;
    gpu) CONFIG="${CONFIG:-recipes/configs/cpt_core_ko.toml}"; EN="${EN:-$DATA_DIR/fineweb_ext}"
         KO="${KO:-$DATA_DIR/kowiki_ext}"; CTX="${CTX:-1024}"; KO_STEPS="${KO_STEPS:-6000}"
         BASE="${BASE:-runs/core_104m}"
         run_stage() { launch "$@"; } ;;
    *) echo "error: PRESET must be cpu or gpu, got $PRESET" >&2; exit 2 ;;
esac
EN_HELDOUT="${EN_HELDOUT:-$EN}"
KO_HELDOUT="${KO_HELDOUT:-$KO}"
if [ "$PLAN" = "1" ]; then
    echo "plan: ${#ARMS[@]} arms (${ARMS[*]}) x ${#SEEDS[@]} seeds of $CONFIG on base $BASE," \
         "$KO_STEPS Korean-budget steps each; eval at ctx $CTX on $EN_HELDOUT and $KO_HELDOUT -> $OUT/report.md"
    exit 0
fi
mkdir -p "$OUT/arms"

if [ "$PRESET" = cpu ]; then
    if [ ! -f "$KO/manifest.json" ] || [ ! -f "$EN/manifest.json" ]; then
        stage "demo data -> $DATA_DIR"; "$PY" -m data_prep.demo --out "$DATA_DIR"
    fi
    if [ ! -f "$BASE/final/model.safetensors" ]; then
        stage "the quick start's tiny English core -> $BASE"
        "$PY" -m minimodel.pretrain --config recipes/configs/core_tiny.toml data.path="$EN" train.out_dir="$BASE"
    fi
fi

stage "base: held-out bits per byte -> $OUT/base_bpb.json"
if [ "$FORCE" = 1 ] || [ ! -f "$OUT/base_bpb.json" ]; then
    "$PY" -m eval.bpb "$BASE" --data "$EN_HELDOUT" --data "$KO_HELDOUT" --ctx "$CTX" --stage base --out "$OUT/base_bpb.json"
fi

arm_settings() {  # NAME -> "source ratio distill"
    case "$1" in
        none) echo "data 0 0" ;;        data5) echo "data 0.05 0" ;;      data25) echo "data 0.25 0" ;;
        gen5) echo "generated 0.05 0" ;; gen5d) echo "generated 0.05 $DISTILL" ;;
        gen25) echo "generated 0.25 0" ;;
        *) echo "error: unknown arm $1 (none data5 gen5 gen5d data25 gen25)" >&2; exit 2 ;;
    esac
}

for seed in "${SEEDS[@]}"; do
    for arm in "${ARMS[@]}"; do
        read -r source ratio distill <<< "$(arm_settings "$arm")"
        run="$OUT/arms/${arm}_s${seed}"
        steps=$("$PY" -c "print(round($KO_STEPS / (1 - $ratio)))")
        replay=("replay.ratio=$ratio" "replay.distill=$distill" "replay.source=$source")
        if [ "$source" = data ] && [ "$ratio" != 0 ]; then
            replay+=("replay.path=$EN")  # logged as val_bpb_en while the run goes
        else  # English held-out logged while the run goes; the model never trains on it
            replay+=("replay.path=" "eval.sets=[\"$EN\"]")
        fi
        if [ "$source" = generated ]; then  # one dreamed set per ratio and seed, with and without distillation
            tokens=$("$PY" -c "
from minimodel.config import CptConfig, load_config
print(load_config('$CONFIG', ['base.path=$BASE', 'data.path=$KO', 'replay.path=$EN', 'replay.ratio=$ratio',
                              'train.steps=$steps'], cls=CptConfig).replay_tokens_read())")
            replay+=("replay.tokens=$tokens" "replay.path=$OUT/dream/ratio${ratio}_s${seed}")
        fi
        if [ "$FORCE" = 1 ]; then rm -rf "$run"; fi
        if [ -f "$run/eval/bpb.json" ]; then echo "$run: done"; continue; fi
        stage "arm $arm, seed $seed: $source replay $ratio, distill $distill, $steps steps -> $run"
        t0=$(date +%s.%N)
        run_stage minimodel.cpt --config "$CONFIG" base.path="$BASE" data.path="$KO" train.out_dir="$run" \
            train.steps="$steps" train.seed="$seed" "${replay[@]}" "${TRACKING[@]}"
        t1=$(date +%s.%N)
        echo "{\"run\": \"${arm}_s${seed}\", \"wall_s\": $("$PY" -c "print(round($t1 - $t0, 2))")}" >> "$OUT/timing.jsonl"
        "$PY" -m eval.bpb "$run" --data "$EN_HELDOUT" --data "$KO_HELDOUT" --ctx "$CTX"
    done
done

stage "summary -> $OUT/summary.json, $OUT/report.md"
"$PY" -m eval.forgetting_methods "$OUT"
