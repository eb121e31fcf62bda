"""The interface every loaded model has: `CausalLM` wraps a native MiniModel or a transformers
causal LM (either possibly peft-wrapped) with its tokenizer and provenance (`Source`), and owns
the native-vs-transformers branches: the trainer's calling convention (`model(ids, targets,
reduction=...)`), evaluation's (`logits(ids)`), sampling (`sample`), the shape (`config`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from minimodel.common.errors import UserError
from minimodel.nn.generate import generate
from minimodel.nn.loss import cross_entropy
from minimodel.nn.model import MiniModel, ModelConfig
from minimodel.tokenizers.tokenizer import Tokenizer


@dataclass
class Source:
    """What a spec resolved to, before any weights are read."""
    spec: str                      # what the user named
    kind: str                      # "native" | "hf" | "checkpoint" | "adapter"
    path: Path                     # the directory holding the weights (the adapter's, for an adapter)
    run_dir: Path | None = None    # the run directory the spec named or lies in
    base: Source | None = None     # an adapter's base


class CausalLM(nn.Module):
    """A native MiniModel or a transformers causal LM (either possibly peft-wrapped), with its
    tokenizer and provenance. `kind` is "native" or "hf"; `net` is the wrapped module."""

    def __init__(self, net: nn.Module, kind: str, config: ModelConfig, tokenizer: Tokenizer | None = None,
                 source: Source | None = None, context: int | None = None):
        super().__init__()
        self.net, self.kind, self.config = net, kind, config
        self.tokenizer, self.source = tokenizer, source
        self.context = context or config.max_seq_len
        self.name = (source.run_dir or Path(source.spec)).name if source else "model"

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "mean"):
        if self.kind == "native":
            return self.net(input_ids, targets, reduction=reduction)
        logits = self.net(input_ids=input_ids, use_cache=False).logits
        if targets is None:
            return logits
        return cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction=reduction)

    @torch.no_grad()
    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """fp32 logits of (B, T) ids (right padding only: a causal model's earlier outputs ignore it)."""
        return self(ids.to(self.device)).float()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def run_dir(self) -> Path | None:
        return self.source.run_dir if self.source else None

    @property
    def prefix_id(self) -> int:
        """What a document is conditioned on, as in the pretraining stream: BOS for a tokenizer that puts
        one before every text (Llama-style); otherwise EOS, which ends the previous document (the kit's
        tokenizers, Qwen; lm-eval's convention too)."""
        tok = self.require_tokenizer()
        if tok.adds_bos or tok.eos_id is None:
            return tok.bos_id
        return tok.eos_id

    def require_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            where = self.source.path if self.source else "the model"
            raise UserError(f"{where} has no tokenizer (tokenizer.model or tokenizer.json); "
                            "copy the model's tokenizer beside it")
        return self.tokenizer

    def core(self) -> nn.Module:
        """The model without any peft wrapper (MiniModel or a transformers PreTrainedModel)."""
        net = self.net
        return net.get_base_model() if hasattr(net, "get_base_model") else net

    def refresh_config(self) -> None:
        """Re-read the shape after the core changed (a vocabulary resize, a reload in another dtype)."""
        core = self.core()
        self.config = core.config if isinstance(core, MiniModel) else shape_of_hf_config(core.config)

    @torch.no_grad()
    def sample(self, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
               seed: int = 0, eos_id: int | None = None) -> torch.Tensor:
        """(B, T) prompt -> (B, T + new) with the KV cache: greedy at temperature 0, else nucleus
        sampling seeded by `seed` alone (what ran before in the process does not matter)."""
        if self.kind == "native":
            room = self.config.max_seq_len - prompt.shape[1]
            gen = torch.Generator(device=prompt.device).manual_seed(seed)
            return generate(self.core(), prompt, min(max_new_tokens, room), temperature=temperature, top_p=top_p,
                            eos_id=eos_id, generator=gen)
        how = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if temperature > 0 else \
            dict(do_sample=False)
        devices = [prompt.device] if prompt.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # transformers samples from the global generator
            torch.manual_seed(seed)
            return self.net.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=max_new_tokens,
                                     eos_token_id=eos_id, pad_token_id=eos_id if eos_id is not None else 0, **how)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # each shared tensor once

    def attention_modules(self) -> list:
        core = self.core()
        return core.attention_modules() if isinstance(core, MiniModel) else []


def check_tokenizer_fits(n_tokens: int, vocab_size: int, where: str) -> None:
    """Every token id must have an embedding row (rows beyond the tokenizer are padding)."""
    if n_tokens > vocab_size:
        raise UserError(f"{where}: the tokenizer has {n_tokens} tokens but the model embeds only {vocab_size}; "
                        "use the tokenizer the model was trained with (or resize the embeddings first)")


def shape_of_hf_config(hf_config) -> ModelConfig:
    """Our ModelConfig for any transformers config (FLOPs, vocabulary size, tying): the shape only."""
    def get(*names, default=None):
        return next((getattr(hf_config, n) for n in names if getattr(hf_config, n, None) is not None), default)

    d = get("hidden_size", "n_embd", "d_model")
    heads = get("num_attention_heads", "n_head", default=1)
    return ModelConfig(
        vocab_size=get("vocab_size"), d_model=d, n_layers=get("num_hidden_layers", "n_layer"),
        n_heads=heads, n_kv_heads=get("num_key_value_heads", default=heads),
        head_dim=get("head_dim", default=d // heads), ffn_dim=get("intermediate_size", default=4 * d),
        qk_norm=hasattr(hf_config, "model_type") and hf_config.model_type.startswith("qwen3"),
        tie_embeddings=bool(get("tie_word_embeddings", default=False)),
        max_seq_len=get("max_position_embeddings", default=2048),
    )
