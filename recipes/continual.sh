#!/usr/bin/env bash
# Continual learning across a sequence of languages: base -> L1 -> L2 -> L3. Each stage is a "wake"
# (LoRA + embeddings CPT on the new language, from the previous stage's merged model) and a "sleep"
# (the merge: the next stage's base). Arms differ only in how they keep what came before, at the same
# new-language token budget per stage; every language is scored after every stage (the forgetting
# matrix) -> $OUT/summary.json, $OUT/continual.md and two plots (python -m eval.continual).
#   bash recipes/continual.sh                  # CPU preset: the quick start's tiny core, en -> ko -> ru -> de
#   PRESET=gpu bash recipes/continual.sh       # the 104M core (runs/core_104m) on GPUs
#   SWEEP=1 bash recipes/continual.sh          # generated replay fraction {5,25,50}% x KL weight {1,3,10},
#                                              # 1 seed, scored on the val chapters -> $OUT/sweep
#   PLAN=1 bash recipes/continual.sh           # what would run
# Arms (ARMS): none | real<P> (a mixture of every earlier language's real text, P% of windows) |
#   gen (generated replay + distillation at GEN_RATIO / KL, the sweep's choice) | gen<P>_kl<K> |
#   anchor (the Fisher anchor on generated replay at GEN_RATIO, weight ANCHOR) | a [plasticity] mechanism on
#   one of those: metaplastic[<S>]_<arm> (strength S, default META), surprise_rank_<arm>, split_lora_<arm>
#   (e.g. metaplastic1_real25: real25's replay, metaplasticity at strength 1; docs/continual.md).
# Knobs: OUT (runs/continual), LANGS (en,ko,ru,de), SEEDS ("0 1"), ARMS, STEPS (new-language steps per
#   stage; a replay arm at ratio r runs STEPS / (1 - r)), BASE, CONFIG, DATA (data/continual), CTX,
#   GEN_RATIO, KL, ANCHOR, DREAM_SHARE (share of the replay tokens a generated arm reads that the base
#   samples; the rest repeats them), BOOKS (Bible books, e.g. 1-10; all by default), SATURATION=1 (also
#   none/real25/gen from a core pretrained on SAT_STEPS steps, seeds SAT_SEEDS -> $OUT/saturation), ALONE=0 (skip the
#   learned-alone runs that plasticity is measured against), EVAL_ARGS (eval.bpb flags; default
#   "--max-docs 8"; "" scores every chapter), FORCE=1.
set -euo pipefail
CONTINUAL_OUT="${OUT:-runs/continual}"  # lib.sh reads OUT as the runs root
source "$(dirname "$0")/lib.sh"
OUT="$CONTINUAL_OUT"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}"
export WANDB_MODE="${WANDB_MODE:-disabled}"
PRESET="${PRESET:-cpu}"
LANGS="${LANGS:-en,ko,ru,de}"
SEEDS=(${SEEDS:-0 1})
SWEEP="${SWEEP:-0}"
if [ "$SWEEP" != 1 ] && [ -z "${GEN_RATIO:-}${KL:-}" ] && [ -f "$CONTINUAL_OUT/sweep/summary.json" ]; then
    # the sweep ran here: its choice (lowest mean val bpb over every language after the last stage)
    read -r GEN_RATIO KL <<< "$("$PY" -c "import json; b = json.load(open('$CONTINUAL_OUT/sweep/summary.json'))['best']
print(b['ratio'], b['distill'])")"
    echo "generated replay from the sweep in $CONTINUAL_OUT/sweep: ratio $GEN_RATIO, KL weight $KL"
