"""Numerical faults during training: find where a non-finite value first appears, and flag loss
spikes. Both run only when something looks wrong (the diagnosis re-runs the step's forward
passes with hooks), so a healthy step pays nothing beyond the finite check it already had."""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
import torch.nn as nn

from minimodel.common.errors import UserError


class NumericalFault(UserError):
    """The run stopped on a non-finite loss or gradient (train.on_nonfinite=stop, or too many skips)."""


def _tensors(value) -> Iterable[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def _all_finite(value) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in _tensors(value) if t.is_floating_point())


@torch.no_grad()
def first_nonfinite_module(model: nn.Module, forward: Callable[[], object]) -> str | None:
    """Name (and type) of the first module, in execution order, whose output holds a NaN or inf
    when `forward()` runs; None when every output is finite. Forward hooks fire as each module
    returns, so the first hit is the innermost module where the value appeared."""
    hit: list[str] = []

    def hook(name):
        def record(module, args, output):
            if not hit and not _all_finite(output):
                hit.append(f"{name or 'model'} ({type(module).__name__})")
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()]
    try:
        forward()
    finally:
        for h in handles:
            h.remove()
    return hit[0] if hit else None


def nonfinite_tensors(model: nn.Module, grads: bool) -> list[str]:
    """Parameters (or their gradients) holding a NaN or inf, in the model's layer order."""
    found = []
    for name, p in model.named_parameters():
        t = p.grad if grads else p
        if t is not None and not bool(torch.isfinite(t).all()):
            found.append(name)
    return found


def diagnose(model: nn.Module, forwards: list[Callable[[], object]]) -> str:
    """One line that says where the non-finite value came from: weights already broken, a layer
    whose forward output is non-finite on one of this step's micro-batches, or gradients only."""
    def names(xs: list[str]) -> str:
        return ", ".join(xs[:3]) + (f" and {len(xs) - 3} more" if len(xs) > 3 else "")

    bad_weights = nonfinite_tensors(model, grads=False)
    if bad_weights:
        return f"weights already non-finite in {names(bad_weights)}"
    bad_grads = nonfinite_tensors(model, grads=True)  # read before the forwards below run
    for i, fwd in enumerate(forwards):
        where = first_nonfinite_module(model, fwd)
        if where is not None:
            return f"first non-finite output in {where} on micro-batch {i}"
    if bad_grads:
        return f"forward outputs finite, gradients non-finite in {names(bad_grads)}"
    return "forward outputs and gradients finite when re-run (a transient fault, e.g. a bf16 overflow)"


class SpikeDetector:
    """Flags a training loss more than `sigma` running standard deviations above its running mean
    (exponential averages over about 1 / (1 - beta) steps), once `warmup` steps have been seen."""

    def __init__(self, sigma: float, beta: float = 0.98, warmup: int = 20):
        self.sigma, self.beta, self.warmup = sigma, beta, warmup
        self.mean, self.var, self.seen = 0.0, 0.0, 0

    def update(self, loss: float) -> tuple[float, float] | None:
        """Feed one step's loss; returns (running mean, running std) when it is a spike."""
        if self.sigma <= 0 or not math.isfinite(loss):
            return None
        spike = None
        std = math.sqrt(self.var)
        if self.seen >= self.warmup and loss > self.mean + self.sigma * max(std, 1e-3 * abs(self.mean)):
            spike = (self.mean, std)
        if self.seen == 0:
            self.mean = loss
        else:
            delta = loss - self.mean
            self.mean += (1 - self.beta) * delta
            self.var = self.beta * (self.var + (1 - self.beta) * delta * delta)
        self.seen += 1
        return spike

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.seen = state["mean"], state["var"], state["seen"]
