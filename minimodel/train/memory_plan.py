"""The memory model: peak bytes per GPU of a training step, by component. scripts/plan.py prints it
(with time and cost), scripts/calibrate_plan.py holds it against measured peaks, and the stages ask it
whether `train.grad_checkpoint=auto` must switch checkpointing on. Nothing is allocated: shapes only.

Adapter stages (a config with a [base]): the frozen base at its bytes per parameter (fp32 4, bf16 2,
int8 ~1, NF4 ~0.52), the trainable tensors (LoRA factors, embeddings, lm_head) as fp32 masters with
fp32 gradients and AdamW's two fp32 states; activations of a transformers base per
`hf_activation_bytes_per_token_layer`, with checkpointing each layer's input plus one layer recomputed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from minimodel.nn.model import MiniModel, ModelConfig
from minimodel.train.optim import split_params

GIB = 2 ** 30
CUDA_CONTEXT_BYTES = 1.0 * GIB      # CUDA context, cuBLAS workspaces, kernels (typically 0.5-1 GiB)
NCCL_BYTES = 0.5 * GIB              # NCCL communicator buffers when there is more than one GPU
FRAGMENTATION = 0.10                # caching-allocator slack on top of live tensors
NF4_BYTES = 4.13 / 8                # 4-bit weights with double-quantised scales
ADAMW8BIT_BLOCK = 256               # bitsandbytes AdamW8bit: one fp32 absmax per block of each moment
INT8_BYTES = 1.0 + 4 / 4096         # LLM.int8(): one byte per weight + an fp32 scale per row
FROZEN_BYTES = {"fp32": 4.0, "bf16": 2.0, "nf4": NF4_BYTES, "int8": INT8_BYTES}


@dataclass
class ModelCounts:
    params: int                       # tied weights counted once (MiniModel.num_params)
    hidden: int                       # 2-D matrices inside the blocks (Muon's under optim.name=muon)
    other: int                        # embeddings, lm_head, norms (AdamW's)
    hidden_shapes: list[tuple[int, int]]
    stage: dict | None = None         # adapter stages: trainable/frozen counts (stage_numbers)


def count_params(mcfg: ModelConfig) -> ModelCounts:
    with torch.device("meta"):  # shapes only: a 7B config costs nothing here
        model = MiniModel(mcfg)
    g = split_params(model)
    hidden = sum(p.numel() for _, p in g.hidden)
    return ModelCounts(model.num_params(), hidden, model.num_params() - hidden,
                       [tuple(p.shape) for _, p in g.hidden])


def projection_shapes(m: ModelConfig) -> dict[str, tuple[int, int]]:
    """(in, out) of each projection of a Llama-style block."""
    dq, dkv = m.n_heads * m.head_dim, m.n_kv_heads * m.head_dim
    return {"q_proj": (m.d_model, dq), "k_proj": (m.d_model, dkv), "v_proj": (m.d_model, dkv),
            "o_proj": (dq, m.d_model), "gate_proj": (m.d_model, m.ffn_dim), "up_proj": (m.d_model, m.ffn_dim),
            "down_proj": (m.ffn_dim, m.d_model)}


def lora_params(m: ModelConfig, rank: int, targets: list[str]) -> int:
    """rank x (in + out) for each targeted projection of every layer."""
    shapes = projection_shapes(m)
    return m.n_layers * sum(rank * sum(shapes[t]) for t in targets if t in shapes)


def activation_bytes_per_token_layer(m: ModelConfig, act_bytes: int) -> int:
    """Bytes one native (minimodel.nn.model) decoder layer keeps for backward per token, read off its
    autograd graph (eager; flash SDPA, which keeps no T x T scores). b = activation bytes: 2 under bf16
    autocast, 4 in fp32. The residual stream is fp32 (embedding output + adds), so each RMSNorm keeps its
    fp32 input, its fp32 normalised output and 1/rms. dq = heads x head_dim, dkv = kv_heads x head_dim.
      two RMSNorms on the residual:        2 x (4d + 4d + 4)
      q/k/v and gate/up GEMM inputs:       2 x b·d
      fused q/k/v output (v is a view):    b(dq + 2dkv)
      q, k after RoPE (SDPA inputs):       b(dq + dkv)
      SDPA output (= o_proj input) + lse:  b·dq + 4·heads
      SwiGLU fused gate/up, silu(gate), down input: 4·b·f
      QK-norm (if on): its fp32 input copy (bf16 only: in fp32 it is a view of the fused output),
                       the normalised output and 1/rms: (4 + b)(dq + dkv) + 4(heads + kv_heads) under bf16
    tests/test_plan.py checks this against the tensors autograd actually saves."""
    d, f, b = m.d_model, m.ffn_dim, act_bytes
    dq, dkv = m.n_heads * m.head_dim, m.n_kv_heads * m.head_dim
    n = 2 * (8 * d + 4) + 2 * b * d + b * (dq + 2 * dkv) + b * (dq + dkv) + b * dq + 4 * m.n_heads + 4 * b * f
    if m.qk_norm:
        n += (4 if b < 4 else 0) * (dq + dkv) + b * (dq + dkv) + 4 * (m.n_heads + m.n_kv_heads)
    return n


def hf_activation_bytes_per_token_layer(m: ModelConfig, act_bytes: int, trained: list[str], rank: int) -> int:
    """Bytes one transformers Llama-style decoder layer (frozen weights, LoRA of `rank` on `trained`, or
    full fine-tuning with rank 0) keeps for backward per token. The residual stream is fp32 (the trained
    fp32 embeddings feed it). Read off what autograd saves (tests/test_memory_plan.py pins it):
      two RMSNorms (frozen weight): fp32 input and 1/rms        2 x (4d + 4)
      the input of each trained projection: under bf16 autocast each one's own bf16 cast (the fp32
      norm output is cast per call), in fp32 the shared norm output once per block half, the SDPA
      output for o_proj (a view) and the SiLU product for down_proj
      SDPA: q and k after RoPE, v, the output, log-sum-exp       b(2dq + 2dkv) + 4·heads
      SwiGLU: gate, up, silu(gate)                               3·b·f
      LoRA: A's output per trained projection                    b·rank each"""
    d, f, b = m.d_model, m.ffn_dim, act_bytes
    dq, dkv = m.n_heads * m.head_dim, m.n_kv_heads * m.head_dim
    shapes = projection_shapes(m)
    if b < 4:
        inputs = sum(b * shapes[t][0] for t in trained if t in shapes)
    else:  # fp32: one shared input per norm output; o_proj's is the SDPA output (already counted)
        inputs = 4 * (d * any(t in trained for t in ("q_proj", "k_proj", "v_proj"))
                      + d * any(t in trained for t in ("gate_proj", "up_proj")) + f * ("down_proj" in trained))
    return (2 * (4 * d + 4) + inputs + b * (2 * dq + 2 * dkv) + 4 * m.n_heads + 3 * b * f
            + b * rank * sum(t in shapes for t in trained))


