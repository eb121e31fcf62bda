"""Map a ModelConfig to the transformers config that holds the same model."""
from __future__ import annotations

from minimodel.model import ModelConfig


def to_hf_config(cfg: ModelConfig, torch_dtype: str = "float32"):
    """Qwen3Config when QK-norm is on, LlamaConfig (the Llama2-style baseline) when off."""
    from transformers import LlamaConfig, Qwen3Config

    common = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, hidden_act="silu",
        max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.rms_eps,
        tie_word_embeddings=cfg.tie_embeddings, attention_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        initializer_range=cfg.init_std, bos_token_id=2, eos_token_id=3, pad_token_id=0,
        torch_dtype=torch_dtype,
    )
    if cfg.qk_norm:
        return Qwen3Config(**common, use_sliding_window=False)
    return LlamaConfig(**common, mlp_bias=False)
