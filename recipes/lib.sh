# Shared by the GPU recipes (source it, don't run it): the interpreter, the launch knobs and
# four helpers.
#   maybe_plan CONFIG [overrides]          PLAN=1: print the plan (scripts/plan.py) and exit 0
#   launch MODULE [args]                   the module under torchrun on NPROC GPUs x NNODES nodes
#   plan_or_run MODULE CONFIG [overrides]  maybe_plan, then launch MODULE --config CONFIG [overrides]
#   stage TEXT                             a progress header
# Knobs (environment):
#   NPROC        processes (GPUs) per node; default: the visible GPUs, or 1
#   NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT   several nodes: run the recipe on each node
#   WANDB_RUN    a wandb run name turns wandb logging on (WANDB_MODE=offline works offline)
#   DATA_DIR, OUT  where prepared sets and run directories go (default data, runs)
#   PLAN=1       plan only; GPU (default 4090) picks the card, PLAN_ARGS adds planner flags (--json ...)
#   PY           a Python that has minimodel installed (default: set up and use .venv)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ -z "${PY:-}" ]; then
    source scripts/setup_env.sh
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

visible_gpus() {
    if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
        echo "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -c .
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        nvidia-smi -L | grep -c '^GPU'
    else
        echo 1
    fi
}
NPROC="${NPROC:-$(visible_gpus)}"
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
WORLD=$((NNODES * NPROC))
DATA_DIR="${DATA_DIR:-data}"
OUT="${OUT:-runs}"
PLAN="${PLAN:-0}"
GPU="${GPU:-4090}"
PLAN_ARGS="${PLAN_ARGS:-}"
TRACKING=(tracking.wandb=false)
if [ -n "${WANDB_RUN:-}" ]; then
    TRACKING=(tracking.wandb=true "tracking.run_name=$WANDB_RUN")
fi

stage() { echo; echo "==> [$(date +%H:%M:%S)] $*"; }

maybe_plan() {
    [ "$PLAN" = "1" ] || return 0
    # shellcheck disable=SC2086  # PLAN_ARGS is a list of flags
    "$PY" -m scripts.plan "$1" --gpu "$GPU" --n "$WORLD" "${@:2}" $PLAN_ARGS || exit $?
    exit 0
}

launch() {
    local module="$1"; shift
    "$PY" -m torch.distributed.run --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$NPROC" \
        --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" -m "$module" "$@"
}

plan_or_run() {
    local module="$1" config="$2"; shift 2
    maybe_plan "$config" "$@"
    launch "$module" --config "$config" "$@"
}