def stage_numbers(cfg, m: ModelConfig, n_params: int, stored: str = "fp32", hf: bool = False) -> dict:
    """Trainable and frozen parameter counts, the bytes per frozen parameter, and whether activations are
    checkpointed. `stored`: the base checkpoint's own dtype ("bf16"/"fp32", what base.dtype=auto keeps);
    `hf`: a transformers base (its own activation formula)."""
    embed = m.vocab_size * m.d_model * (1 if m.tie_embeddings else 2)
    base = getattr(cfg, "base", None)
    quantize = getattr(base, "quantize", "none")
    dtype = stored if getattr(base, "dtype", "auto") == "auto" else base.dtype
    # unsloth always recomputes each layer in backward; the peft backend when train.grad_checkpoint says so
    checkpointing = cfg.lora.backend == "unsloth" or cfg.train.grad_checkpoint == "true"
    common = {"checkpointing": checkpointing, "hf": hf, "dtype": dtype, "quantize": quantize,
              "dtype_setting": getattr(base, "dtype", "auto"),
              "rank": cfg.lora.rank if cfg.lora.enabled else 0,
              "targets": list(cfg.lora.target_modules) if cfg.lora.enabled else list(projection_shapes(m))}
    if not cfg.lora.enabled:  # full fine-tuning: every weight is an fp32 master
        return {"trainable": n_params, "frozen": 0, "lora": 0, "frozen_bytes_per_param": 0.0, **common}
    lora = lora_params(m, cfg.lora.rank, list(cfg.lora.target_modules))
    trained_embed = embed if cfg.lora.train_embeddings else 0
    if cfg.lora.backend == "unsloth":
        frozen_bytes = NF4_BYTES if cfg.lora.load_in_4bit else 2.0
    else:
        frozen_bytes = FROZEN_BYTES[quantize if quantize != "none" else dtype]
    return {"trainable": lora + trained_embed, "frozen": n_params - trained_embed, "lora": lora,
            "frozen_bytes_per_param": frozen_bytes,
            "embedding_optim": getattr(cfg.lora, "embedding_optim", "adamw") if trained_embed else "adamw", **common}


