# Sourced by scripts/test.sh and the recipes: create .venv if needed and install
# the project into it. Sets PY to the venv's python. Re-runs are cheap: the
# install is skipped while pyproject.toml is unchanged.
VENV="${VENV:-.venv}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV"
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
stamp="$VENV/.minimodel-installed"
want="$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    if ! "$PY" -c "import torch" 2>/dev/null; then
        if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
            echo "[setup] installing torch (CUDA build)"
            "$PY" -m pip install -q "torch>=2.9"
        else
            # A pinned version: an open range would pull a multi-GB CUDA build.
            echo "[setup] installing torch==$TORCH_VERSION (CPU)"
            "$PY" -m pip install -q "torch==$TORCH_VERSION"
        fi
    fi
    # quant (bitsandbytes) too: its 4-/8-bit paths run on the CPU, so the tests exercise them for real
    echo "[setup] installing minimodel[dev,quant]"
    "$PY" -m pip install -q -e ".[dev,quant]"
    echo "$want" > "$stamp"
fi