fi
GEN_RATIO="${GEN_RATIO:-0.5}"    # the sweep's choice on the CPU preset (docs/continual.md)
KL="${KL:-10}"
ANCHOR="${ANCHOR:-10}"
META="${META:-10}"  # metaplastic arms without a strength in their name
DREAM_SHARE="${DREAM_SHARE:-0.25}"
FORCE="${FORCE:-0}"
SATURATION="${SATURATION:-0}"
SAT_STEPS="${SAT_STEPS:-60}"
ALONE="${ALONE:-1}"
EVAL_ARGS="${EVAL_ARGS---max-docs 8}"  # the same first 8 chapters in every language (~40 KB each): 3x faster
T_START=$(date +%s)
case "$PRESET" in
    cpu) CONFIG="${CONFIG:-recipes/configs/cpt_tiny.toml}"; CTX="${CTX:-256}"; STEPS="${STEPS:-100}"
         DATA="${DATA:-$DATA_DIR/continual}"; TOKENIZER="${TOKENIZER:-$DATA_DIR/tokenizers/shared.model}"
         MAKE_CORE=0
         if [ -z "${BASE:-}" ]; then  # the quick start's core, else the same core trained here
             BASE=runs/quickstart/core; [ -f "$BASE/final/model.safetensors" ] || { BASE="$OUT/core"; MAKE_CORE=1; }
         fi
         run_stage() { "$PY" -m "$@"; } ;;
    gpu) MAKE_CORE=0; CONFIG="${CONFIG:-recipes/configs/cpt_core_ko.toml}"; CTX="${CTX:-1024}"; STEPS="${STEPS:-1500}"
         BASE="${BASE:-runs/core_104m}"; DATA="${DATA:-$DATA_DIR/continual_104m}"
         TOKENIZER="${TOKENIZER:-$BASE/final/tokenizer.model}"
         run_stage() { launch "$@"; } ;;
    *) echo "error: PRESET must be cpu or gpu, got $PRESET" >&2; exit 2 ;;
esac
if [ "$SWEEP" = 1 ]; then
    OUT="$OUT/sweep"; SEEDS=(${SWEEP_SEEDS:-0}); SPLIT=val
    ARMS=(${ARMS:-gen5_kl1 gen5_kl3 gen5_kl10 gen25_kl1 gen25_kl3 gen25_kl10 gen50_kl1 gen50_kl3 gen50_kl10})
else
    SPLIT=heldout
    ARMS=(${ARMS:-none real5 real25 gen gen50_kl10 anchor})
fi
IFS=, read -r -a LANG_LIST <<< "$LANGS"

arm_settings() {  # NAME -> "source ratio distill anchor plasticity-overrides" (the last "-" when none)
    local a="$1" mech
    case "$a" in  # a mechanism arm: MECHANISM_BASELINE, the baseline arm's replay plus the [plasticity] switch
        metaplastic*_*) mech="${a%%_*}"; local k="${mech#metaplastic}"; k="${k:-$META}"
            [[ "$k" =~ ^[0-9.]+$ ]] || { unknown_arm "$a"; return 2; }
            with_mechanism "$a" "${a#*_}" "plasticity.metaplastic=$k"; return ;;
        surprise_rank_*) with_mechanism "$a" "${a#surprise_rank_}" "plasticity.surprise_rank=true"; return ;;
        split_lora_*) with_mechanism "$a" "${a#split_lora_}" "plasticity.split_lora=true"; return ;;
    esac
    case "$a" in
        none) echo "data 0 0 0 -" ;;
        gen) echo "generated $GEN_RATIO $KL 0 -" ;;
        anchor) echo "generated $GEN_RATIO 0 $ANCHOR -" ;;
        real[0-9]*) local p="${a#real}"; [[ "$p" =~ ^[0-9]+$ ]] || { unknown_arm "$a"; return 2; }
                    echo "data $("$PY" -c "print($p / 100)") 0 0 -" ;;
        gen[0-9]*_kl[0-9]*) local p="${a#gen}"; local k="${p#*_kl}"; p="${p%%_kl*}"
                    [[ "$p" =~ ^[0-9]+$ && "$k" =~ ^[0-9.]+$ ]] || { unknown_arm "$a"; return 2; }
                    echo "generated $("$PY" -c "print($p / 100)") $k 0 -" ;;
        *) unknown_arm "$a"; return 2 ;;
    esac
}
with_mechanism() {  # ARM BASELINE OVERRIDE: the baseline arm's settings with one [plasticity] switch on
    local base
    case "$2" in metaplastic*|surprise_rank_*|split_lora_*) unknown_arm "$1"; return 2 ;; esac
    base="$(arm_settings "$2" 2> /dev/null)" || { unknown_arm "$1"; return 2; }
    echo "${base% -} $3"
}
unknown_arm() {
    echo "error: unknown arm '$1'; arms are none, real<P> (e.g. real25), gen, gen<P>_kl<K> (e.g. gen50_kl10), anchor," \
         "or a mechanism on one of them: metaplastic[<strength>]_<arm>, surprise_rank_<arm>, split_lora_<arm>" >&2
}
for arm in "${ARMS[@]}"; do arm_settings "$arm" > /dev/null || exit 2; done

