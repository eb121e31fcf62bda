#!/usr/bin/env bash
# Set up .venv on a fresh machine (CPU torch first when there is no CUDA GPU,
# then the project with its dev extras), lint the tree (ruff, rules in pyproject.toml)
# and run the test suite.
# Extra arguments go to pytest: bash scripts/test.sh -k model
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled
"$PY" -m ruff check --quiet . || { echo "ruff: fix the lines above (python -m ruff check --fix . fixes some)"; exit 1; }
exec "$PY" -m pytest -q "$@"
