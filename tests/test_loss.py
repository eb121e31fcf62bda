"""The chunked cross-entropy equals F.cross_entropy in value and gradient."""
import pytest
import torch
import torch.nn.functional as F

from minimodel.nn import loss as loss_mod
from minimodel.nn.loss import cross_entropy


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_torch(dtype, reduction, monkeypatch):
    monkeypatch.setattr(loss_mod, "CHUNK_ROWS", 7)  # several chunks, a ragged last one
    torch.manual_seed(0)
    logits = (torch.randn(50, 300) * 3).to(dtype).requires_grad_()
    targets = torch.randint(0, 300, (50,))
    targets[[3, 17, 49]] = -100
    ref_logits = logits.detach().clone().requires_grad_()
    ours = cross_entropy(logits, targets, reduction=reduction)
    ref = F.cross_entropy(ref_logits.float(), targets, ignore_index=-100, reduction=reduction)
    tol = 1e-5 if dtype == torch.float32 else 1e-4
    torch.testing.assert_close(ours, ref, atol=tol, rtol=tol)
    weights = torch.randn_like(ref) if reduction == "none" else torch.tensor(1.7)
    (ours * weights).sum().backward()
    (ref * weights).sum().backward()
    assert logits.grad.dtype == dtype
    gtol = 1e-6 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(logits.grad.float(), ref_logits.grad.float(), atol=gtol, rtol=1e-2)
    assert torch.all(logits.grad[[3, 17, 49]] == 0)
