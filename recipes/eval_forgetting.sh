#!/usr/bin/env bash
# The forgetting report across base, CPT and SFT: held-out bits per byte in both languages,
# local cloze tasks, hub benchmarks when reachable, the 2x2 generations, one report.
#   RUNS="runs/core_104m runs/cpt_core_ko_replay0.05_loratrue runs/sft_cpt_core_ko_replay0.05_loratrue" \
#   HELDOUT="data/demo_en data/demo_ko" bash recipes/eval_forgetting.sh
# Knobs: RUNS (first = the base), HELDOUT (prepared sets or held-out .jsonl files, one per language),
# TASKS (lm-eval tasks; hub tasks such as hellaswag,arc_easy,kobest_copa need the network; empty: none),
# CTX (context for bits per byte and lm-eval; default: each run's own training seq_len, read from its
# config.toml, so a model trained at 256 is not scored at 1024; a model without one: 2048),
# REPORT (output directory), USD_PER_GPU_HOUR, PLAN.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

RUNS=(${RUNS:?set RUNS to the run directories, the base first})
HELDOUT=(${HELDOUT:-data/demo_en data/demo_ko})
TASKS="${TASKS-minimodel_cloze_en,minimodel_cloze_ko}"
CTX="${CTX:-}"
REPORT="${REPORT:-$OUT/report}"
data_args=(); for h in "${HELDOUT[@]}"; do data_args+=(--data "$h"); done
if [ "$PLAN" = "1" ]; then  # evaluation is forward passes only: list the work instead of a cost table
    echo "plan: evaluate ${#RUNS[@]} run(s) [${RUNS[*]}] on held-out ${HELDOUT[*]} at ctx ${CTX:-the seq_len each run trained at}," \
         "lm-eval tasks ${TASKS:-none}, the 2x2 generations; report -> $REPORT"
    exit 0
fi

for i in "${!RUNS[@]}"; do
    run="${RUNS[$i]}"; stage_arg=()
    [ "$i" = 0 ] && stage_arg=(--stage base)
    stage "eval: $run"
    "$PY" -m eval.bpb "$run" "${data_args[@]}" ${CTX:+--ctx "$CTX"} "${stage_arg[@]}"
    "$PY" -m eval.generations "$run" "${stage_arg[@]}"
    [ -z "$TASKS" ] || "$PY" -m eval.harness "$run" --tasks "$TASKS" ${CTX:+--max-length "$CTX"} "${stage_arg[@]}"
done
stage "report -> $REPORT"
"$PY" -m eval.report "${RUNS[@]}" --out "$REPORT" ${USD_PER_GPU_HOUR:+--usd-per-gpu-hour $USD_PER_GPU_HOUR}
stage "done: $REPORT/report.md"
