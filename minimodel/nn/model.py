"""The minimodel decoder: one file, Hugging Face parameter names.

Llama-style blocks (pre-norm RMSNorm, RoPE, grouped-query attention, SwiGLU, no
biases) with an optional per-head QK RMSNorm placed as Qwen3 places it (before
RoPE). Module names mirror transformers, so a state dict strict-loads into
Qwen3ForCausalLM (qk_norm=True) or LlamaForCausalLM (qk_norm=False) and gives the
same logits.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from minimodel.nn.loss import cross_entropy


@dataclass
class ModelConfig:
    vocab_size: int = 4096
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 0          # 0 = d_model // n_heads
    ffn_dim: int = 384
    qk_norm: bool = True       # False = the Llama2-style baseline
    tie_embeddings: bool = True
    rope_theta: float = 1e6
    rms_eps: float = 1e-6
    max_seq_len: int = 2048
    init_std: float = 0.02

    def __post_init__(self):
        if self.head_dim == 0:
            self.head_dim = self.d_model // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")

    def to_dict(self) -> dict:
        return asdict(self)


# One size dial. 26m and 104m are MiniMind2's small and base shapes.
PRESETS: dict[str, dict] = {
    "tiny": dict(vocab_size=4096, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=384),
    "26m": dict(vocab_size=6400, d_model=512, n_layers=8, n_heads=8, n_kv_heads=2, ffn_dim=1408),
    "104m": dict(vocab_size=6400, d_model=768, n_layers=16, n_heads=8, n_kv_heads=2, ffn_dim=2048),
}


def model_config_from(preset: str | None = None, **overrides) -> ModelConfig:
    names = {f.name for f in fields(ModelConfig)}
    bad = sorted(set(overrides) - names)
    if bad:
        raise ValueError(f"unknown model key(s) {bad}; valid keys: {sorted(names)}")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    return ModelConfig(**{**PRESETS.get(preset or "", {}), **overrides})


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 as transformers does; the result keeps the input's dtype (bf16 q/k
        # under autocast stay bf16 through RoPE and attention instead of round-tripping via fp32).
        return self.weight.to(x.dtype) * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)


class RotaryEmbedding(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = torch.outer(positions.float(), self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, H, T, D); rotate-half convention of transformers' Llama/Qwen3.
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # in bf16 under autocast: half the memory traffic
    return x * cos + rotated * sin


def fused_linear(x: torch.Tensor, projections: tuple[nn.Linear, ...]) -> tuple[torch.Tensor, ...]:
    """Several projections of the same input as one matmul when training: one larger GEMM
    is ~15-20% faster on CPU at 26M, and the weights stay separate (HF names, LoRA targets).
    Without grad (generation), the copy of the concatenated weights would cost more than it saves."""
    if not torch.is_grad_enabled() or any(type(p) is not nn.Linear for p in projections):
        return tuple(p(x) for p in projections)  # also the path for LoRA-wrapped layers
    weight = torch.cat([p.weight for p in projections])
    return F.linear(x, weight).split([p.out_features for p in projections], dim=-1)


class KVCache:
    """One layer's keys and values during generation, allocated once for the whole sequence (on the first
    write, in the keys' dtype): each step writes its positions in place and attention reads a view of the
    filled prefix. Concatenating instead copies the whole cache at every step (quadratic in length)."""

    def __init__(self, max_len: int):
        self.max_len, self.length = max_len, 0
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v: (B, kv_heads, T, head_dim) of the next T positions; the keys and values of all so far."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache of {self.max_len} positions cannot take {end}")
        if self.k is None:
            shape = (k.shape[0], k.shape[1], self.max_len, k.shape[3])
            self.k = k.new_empty(shape)
            self.v = v.new_empty(shape)
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_eps)
        self.qk_norm = cfg.qk_norm
        self.record_max_logit = False  # diagnostics: the largest pre-softmax logit
        self.max_logit: float | None = None

    def forward(self, x, cos, sin, cache: KVCache | None = None):
        T = x.shape[1]
        q, k, v = fused_linear(x, (self.q_proj, self.k_proj, self.v_proj))
        # split heads (views, no copy); QK-norm per head over head_dim, before RoPE, as Qwen3, and in the
        # (batch, time, head, head_dim) layout: there it saves for backward what the planner counts
        q = rearrange(q, "b t (h d) -> b t h d", h=self.n_heads)
        k = rearrange(k, "b t (h d) -> b t h d", h=self.n_kv_heads)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rearrange(q, "b t h d -> b h t d"), rearrange(k, "b t h d -> b h t d")
        v = rearrange(v, "b t (h d) -> b h t d", h=self.n_kv_heads)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        past = 0
        if cache is not None:  # a KVCache: earlier positions' keys and values, this chunk's written after them
            past = cache.length
            k, v = cache.append(k, v)
        if self.record_max_logit:
            self._record_logits(q, k, past)
        if past and T > 1:  # a chunk after a prefix: causal within the chunk, all of the prefix
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=(past == 0 and T > 1), enable_gqa=True)
        return self.o_proj(rearrange(y, "b h t d -> b t (h d)"))  # merge heads

    @torch.no_grad()
    def _record_logits(self, q, k, past):
        k = k.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
        scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(self.head_dim)
        T, S = scores.shape[-2:]
        causal = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=past)
        m = scores.masked_fill(~causal, float("-inf")).amax().item()
        self.max_logit = m if self.max_logit is None else max(self.max_logit, m)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=False)

    def forward(self, x):
        gate, up = fused_linear(x, (self.gate_proj, self.up_proj))
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.rms_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.rms_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.rms_eps)
        self.rotary_emb = RotaryEmbedding(cfg)


class MiniModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        # activation checkpointing (train.grad_checkpoint): each block keeps only its input and runs
        # again in backward; same loss and gradients, activations of one block instead of all
        self.grad_checkpoint = False
        self.reset_parameters()

    def reset_parameters(self):
        std = self.config.init_std
        for name, p in self.named_parameters():
            if p.ndim == 1:
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                # residual-branch outputs shrink with depth (GPT-2 convention)
                nn.init.normal_(p, std=std / math.sqrt(2 * self.config.n_layers))
            else:
                nn.init.normal_(p, std=std)

    def num_params(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # tied weights counted once
        if exclude_embeddings:
            n -= self.model.embed_tokens.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None,
                caches: list[KVCache] | None = None, start_pos: int = 0, reduction: str = "mean"):
        """Logits (B, T, V), or the cross-entropy loss when `targets` is given
        (targets == -100 are ignored)."""
        T = input_ids.shape[1]
        x = self.model.embed_tokens(input_ids)
        positions = torch.arange(start_pos, start_pos + T, device=input_ids.device)
        cos, sin = self.model.rotary_emb(positions)
        recompute = self.grad_checkpoint and caches is None and torch.is_grad_enabled()
        for i, layer in enumerate(self.model.layers):
            if recompute:
                x = checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin, None if caches is None else caches[i])
        logits = self.lm_head(self.model.norm(x))
        if targets is None:
            return logits
        return cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction=reduction)

    def attention_modules(self) -> list[Attention]:
        return [layer.self_attn for layer in self.model.layers]