if [ "$PLAN" = "1" ]; then
    n=$(( ${#LANG_LIST[@]} - 1 ))
    echo "plan: ${LANGS//,/ -> } ($n stages), ${#ARMS[@]} arms (${ARMS[*]}) x ${#SEEDS[@]} seeds of $CONFIG from base $BASE;"
    echo "      $STEPS new-language steps per stage (a replay arm at ratio r: $STEPS / (1 - r)); every language's"
    echo "      $SPLIT chapters scored at ctx $CTX after every stage; data $DATA -> $OUT/summary.json, continual.md"
    [ "$SWEEP" = 1 ] || echo "      plus each language learned alone from the base (plasticity), $((n - 1)) x ${#SEEDS[@]} runs"
    [ "$SATURATION" = 1 ] && echo "      plus none/real25/gen from a core pretrained $SAT_STEPS steps -> $OUT/saturation"
    exit 0
fi
mkdir -p "$OUT/arms"

if [ "$PRESET" = cpu ]; then
    if [ ! -f "$TOKENIZER" ]; then
        stage "demo data (its tokenizer is the core's) -> $DATA_DIR"; "$PY" -m data_prep.demo --out "$DATA_DIR"
    fi
    if [ "$MAKE_CORE" = 1 ] && [ ! -f "$BASE/final/model.safetensors" ]; then
        stage "the quick start's tiny English core -> $BASE"
        "$PY" -m minimodel.pretrain --config recipes/configs/core_tiny.toml data.path="$DATA_DIR/demo_en" \
            train.out_dir="$BASE"
    fi
fi
[ -e "$BASE" ] || { echo "error: base $BASE not found; train it first (recipes/quickstart.sh, recipes/pretrain_core.sh) or set BASE" >&2; exit 2; }

stage "sequence data: ${LANGS//,/ -> } from the offline Bibles -> $DATA"
books=(); [ -n "${BOOKS:-}" ] && books=(--books "$BOOKS")
"$PY" -m data_prep.continual --out "$DATA" --langs "$LANGS" --tokenizer "$TOKENIZER" "${books[@]}"
plan() { "$PY" -c "import json, sys; p = json.load(open('$DATA/plan.json')); print($1)"; }
echo "{\"languages\": $(plan 'json.dumps(p["languages"])'), \"data\": \"$DATA\", \"split\": \"$SPLIT\"}" \
    > "$OUT/sequence.json"
eval_sets=(); for lang in "${LANG_LIST[@]}"; do eval_sets+=(--data "$DATA/text/$lang/$SPLIT.jsonl"); done

score() {  # RUN [extra eval.bpb args]: every language's chapters -> RUN/eval/bpb.json
    # shellcheck disable=SC2086  # EVAL_ARGS is a list of flags
    "$PY" -m eval.bpb "$@" "${eval_sets[@]}" --ctx "$CTX" $EVAL_ARGS
}
timed() {  # NAME command...: runs it, appends {"run", "wall_s"} to $OUT/timing.jsonl
    local name="$1"; shift
    local t0 t1; t0=$(date +%s.%N); "$@"; t1=$(date +%s.%N)
    echo "{\"run\": \"$name\", \"wall_s\": $("$PY" -c "print(round($t1 - $t0, 2))")}" >> "$OUT/timing.jsonl"
}

stage "base: every language -> $OUT/base_bpb.json"
if [ "$FORCE" = 1 ] || [ ! -f "$OUT/base_bpb.json" ]; then score "$BASE" --stage base --out "$OUT/base_bpb.json"; fi

cpt() {  # RUN BASE_DIR STAGE_INDEX SEED STEPS [overrides]
    local run="$1" base="$2" k="$3" seed="$4" steps="$5"; shift 5
    [ "$FORCE" = 1 ] && rm -rf "$run"
    if [ -f "$run/eval/bpb.json" ]; then echo "$run: done"; return; fi
    timed "${run#"$OUT"/}" run_stage minimodel.cpt --config "$CONFIG" base.path="$base" \
        data.path="$(plan "p['stages'][$k]['train']")" train.out_dir="$run" train.steps="$steps" \
        train.seed="$seed" "$@" "${TRACKING[@]}"
    score "$run"
}

n_stages=$(( ${#LANG_LIST[@]} - 1 ))
for seed in "${SEEDS[@]}"; do
    for arm in "${ARMS[@]}"; do
        read -r source ratio distill anchor mechanism <<< "$(arm_settings "$arm")"
        plasticity=(); [ "$mechanism" = - ] || plasticity=("$mechanism")
        twin="gen$("$PY" -c "print(round($GEN_RATIO * 100))")_kl$("$PY" -c "print(f'{$KL:g}')")"
        if [ "$arm" = gen ] && [ "$SWEEP" != 1 ] && [[ " ${ARMS[*]} " == *" $twin "* ]]; then
            echo "arm gen is arm $twin (the sweep chose the same setting): run once, reported under both names"
            mkdir -p "$OUT/arms/$twin"_s"$seed"; ln -sfn "${twin}_s${seed}" "$OUT/arms/gen_s${seed}"; continue
        fi
        steps=$("$PY" -c "print(round($STEPS / (1 - $ratio)))")
        base="$BASE"
        for k in $(seq 1 "$n_stages"); do
            lang="${LANG_LIST[$k]}"
            run="$OUT/arms/${arm}_s${seed}/stage${k}_${lang}"
            replay=("replay.ratio=$ratio" "replay.distill=$distill" "replay.anchor=$anchor" "replay.source=$source")
            if [ "$source" = data ] && [ "$ratio" != 0 ]; then  # the only arm that reads earlier languages' text
                replay+=("replay.path=$(plan "p['stages'][$k]['replay']")")
            elif [ "$source" = generated ]; then  # the stage's base dreams, prompted in every language it knows
                tokens=$("$PY" -c "
import math
from minimodel.config import CptConfig, load_config
c = load_config('$CONFIG', ['base.path=$base', 'data.path=$(plan "p['stages'][$k]['train']")',
                'replay.ratio=$ratio', 'train.steps=$steps', 'replay.source=generated', 'replay.tokens=1'], cls=CptConfig)
print(math.ceil($DREAM_SHARE * c.replay_tokens_read()))")
                replay+=("replay.tokens=$tokens" "replay.path=$OUT/dream/${arm}_s${seed}/stage${k}"
                         "replay.prompts=$(plan "p['stages'][$k]['prompts']")")
            else
                replay+=("replay.path=")
            fi
            stage "arm $arm, seed $seed, stage $k ($lang): $source replay $ratio, distill $distill, anchor $anchor,${plasticity[*]:+ ${plasticity[*]},}" \
                  "$steps steps from $base -> $run"
            cpt "$run" "$base" "$k" "$seed" "$steps" "${replay[@]}" "${plasticity[@]}"
            base="$run"
        done
    done
    if [ "$SWEEP" != 1 ] && [ "$ALONE" = 1 ]; then  # plasticity: each later language learned alone from the base, same budget
        for k in $(seq 2 "$n_stages"); do  # stage 1 alone is the none arm's first stage (the same run)
            lang="${LANG_LIST[$k]}"
            stage "alone: $lang from the base, seed $seed -> $OUT/alone/${lang}_s${seed}"
            cpt "$OUT/alone/${lang}_s${seed}" "$BASE" "$k" "$seed" "$STEPS" replay.ratio=0 replay.path=
        done
    fi
done

if [ "$SATURATION" = 1 ] && [ "$SWEEP" != 1 ]; then
    short="$OUT/core_short"
    if [ ! -f "$short/final/model.safetensors" ]; then
        stage "a core pretrained on $SAT_STEPS steps (fewer tokens per parameter) -> $short"
        "$PY" -m minimodel.pretrain --config recipes/configs/core_tiny.toml data.path="$DATA_DIR/demo_en" \
            train.out_dir="$short" train.steps="$SAT_STEPS"
    fi
    OUT="$OUT/saturation" BASE="$short" ARMS="${SAT_ARMS:-none real25 gen}" SATURATION=0 ALONE=0 \
        SEEDS="${SAT_SEEDS:-${SEEDS[*]}}" PRESET="$PRESET" CONFIG="$CONFIG" STEPS="$STEPS" DATA="$DATA" CTX="$CTX" \
        TOKENIZER="$TOKENIZER" EVAL_ARGS="$EVAL_ARGS" GEN_RATIO="$GEN_RATIO" KL="$KL" ANCHOR="$ANCHOR" DREAM_SHARE="$DREAM_SHARE" \
        LANGS="$LANGS" FORCE="$FORCE" bash "$0"
fi

echo "{\"run\": \"total\", \"wall_s\": $(( $(date +%s) - T_START ))}" >> "$OUT/timing.jsonl"
stage "summary -> $OUT/summary.json, $OUT/continual.md"
"$PY" -m eval.continual "$OUT"
