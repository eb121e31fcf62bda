"""The unsloth backend (`lora.backend = "unsloth"`): FastLanguageModel loading (optionally a 4-bit
base: QLoRA), its LoRA kernels and gradient checkpointing, inside minimodel's own loop.

Needs a GPU and `pip install "minimodel[unsloth]"` (unsloth pins transformers <= 5.17,
datasets < 5, trl <= 1.15; remove torchvision if its build does not match torch). unsloth loads
Hugging Face architectures only; a minimodel run directory qualifies through its final/
(Qwen3/Llama format). On a CPU FastLanguageModel.from_pretrained stops at a CUDA device query
(unsloth 2026.10, even with UNSLOTH_ALLOW_CPU=1): use the peft backend there.

unsloth's embedding learning rate (UnslothTrainer's `embedding_learning_rate`) is an optimizer
group for embed_tokens/lm_head; minimodel's groups do the same (optim.lr x
lora.embedding_lr_mult). The embeddings are unfrozen in place, not handed to
`modules_to_save`, so a tied pair stays tied (see lora.py).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from minimodel.bases import TOKENIZER_FILE, Base, CausalLM, config_from_hf, minimodel_dir
from minimodel.config import LoraConfig
from minimodel.errors import UserError
from minimodel.lora import check_targets, unfreeze_embeddings


def _fast_language_model():
    try:
        import unsloth  # noqa: F401  (must come before transformers/peft are patched)
        from unsloth import FastLanguageModel
    except (ImportError, NotImplementedError, RuntimeError) as e:
        raise UserError(f"lora.backend=unsloth but unsloth cannot be used here ({str(e).splitlines()[0]}); "
                        "install it on a GPU machine with pip install 'minimodel[unsloth]', "
                        "or use lora.backend=peft") from None
    return FastLanguageModel


def load_base(source: str, max_seq_len: int, load_in_4bit: bool, trust_remote_code: bool = False) -> Base:
    FastLanguageModel = _fast_language_model()
    path = Path(source)
    native = minimodel_dir(path) if path.is_dir() else None
    weights_dir = native if native is not None else (path if path.is_dir() else None)
    model, _tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(weights_dir or source), max_seq_length=max_seq_len, dtype=None,
        load_in_4bit=load_in_4bit, trust_remote_code=trust_remote_code,
        local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1")
    tok = weights_dir / TOKENIZER_FILE if weights_dir is not None else None
    return Base(CausalLM(model, "hf", config_from_hf(model.config)), source, weights_dir,
                tok if tok is not None and tok.is_file() else None)


def apply_lora(lm: CausalLM, lc: LoraConfig, seed: int) -> CausalLM:
    FastLanguageModel = _fast_language_model()
    check_targets(lm.core(), lc.target_modules)
    lm.net = FastLanguageModel.get_peft_model(
        lm.net, r=lc.rank, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=list(lc.target_modules),
        use_rslora=lc.rslora, bias="none", use_gradient_checkpointing="unsloth", random_state=seed)
    unfreeze_embeddings(lm.core(), lc.train_embeddings)
    # A 4-bit/16-bit load leaves the embeddings in bf16, where an update of lr 1e-5 rounds away:
    # trainable tensors are kept in fp32 (in place, so a tied pair stays one Parameter).
    for p in lm.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    lm.config = config_from_hf(lm.core().config)
    return lm
