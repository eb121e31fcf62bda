#!/usr/bin/env bash
# The forgetting report across base, CPT and SFT: held-out bits per byte in both languages,
# local cloze tasks, hub benchmarks when reachable, the 2x2 generations, one report.
#   RUNS="runs/core_104m runs/cpt_core_ko_replay0.05_loratrue runs/sft_cpt_core_ko_replay0.05_loratrue" \
#   HELDOUT="data/demo_en data/demo_ko" bash recipes/eval_forgetting.sh
# Knobs: RUNS (first = the base), HELDOUT (prepared sets or held-out .jsonl files, one per language),
# TASKS (lm-eval tasks; hub tasks such as hellaswag,arc_easy,kobest_copa need the network), CTX,
# REPORT (output directory), USD_PER_GPU_HOUR, PLAN.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

RUNS=(${RUNS:?set RUNS to the run directories, the base first})
HELDOUT=(${HELDOUT:-data/demo_en data/demo_ko})
TASKS="${TASKS:-minimodel_cloze_en,minimodel_cloze_ko}"
CTX="${CTX:-1024}"
REPORT="${REPORT:-$OUT/report}"
data_args=(); for h in "${HELDOUT[@]}"; do data_args+=(--data "$h"); done
if [ "$PLAN" = "1" ]; then  # evaluation is forward passes only: list the work instead of a cost table
    echo "plan: evaluate ${#RUNS[@]} run(s) [${RUNS[*]}] on held-out ${HELDOUT[*]} at ctx $CTX," \
         "lm-eval tasks $TASKS, the 2x2 generations; report -> $REPORT"
    exit 0
fi

for i in "${!RUNS[@]}"; do
    run="${RUNS[$i]}"; stage_arg=()
    [ "$i" = 0 ] && stage_arg=(--stage base)
    stage "eval: $run"
    "$PY" -m eval.bpb "$run" "${data_args[@]}" --ctx "$CTX" "${stage_arg[@]}"
    "$PY" -m eval.generations "$run" "${stage_arg[@]}"
    "$PY" -m eval.harness "$run" --tasks "$TASKS" "${stage_arg[@]}"
done
stage "report -> $REPORT"
"$PY" -m eval.report "${RUNS[@]}" --out "$REPORT" ${USD_PER_GPU_HOUR:+--usd-per-gpu-hour $USD_PER_GPU_HOUR}
stage "done: $REPORT/report.md"
