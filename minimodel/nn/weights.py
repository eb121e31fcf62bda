"""A model's tensors in safetensors: each storage once (a tied lm_head is stored once), read back
with a clear error for a missing, cut or foreign file, and strict-loaded into a model.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from minimodel.common.errors import UserError


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict with each storage once (a tied lm_head.weight is dropped, as transformers does)."""
    out, seen = {}, set()
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), t.shape) if t.numel() else (name,)
        if key in seen:
            continue
        seen.add(key)
        out[name] = t.detach().contiguous().cpu()
    return out


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a missing, cut or foreign file is a UserError naming it."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"cannot read weights {path}: {e} (file missing, truncated or corrupted?)") from None


def load_model_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load safetensors weights; a missing, unexpected or misshapen tensor is named in the error."""
    path = Path(path)
    tensors = read_safetensors(path)
    expected = model.state_dict()
    tied = getattr(getattr(model, "config", None), "tie_embeddings", False)
    for name, t in tensors.items():
        if name not in expected:
            raise UserError(f"{path}: tensor {name} does not exist in this model (checkpoint of another architecture)")
        if tuple(t.shape) != tuple(expected[name].shape):
            raise UserError(f"{path}: tensor {name} has shape {tuple(t.shape)} but the model expects "
                            f"{tuple(expected[name].shape)}: checkpoint of another model shape")
    missing = [n for n in expected if n not in tensors and not (tied and n == "lm_head.weight")]
    if missing:
        raise UserError(f"{path}: missing tensors {missing[:4]}{'...' if len(missing) > 4 else ''}: "
                        "checkpoint of another model shape")
    model.load_state_dict(tensors, strict=False)
