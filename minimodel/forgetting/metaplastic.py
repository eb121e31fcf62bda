"""Parameters that remember (metaplasticity): an importance that every trained tensor accumulates while it
trains, saved with the run, inherited by the next stage through its base, and that makes important
parameters less plastic there ("viscosity").

The rule, in two lines:
    importance: the path integral of -gradient x update over the stage (Synaptic Intelligence), divided at the
        end by the tensor's squared movement, scaled to mean 1 over the model and added to what the base carried;
    viscosity: in later stages every update of a parameter is divided by 1 + strength x its importance.

It acts where a LoRA stage changes the base. A trained embedding / lm_head row moves directly; an adapted
matrix W only through its merged update s B A, so its importance is kept as an outer product
row (out) x column (in): the path integral through B lands on W's output rows, through A on its input
columns (to first order -<g_W, dW> = -<g_B, dB> - <g_A, dA>). A later stage divides B's row i by
1 + strength x Omega[i, :].mean() and A's column j by 1 + strength x Omega[:, j].mean(), so the merged update
moves least where the merged matrix carried the most. Embeddings use the same row x column form (row = the
token), which keeps the state small: O(rows + columns) per matrix on disk, never a copy of the weights.

Written by hand: no library keeps a per-parameter state across runs that modulates a peft LoRA's update.

State: RUN/plasticity/importance.safetensors (<key>.row, <key>.col, Omega = row x col) + importance.json,
where <key> is the matrix's module name in the base ("model.layers.0.mlp.up_proj") or embed_tokens/lm_head.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file

from minimodel.common.errors import UserError
from minimodel.common.io import atomic_dir
from minimodel.nn.weights import read_safetensors

STATE_DIR = "plasticity"
STATE_FILE = "importance.safetensors"
EMBED_KEYS = {"embed_tokens.weight": "embed_tokens", "lm_head.weight": "lm_head"}


class Importance:
    """Omega of every matrix as row (out) x col (in) vectors; combined across stages by summing."""

    def __init__(self, factors: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None, stages: int = 0):
        self.factors = dict(factors or {})
        self.stages = stages

    def omega(self, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self.factors.get(key)

    def plus(self, other: Importance) -> Importance:
        """The sum of two stages' importance, kept as row x col: the sum's row and column marginals over its
        total (exact when either side is absent, the best rank-1 guess from marginals otherwise)."""
        out = dict(self.factors)
        for key, (row_b, col_b) in other.factors.items():
            if key not in out:
                out[key] = (row_b, col_b)
                continue
            row_a, col_a = out[key]
            if key in EMBED_KEYS.values():  # a vocabulary grown between the stages
                n = max(row_a.shape[0], row_b.shape[0])
                row_a, row_b = _grown(row_a, n), _grown(row_b, n)
            if row_a.shape != row_b.shape or col_a.shape != col_b.shape:
                raise UserError(f"importance of {key} has shapes {tuple(row_a.shape)}x{tuple(col_a.shape)} and "
                                f"{tuple(row_b.shape)}x{tuple(col_b.shape)}: stages of another model shape")
            rows = row_a * col_a.sum() + row_b * col_b.sum()
            cols = col_a * row_a.sum() + col_b * row_b.sum()
            total = row_a.sum() * col_a.sum() + row_b.sum() * col_b.sum()
            out[key] = (rows / total.clamp(min=1e-30), cols)
        return Importance(out, self.stages + other.stages)

    def save(self, run_dir: Path, extra: dict) -> Path:
        tensors = {}
        for key, (row, col) in self.factors.items():
            tensors[f"{key}.row"], tensors[f"{key}.col"] = row.float().contiguous(), col.float().contiguous()
        with atomic_dir(Path(run_dir) / STATE_DIR) as tmp:
            save_file(tensors, str(tmp / STATE_FILE))
            meta = {"stages": self.stages, "matrices": len(self.factors),
                    "bytes": sum(t.numel() * 4 for t in tensors.values()), **extra}
            (tmp / "importance.json").write_text(json.dumps(meta, indent=2))
        return Path(run_dir) / STATE_DIR


def inherited(run_dir: Path | None) -> Importance:
    """The importance a base run carries (none for a base no metaplastic stage trained)."""
    if run_dir is None or not (Path(run_dir) / STATE_DIR / STATE_FILE).is_file():
        return Importance()
    state = Path(run_dir) / STATE_DIR
    tensors = read_safetensors(state / STATE_FILE)
    try:
        stages = int(json.loads((state / "importance.json").read_text())["stages"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{state / 'importance.json'} is missing or damaged; copy the run's plasticity/ "
                        "directory again") from None
    keys = sorted({k.rsplit(".", 1)[0] for k in tensors})
    missing = [k for k in keys if f"{k}.row" not in tensors or f"{k}.col" not in tensors]
    if missing:
        raise UserError(f"{state / STATE_FILE}: {missing[0]} lacks its row or column vector; the file is damaged")
    return Importance({k: (tensors[f"{k}.row"], tensors[f"{k}.col"]) for k in keys}, stages)


def lora_layers(core: nn.Module) -> dict[str, nn.Module]:
    """peft LoRA layers by the module name of the matrix they adapt (names of the unwrapped base)."""
    return {name: m for name, m in core.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}


class Metaplasticity(nn.Module):
    """The update rule of a metaplastic stage. `before_step()` / `after_step()` bracket the optimizers' step:
    the update just taken is damped by the inherited importance (viscosity), then its path integral is added
    to this stage's accumulators (persistent buffers: checkpointed with the trained tensors, so a resumed
    run accumulates exactly as an uninterrupted one)."""

    def __init__(self, core: nn.Module, embeddings: dict[str, nn.Parameter], base: Importance, strength: float,
                 damping: float = 1e-3):
        super().__init__()
        self.strength, self.damping, self.base = strength, damping, base
        self.tracked: list[tuple[str, str, nn.Parameter, str]] = []  # (key, role, tensor, buffer prefix)
        self.scales: dict[str, float] = {}
        for i, (key, layer) in enumerate(sorted(lora_layers(core).items())):
            a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            self.scales[key] = float(layer.scaling["default"])
            self.register_buffer(f"row_{i}", torch.zeros(b.shape[0]))  # out
            self.register_buffer(f"col_{i}", torch.zeros(a.shape[1]))  # in
            self.tracked += [(key, "B", b, f"{i}"), (key, "A", a, f"{i}")]
        first = len(self.scales)
        for j, (name, w) in enumerate(sorted(embeddings.items())):
            if not w.requires_grad:
                continue
            i = first + j
            self.register_buffer(f"row_{i}", torch.zeros(w.shape[0]))
            self.register_buffer(f"col_{i}", torch.zeros(w.shape[1]))
            # the stage's start: its movement normalises the importance at the end (LoRA's start is B A = 0)
            self.register_buffer(f"start_{i}", w.detach().clone(), persistent=False)
            self.tracked.append((EMBED_KEYS[name], "E", w, f"{i}"))
        self.damp = {id(p): self._damping_of(key, role, p) for key, role, p, _ in self.tracked}
        self._before: dict[int, torch.Tensor] = {}

    def _damping_of(self, key: str, role: str, p: torch.Tensor) -> torch.Tensor | None:
        """1 / (1 + strength x Omega) shaped to broadcast over the tensor; None where nothing is inherited."""
        found = self.base.omega(key)
        if found is None or self.strength == 0:
            return None
        row, col = (t.to(p.device, torch.float32) for t in found)
        if role == "E" and row.shape[0] < p.shape[0]:  # a grown vocabulary: new tokens carry no importance yet
            row = torch.cat([row, row.new_zeros(p.shape[0] - row.shape[0])])
        out_dim, in_dim = (p.shape[0], None) if role == "B" else (None, p.shape[1]) if role == "A" else p.shape
        if (out_dim is not None and row.shape[0] != out_dim) or (in_dim is not None and col.shape[0] != in_dim):
            raise UserError(f"the base's importance of {key} has {row.shape[0]} rows x {col.shape[0]} columns "
                            f"but this model's has {tuple(p.shape)}: importance from another model shape; train "
                            "from the run it came with, or set plasticity.metaplastic=0")
        if role == "B":  # rows of the merged update: their mean importance over the columns
            omega = (row * col.mean()).unsqueeze(1)
        elif role == "A":
            omega = (col * row.mean()).unsqueeze(0)
        else:
            omega = row.unsqueeze(1) * col.unsqueeze(0)
        return 1.0 / (1.0 + self.strength * omega)

    @torch.no_grad()
    def before_step(self) -> None:
        self._before = {id(p): p.detach().clone() for _, _, p, _ in self.tracked if p.grad is not None}

    @torch.no_grad()
    def after_step(self) -> None:
        for _key, role, p, i in self.tracked:
            old = self._before.get(id(p))
            if old is None:
                continue
            delta = p - old
            damp = self.damp[id(p)]
            if damp is not None:  # viscosity: the update taken, shrunk where the base's importance is high
                delta.mul_(damp)
                p.copy_(old + delta)
            path = -(p.grad.float() * delta.float())  # this step's share of the loss decrease, per element
            if role in ("B", "E"):
                getattr(self, f"row_{i}").add_(path.sum(1))
            if role in ("A", "E"):
                getattr(self, f"col_{i}").add_(path.sum(0))
        self._before = {}

    @torch.no_grad()
    def stage_importance(self) -> Importance:
        """This stage's importance, normalised: per matrix, total path integral / (squared movement + damping)
        as its scale, spread over rows and columns by their share of the path integral; mean 1 over the model."""
        params = {(key, role): (p, i) for key, role, p, i in self.tracked}
        raw, sizes = {}, {}
        for key, role, p, i in self.tracked:
            if role == "A":
                continue
            row, col = getattr(self, f"row_{i}").clamp(min=0), getattr(self, f"col_{i}").clamp(min=0)
            if role == "B":
                a = params[(key, "A")][0].float()
                b = p.float()
                total = getattr(self, f"row_{i}").sum() + getattr(self, f"col_{i}").sum()
                moved = (self.scales[key] ** 2) * torch.trace((b.T @ b) @ (a @ a.T))  # ||s B A||^2, never formed
                shape = (b.shape[0], a.shape[1])
            else:
                total = getattr(self, f"row_{i}").sum()
                moved = ((p.float() - getattr(self, f"start_{i}").float()) ** 2).sum()
                shape = tuple(p.shape)
            scale = total.clamp(min=0) / (moved + self.damping)
            raw[key] = (scale * _mean_one(row), _mean_one(col))
            sizes[key] = shape[0] * shape[1]
        weighted = sum(raw[k][0].mean() * sizes[k] for k in raw)  # mean of Omega over every element
        norm = sum(sizes.values()) / weighted if raw and weighted > 0 else 0.0
        return Importance({k: (r * norm, c) for k, (r, c) in raw.items()}, stages=1)


def _grown(row: torch.Tensor, rows: int) -> torch.Tensor:
    """A row vector padded with zeros to `rows` (a vocabulary grown since: new tokens carry no importance)."""
    return torch.cat([row, row.new_zeros(rows - row.shape[0])]) if row.shape[0] < rows else row


def _mean_one(v: torch.Tensor) -> torch.Tensor:
    """v / its mean (all ones where v carries nothing: no part of the matrix stands out)."""
    m = v.mean()
    return (v / m).cpu() if m > 0 else torch.ones_like(v).cpu()
