"""An importance anchor without the old data (EWC on the replay set): an L2 pull of the trainable
tensors towards the base's values, each element weighted by a diagonal Fisher estimate computed at the
base on replay windows, which may be the base's own generated text (minimodel.dream).

    penalty = weight / 2 x sum_i F_i (theta_i - theta_base_i)^2,   F normalised to mean 1

The Fisher is the mean squared gradient of the next-token loss, one window at a time (a per-window
estimate, not the batch gradient squared, which underestimates it). Normalising it makes `weight` read
like a weight decay towards the base whose strength follows importance. Anchored: every trainable
tensor that the base has (full fine-tuning: all; LoRA: the embeddings; LoRA factors start at "no
change" and are not anchored). Cost: two more copies of the anchored tensors (base values, Fisher).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from minimodel.data.windows import Windows


def anchored_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Trainable tensors with a base value (LoRA factors excluded), tied weights once."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n}


def window_gradients(model: nn.Module, windows: Windows, n_windows: int, params: list[torch.Tensor]):
    """(loss, gradients of `params`) of each of `n_windows` evenly spaced windows, one window at a time, the
    model in eval mode (a per-window estimate: the batch gradient squared would underestimate the Fisher)."""
    device = next(model.parameters()).device
    ids = torch.linspace(0, windows.n_windows - 1, min(n_windows, windows.n_windows)).long().tolist()
    was_training = model.training
    model.eval()
    try:
        for k in ids:
            x, y = windows.batch([k])
            loss = model(x.to(device), y.to(device))
            yield loss.detach(), torch.autograd.grad(loss, params, allow_unused=True), len(ids)
    finally:
        model.train(was_training)


def estimate_fisher(model: nn.Module, windows: Windows, n_windows: int) -> dict[str, torch.Tensor]:
    """Mean over `n_windows` evenly spaced windows of the squared gradient of each window's mean loss."""
    params = anchored_parameters(model)
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    for _, grads, count in window_gradients(model, windows, n_windows, list(params.values())):
        for n, g in zip(params, grads):
            if g is not None:
                fisher[n] += g.float() ** 2 / count
    return fisher


class FisherAnchor(nn.Module):
    """Holds the base values and the normalised Fisher of the anchored tensors (non-persistent buffers:
    moved with the model, recomputed from the base rather than saved)."""

    def __init__(self, model: nn.Module, fisher: dict[str, torch.Tensor], weight: float):
        super().__init__()
        self.weight = weight
        self.params = [model]  # a list: not a submodule (its parameters are the trained model's)
        self.names = list(fisher)
        total = sum(f.sum() for f in fisher.values())
        count = sum(f.numel() for f in fisher.values())
        scale = count / total.clamp(min=1e-30)
        live = anchored_parameters(model)
        for i, n in enumerate(self.names):
            self.register_buffer(f"base_{i}", live[n].detach().clone(), persistent=False)
            self.register_buffer(f"fisher_{i}", (fisher[n] * scale).to(live[n].dtype), persistent=False)

    def penalty(self) -> torch.Tensor:
        live = anchored_parameters(self.params[0])
        total = None
        for i, n in enumerate(self.names):
            d = live[n] - getattr(self, f"base_{i}")
            term = (getattr(self, f"fisher_{i}") * d * d).sum()
            total = term if total is None else total + term
        return 0.5 * self.weight * total