def memory_bytes(cfg, m: ModelConfig, counts: ModelCounts, micro_batch: int, n_gpus: int,
                 checkpointing: bool | None = None, cpu_loss: bool = False) -> dict:
    """Estimated peak bytes per GPU, by component. `checkpointing` overrides the stage's setting (what
    train.grad_checkpoint=auto compares); `cpu_loss`: the logits as the CPU's chunked loss keeps them
    (minimodel.nn.loss: the logits and their gradient only), for the CPU calibration.

    Pretraining and full fine-tuning add every component up. An adapter stage (a frozen base) is planned by
    phase, as measured (scripts/calibrate_plan.py --measure): the weights and AdamW states persist; on top
    of them either the end of the forward pass and start of backward (activations, autocast's weight
    copies, the logits and their gradient, lm_head's fp32 gradient) or the optimizer step (every
    gradient and AdamW's foreach temporary, one fp32 tensor per trained one), whichever is larger; the
    LoRA gradients appear during backward only as the layers' activations are freed."""
    bf16 = cfg.train.dtype == "bf16"
    b = 2 if bf16 else 4
    tokens = micro_batch * cfg.data.seq_len
    n = counts.params
    if cfg.optim.name == "muon":  # one momentum buffer for hidden matrices, AdamW's two for the rest
        optim = 4 * counts.hidden + 8 * counts.other
    else:
        optim = 8 * n
    weights, trained, cast = 4 * n, n, 2 * n if bf16 else 0
    stage = counts.stage
    adapter = stage is not None and stage["frozen"] > 0
    per_layer = activation_bytes_per_token_layer(m, b)
    if adapter:  # only the trainable tensors carry state
        trained = stage["trainable"]
        weights = int(stage["frozen"] * stage["frozen_bytes_per_param"]) + 4 * trained
        optim = 8 * trained
        eight_bit = stage.get("embedding_optim") == "adamw8bit"
        if eight_bit:  # two uint8 moments + an fp32 absmax per 256-value block of each, for the embeddings
            embed_trained = trained - stage["lora"]
            optim = 8 * stage["lora"] + int(embed_trained * (2 + 8 / ADAMW8BIT_BLOCK))
        # autocast's bf16 copies of fp32 weights, kept for backward: the whole base when it is fp32, else
        # only the trained fp32 masters that feed a matmul (LoRA factors, lm_head)
        if not bf16:
            cast = 0
        elif stage["frozen_bytes_per_param"] == 4:
            cast = 2 * n
        else:
            cast = 2 * (stage["lora"] + (trained - stage["lora"] > 0) * m.vocab_size * m.d_model)
    if stage is not None and stage.get("hf"):
        per_layer = hf_activation_bytes_per_token_layer(m, b, stage["targets"], stage["rank"])
    if checkpointing is None:
        checkpointing = bool(stage and stage.get("checkpointing")) or cfg.train.grad_checkpoint == "true"
    # layers (or, checkpointed, each layer's fp32 input and one layer recomputed) + the final norm (fp32
    # input and output, 1/rms) + lm_head's input
    kept = tokens * (m.n_layers * 4 * m.d_model + per_layer) if checkpointing else tokens * m.n_layers * per_layer
    # GPU: bf16 logits, their fp32 copy for the loss, its gradient, the gradient in b; CPU: logits + gradient
    logit_bytes = 2 * b if cpu_loss else b + 4 + 4 + b
    parts = {
        "weights": weights,                             # fp32 master weights (a frozen base as loaded)
        "grads": 4 * trained,                           # fp32
        "optimizer": optim,                             # fp32 states
        "optimizer_step_temporaries": 0,
        "bf16_weight_copies": cast,                     # autocast's casts, kept for backward
        "ddp_buckets": 4 * trained if n_gpus > 1 else 0,  # DDP copies grads into its buckets
        "activations": kept + tokens * (8 * m.d_model + 4 + b * m.d_model),
        "logits": tokens * m.vocab_size * logit_bytes,
    }
    if adapter:
        head_grad = 4 * m.vocab_size * m.d_model if trained > stage["lora"] else 0
        backward = parts["activations"] + parts["logits"] + cast + head_grad
        # a tied embedding's second gradient (lm_head's, then embed_tokens') is added out of place at the end
        # of backward: the stored gradient, the new one and their sum are live together
        tied_sum = 8 * m.vocab_size * m.d_model if m.tie_embeddings and head_grad else 0
        # AdamW's foreach temporary covers what it holds; AdamW8bit updates its tensors in place
        foreach = 4 * (stage["lora"] if eight_bit else trained)
        step = 4 * trained + max(foreach, tied_sum)
        if backward >= step:
            parts["grads"] = head_grad
        else:
            parts.update(activations=0, logits=0, bf16_weight_copies=0,
                         optimizer_step_temporaries=max(foreach, tied_sum))
    live = sum(parts.values())
    parts["fragmentation"] = int(FRAGMENTATION * live)
    parts["cuda_context"] = int(CUDA_CONTEXT_BYTES + (NCCL_BYTES if n_gpus > 1 else 0))
    parts["total"] = sum(parts.values())
    return parts


def live_bytes(parts: dict) -> int:
    """What the tensors themselves hold at the peak (what max_memory_allocated measures)."""
    return parts["total"] - parts["fragmentation"] - parts["cuda_context"]
