"""The GPU check's 7B section: the peak memory of the 7B LoRA recipe (Mistral-7B's shape with random
weights: no hub), through the kit's own LoRA wrapping, on a bf16 base and, where bitsandbytes imports,
an NF4 base."""
from __future__ import annotations

import time

import torch

from scripts.gpu_sections import free_memory, time_for, two_steps

# Mistral-7B-v0.3's shape (the 7B recipe's base), built with random weights: no hub.
MISTRAL_7B = dict(vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
                  rope_theta=1e6, tie_word_embeddings=False)
MISTRAL_TINY = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                    tie_word_embeddings=False)


def random_mistral(shape: dict, device: torch.device):
    """A Mistral-shaped transformers model with random bf16 weights, built on the meta device and
    initialised where it lives (a 7B model takes seconds on a GPU, minutes on a CPU)."""
    from transformers import AutoModelForCausalLM, MistralConfig

    cfg = MistralConfig(**shape)
    with torch.device("meta"):
        net = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa")
    net = net.to_empty(device=device)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.02) if p.ndim > 1 else p.fill_(1.0)
    net.model.rotary_emb = type(net.model.rotary_emb)(config=cfg).to(device)  # to_empty left it garbage
    return net


def lora_on(net):
    """The recipe's adapters through the kit: rank 128 rsLoRA on every projection, embeddings and lm_head
    trained fully, trainable tensors kept in fp32 (as the unsloth path keeps them)."""
    from minimodel.config import DEFAULT_LORA_TARGETS
    from minimodel.models.causal_lm import CausalLM, shape_of_hf_config
    from minimodel.models.lora import apply_lora

    lm = CausalLM(net, "hf", shape_of_hf_config(net.config))
    apply_lora(lm, rank=128, alpha=32.0, dropout=0.0, targets=DEFAULT_LORA_TARGETS, rslora=True,
               train_embeddings=True)
    for p in lm.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return lm


def lora_steps(ck, lm, seq: int, fields: dict) -> None:
    """Two AdamW steps (lr 5e-5, embeddings 1e-5) per setting; the peak includes the optimizer state."""
    from minimodel.config import OptimConfig
    from minimodel.train.optim import build_optimizers

    opts = build_optimizers(lm, OptimConfig(name="adamw", lr=5e-5, weight_decay=0.0), embed_lr=1e-5)
    core = lm.core()
    trainable = sum(p.numel() for p in lm.parameters() if p.requires_grad)
    lm.train()
    for grad_ckpt, micro_batch in ((True, 1), (True, 2), (False, 1)):
        row = {**fields, "grad_ckpt": grad_ckpt, "micro_batch": micro_batch, "seq": seq, "rank": 128,
               "params": lm.num_params(), "trainable": trainable}
        if not time_for(ck, 8, **row):
            continue
        if grad_ckpt:
            core.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            core.gradient_checkpointing_disable()
        free_memory(ck.device)
        held = torch.cuda.memory_allocated(ck.device) / 2**30 if ck.device.type == "cuda" else None
        x = torch.randint(0, lm.config.vocab_size, (micro_batch, seq), device=ck.device)
        t0 = time.perf_counter()
        try:
            loss = two_steps(lm, opts, x)
        except torch.OutOfMemoryError:
            ck.emit(**row, held_gib=held and round(held, 2), error="out of memory")
            continue
        peak = torch.cuda.max_memory_allocated(ck.device) / 2**30 if ck.device.type == "cuda" else None
        ck.emit(**row, loss=round(loss.item(), 4), held_gib=held and round(held, 2),
                peak_gib=peak and round(peak, 2), step_s=round((time.perf_counter() - t0) / 2, 3))
    del opts
    free_memory(ck.device)


def lora_7b(ck) -> None:
    """Peak memory of the 7B recipe (Mistral-7B shape, LoRA r=128 + embeddings, seq 2048) with the peft
    backend on a bf16 base, and on a 4-bit base where bitsandbytes imports."""
    shape, seq = (MISTRAL_TINY, 64) if ck.quick else (MISTRAL_7B, 2048)
    family = "Mistral (tiny)" if ck.quick else "Mistral-7B"
    lm = lora_on(random_mistral(shape, ck.device))
    lora_steps(ck, lm, seq, {"model": family, "backend": "peft", "base_dtype": "bf16"})
    del lm
    free_memory(ck.device)
    try:
        import bitsandbytes
    except ImportError as e:
        ck.emit(model=family, backend="peft", base_dtype="nf4", skipped=f"bitsandbytes does not import here ({e})")
        return
    if ck.device.type != "cuda":
        ck.emit(model=family, backend="peft", base_dtype="nf4", skipped="4-bit (bitsandbytes) needs CUDA")
        return
    lm = lora_on(quantize_4bit(random_mistral(shape, ck.device)))
    lora_steps(ck, lm, seq, {"model": family, "backend": f"peft, bitsandbytes {bitsandbytes.__version__}",
                             "base_dtype": "nf4"})


def quantize_4bit(net):
    """Every linear layer of the blocks as a bitsandbytes NF4 Linear4bit (QLoRA's frozen base)."""
    import bitsandbytes as bnb

    for block in net.model.layers:
        for parent in list(block.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, torch.nn.Linear):
                    q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=False,
                                          compute_dtype=torch.bfloat16, quant_type="nf4")
                    q.weight = bnb.nn.Params4bit(child.weight.data.cpu(), requires_grad=False, quant_type="nf4")
                    setattr(parent, name, q.to(child.weight.device))  # quantised as it moves to the GPU
    return net
