"""The GPU check's 7B section: the peak memory of the 7B LoRA recipe as a user runs it (Mistral-7B's shape
with random weights: no hub), built by the CPT stage's own code (scripts/measure_memory.build: make_trainable,
apply_grad_checkpoint, build_optimizers; base.dtype, train.grad_checkpoint), on a bf16 base and, where
bitsandbytes imports on CUDA, an NF4 base loaded by the stage's load_base (base.quantize=nf4). Each row
records the planner's live bytes beside the measured peak, so the first lent GPU gives the planner's error."""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from minimodel.common.io import write_text
from minimodel.models.memory import set_grad_checkpointing
from minimodel.stages.checkpointing import core_of
from scripts.gpu_sections import free_memory, time_for
from scripts.measure_memory import LiveBytes, build, planned, random_base, stage_config, steps

# Mistral-7B-v0.3's shape (the 7B recipe's base), built with random weights: no hub.
MISTRAL_7B = dict(vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
                  rope_theta=1e6, tie_word_embeddings=False)
MISTRAL_TINY = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                    tie_word_embeddings=False)
SETTINGS = ((True, 1), (True, 2), (False, 1))  # (checkpointing, micro batch)


def shape_dir(shape: dict, out: Path) -> Path:
    """A directory with the shape's config.json, saved in bf16 as the hub's checkpoint is."""
    from transformers import MistralConfig

    out.mkdir(parents=True, exist_ok=True)
    raw = {**MistralConfig(**shape).to_dict(), "torch_dtype": "bfloat16"}
    write_text(out / "config.json", json.dumps(raw))
    return out


def measure_rows(ck, lm, opts, base_dir: Path, seq: int, fields: dict, quantize: str = "none") -> None:
    """Two AdamW steps (lr 5e-5, embeddings 1e-5) per setting; the peak includes the optimizer state."""
    trainable = sum(p.numel() for p in lm.parameters() if p.requires_grad)
    for ckpt, micro_batch in SETTINGS:
        row = {**fields, "grad_ckpt": ckpt, "micro_batch": micro_batch, "seq": seq, "rank": 128,
               "params": lm.num_params(), "trainable": trainable}
        if not time_for(ck, 8, **row):
            continue
        cfg = stage_config(base_dir, "bf16", ckpt, seq, micro_batch, 128, quantize)
        set_grad_checkpointing(core_of(lm), ckpt)  # what apply_grad_checkpoint does for train.grad_checkpoint
        free_memory(ck.device)
        held = torch.cuda.memory_allocated(ck.device) / 2**30 if ck.device.type == "cuda" else None
        t0 = time.perf_counter()
        try:
            if ck.device.type == "cuda":
                loss = steps(lm, opts, cfg, ck.device)
                peak = torch.cuda.max_memory_allocated(ck.device) / 2**30
            else:
                with LiveBytes(lm.parameters(), lm.buffers()) as live:
                    loss = steps(lm, opts, cfg, ck.device)
                peak = live.peak / 2**30
        except torch.OutOfMemoryError:
            ck.emit(**row, held_gib=held and round(held, 2), error="out of memory")
            continue
        plan = planned(cfg, "h100", cpu_loss=ck.device.type == "cpu")["live_gib"]  # live bytes: no allocator slack
        ck.emit(**row, loss=round(loss, 4), held_gib=held and round(held, 2), peak_gib=round(peak, 3),
                planned_gib=round(plan, 3), plan_error=round(plan / peak - 1, 3),
                step_s=round((time.perf_counter() - t0) / 2, 3))


def lora_7b(ck) -> None:
    """Peak memory of the 7B recipe (Mistral-7B shape, LoRA r=128 + embeddings, seq 2048) with the peft
    backend on a bf16 base, and on an NF4 base where bitsandbytes imports on CUDA."""
    shape, seq = (MISTRAL_TINY, 64) if ck.quick else (MISTRAL_7B, 2048)
    family = "Mistral (tiny)" if ck.quick else "Mistral-7B"
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = shape_dir(shape, Path(tmp) / "base")
        cfg = stage_config(base_dir, "bf16", True, seq, 1, 128)
        lm, opts = build(cfg, ck.device, random_base(base_dir, torch.bfloat16, ck.device))
        measure_rows(ck, lm, opts, base_dir, seq, {"model": family, "backend": "peft", "base_dtype": "bf16"})
        nf4_dir = None
        if ck.device.type == "cuda" and bitsandbytes_version():  # the stage loads a saved base through bitsandbytes
            nf4_dir = Path(tmp) / "saved"
            lm.core().save_pretrained(nf4_dir)  # LoRA-free weights of the same random base
        del lm, opts
        free_memory(ck.device)
        why = ("bitsandbytes does not import here" if not bitsandbytes_version() else
               "4-bit (bitsandbytes) needs CUDA" if ck.device.type != "cuda" else None)
        if why:
            ck.emit(model=family, backend="peft", base_dtype="nf4", skipped=why)
            return
        nf4_base(ck, nf4_dir, seq, family)


def nf4_base(ck, saved: Path, seq: int, family: str) -> None:
    """The NF4 rows: the saved random base loaded by the CPT stage's load_base with base.quantize=nf4."""
    from minimodel.stages.on_base import load_base

    cfg = stage_config(saved, "bf16", True, seq, 1, 128, quantize="nf4")
    lm, opts = build(cfg, ck.device, load_base(cfg).net)
    fields = {"model": family, "backend": f"peft, bitsandbytes {bitsandbytes_version()}", "base_dtype": "nf4"}
    measure_rows(ck, lm, opts, saved, seq, fields, quantize="nf4")


def bitsandbytes_version() -> str | None:
    try:
        import bitsandbytes
    except (ImportError, RuntimeError, OSError):
        return None
    return bitsandbytes.__version__
