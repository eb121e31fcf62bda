#!/usr/bin/env bash
# The prepared GPU check (scripts/gpu_check.py): one command, at most 8 minutes on one H100/H200.
# Uses the machine's own Python and packages (torch, transformers, peft, sentencepiece, tokenizers,
# safetensors, pytest ...): no virtual environment, no download; the repository is put on the path.
# Results: docs/gpu/<date>-<gpu>.jsonl (appended as measured) and docs/benchmarks.md's GPU tables.
#   bash scripts/gpu_check.sh [--budget SECONDS] [--sections a,b] [--data PREPARED_SET]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled
export TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-python3}"
exec timeout --signal=INT --kill-after=20 480 "$PY" -m scripts.gpu_check "$@"
