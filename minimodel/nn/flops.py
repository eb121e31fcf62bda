"""FLOPs per token and model FLOPs utilisation (MFU)."""
from __future__ import annotations

import torch

from minimodel.nn.model import ModelConfig

# Dense bf16 peak FLOP/s per device (no sparsity), from vendor datasheets.
PEAK_BF16_FLOPS = {
    "H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12,
    "RTX 4090": 165e12, "4090": 165e12, "RTX 3090": 71e12, "3090": 71e12,
}


# A 2-core AVX-512/AMX CPU: a rough bf16 figure so CPU runs still print a (small) MFU.
CPU_PEAK_FLOPS = 2e12


def flops_per_token(cfg: ModelConfig, n_params: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the weights plus 12·L·T·d for attention scores
    (N without the input embedding, whose lookup costs no matmul)."""
    n = n_params - (0 if cfg.tie_embeddings else cfg.vocab_size * cfg.d_model)
    return 6 * n + 12 * cfg.n_layers * seq_len * cfg.n_heads * cfg.head_dim


def device_peak_flops(device: torch.device) -> float:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in PEAK_BF16_FLOPS.items():
            if key in name:
                return peak
        return 312e12  # unknown GPU: assume A100-class so MFU is at least plausible
    return CPU_PEAK_FLOPS
