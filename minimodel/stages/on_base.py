"""Stages on a base (CPT, SFT): the base loaded, then adapted to the data (its vocabulary grown
when the data's tokenizer extends it, then LoRA or full fine-tuning), and at the end the merged
model (and the adapter) saved as the next stage's base.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from minimodel.common.errors import UserError
from minimodel.common.io import atomic_dir
from minimodel.config import StageConfig
from minimodel.data.format import read_manifest
from minimodel.data.stage_data import StageData
from minimodel.models.causal_lm import CausalLM
from minimodel.models.export import copy_tokenizer_files, export_model
from minimodel.models.loading import load, resolve
from minimodel.models.lora import TrainableView, apply_lora, apply_unsloth_lora, full_finetune, merge, save_adapter
from minimodel.models.memory import base_dtype, fp32_masters, prepare_quantized
from minimodel.models.vocab_resize import resize_vocab
from minimodel.stages.lifecycle import Built
from minimodel.tokenizers.tokenizer import Tokenizer, copy_tokenizer, open_tokenizer, tokenizer_relation


def load_base(cfg: StageConfig) -> CausalLM:
    """The stage's base (base.path) as trained, on the CPU (a quantised one on the GPU), its frozen weights
    in base.dtype; `lm.precision` says what was chosen and why (the run's first log line repeats it)."""
    src = resolve(cfg.base.path)
    dtype, why = base_dtype(cfg.base.dtype, src.kind, src.path)
    if cfg.base.quantize != "none":
        dtype, why = torch.bfloat16, f"base.quantize={cfg.base.quantize} (bf16 compute, bf16 norms until prepared)"
    lm = load(src, trust_remote_code=cfg.base.trust_remote_code,
              backend="unsloth" if cfg.lora.backend == "unsloth" else "transformers",
              max_seq_len=cfg.data.seq_len, load_in_4bit=cfg.lora.load_in_4bit, dtype=dtype,
              quantize=cfg.base.quantize)
    if cfg.lora.backend == "unsloth":  # unsloth picks its own dtype (bf16 where the GPU has it, or 4-bit)
        why = "lora.backend=unsloth chooses (bf16, or 4-bit with lora.load_in_4bit)"
    lm.precision = f"{cfg.base.quantize if cfg.base.quantize != 'none' else str(dtype).removeprefix('torch.')}" \
                   f" frozen base ({why})"
    if dtype != torch.float32 and cfg.train.dtype == "fp32" and cfg.lora.backend == "peft":
        raise UserError(f"the base's frozen weights are {str(dtype).removeprefix('torch.')} ({why}) but "
                        "train.dtype=fp32 runs without autocast; set train.dtype=bf16, or base.dtype=fp32")
    return lm


def adapt(cfg: StageConfig, lm: CausalLM, data: StageData, stage: str,
          rank_plan: Callable[[CausalLM], dict] | None = None) -> Built:
    """The base made trainable on the data: resized when the data's tokenizer extends it, then
    wrapped in LoRA (lora.enabled) or unfrozen whole (full fine-tuning). `rank_plan(lm)`, called on the
    resized base, returns peft's rank_pattern (per-module ranks) for the peft backend."""
    lc = cfg.lora
    base_tokenizer = lm.tokenizer
    info = {"base": cfg.base.path, "base_kind": lm.kind,
            "tokenizer": tokenizer_relation(base_tokenizer, data.tokenizer, cfg.base.path)}
    if lm.config.max_seq_len < cfg.data.seq_len:
        raise UserError(f"data.seq_len={cfg.data.seq_len} exceeds the base's context of "
                        f"{lm.config.max_seq_len} tokens; lower data.seq_len")
    extended = info["tokenizer"] == "extended"
    if extended:
        resized = resize_vocab(lm.core(), base_tokenizer, data.tokenizer)
        lm.refresh_config()
        info.update({f"vocab_{k}": v for k, v in resized.items()})
    make_trainable(cfg, lm, rank_plan(lm) if rank_plan is not None else None)
    view = TrainableView(lm)
    info["trainable_params"] = sum(p.numel() for p in view.parameters())
    info["params"] = lm.num_params()
    embed_lr = cfg.optim.lr * lc.embedding_lr_mult
    how = f"LoRA r={lc.rank} ({lc.backend})" if lc.enabled else "full fine-tuning"
    summary = (f"{stage}: base {cfg.base.path} ({lm.kind}, {info['params'] / 1e6:.2f}M params, "
               f"tokenizer {info['tokenizer']}), {getattr(lm, 'precision', 'fp32 frozen base')}, {how}, "
               f"{info['trainable_params'] / 1e6:.3f}M trainable (fp32), "
               f"lr {cfg.optim.lr:g} / embeddings {embed_lr:g}, {cfg.train.steps} steps")

    def finish(run_dir: Path) -> dict:
        out = {}
        if lc.enabled:
            save_adapter(lm, run_dir / "adapter", data.tokenizer,
                         {"base": cfg.base.path, "trust_remote_code": cfg.base.trust_remote_code, "stage": stage,
                          "backend": lc.backend}, save_embeddings=lc.train_embeddings or extended)
            out["adapter"] = str(run_dir / "adapter")
        source_dir = lm.source.path if lm.source else None
        if cfg.base.quantize != "none" and lc.enabled:
            # Folding the factors into 4-/8-bit weights would round much of the update away (and the result
            # would need bitsandbytes to load): the base is reloaded unquantised, in its own dtype, with the
            # saved adapter merged, as QLoRA models are exported.
            dtype, _ = base_dtype(cfg.base.dtype, "hf", source_dir)
            merged = load(run_dir / "adapter", trust_remote_code=cfg.base.trust_remote_code, dtype=dtype).core()
        else:
            merged = merge(lm)
        out["final"] = str(save_merged(merged, lm.kind, run_dir / "final", data.tokenizer,
                                       None if extended else source_dir))
        return out

    # A trained base reads text in a language it knows far better than a uniform guess (ln V nats); one
    # nat worse than that on the replay set means the ids mean nothing to it: another tokenizer's data.
    # (A new language may well start worse than uniform: an English core is confidently wrong on Korean.)
    return Built(lm, view, info, summary, finish, embed_lr=embed_lr, embed_optim=lc.embedding_optim,
                 vocab_fix="the data and the base disagree on the tokenizer",
                 max_start_loss=math.log(lm.config.vocab_size) + 1.0)


def make_trainable(cfg: StageConfig, lm: CausalLM, rank_pattern: dict | None = None) -> CausalLM:
    """LoRA (peft, on a prepared quantised base too, or unsloth) or full fine-tuning, in place; whatever
    trains becomes an fp32 master (LoRA factors, embeddings, lm_head; everything under full fine-tuning).
    The GPU check and the memory calibration build their models through this too. `rank_pattern`: peft's
    per-module ranks (plasticity.surprise_rank)."""
    lc = cfg.lora
    if not lc.enabled:
        full_finetune(lm)
    elif lc.backend == "unsloth":
        apply_unsloth_lora(lm, lc, cfg.train.seed)
    else:
        if cfg.base.quantize != "none":
            lm.net = prepare_quantized(lm.net)
        apply_lora(lm, lc.rank, lc.alpha, lc.dropout, lc.target_modules, lc.rslora, lc.train_embeddings,
                   rank_pattern)
    fp32_masters(lm)
    return lm


def check_same_tokenizer(data_dir: Path, other: Path, what: str) -> None:
    a, b = read_manifest(data_dir), read_manifest(other)
    if a["tokenizer"]["sha256"] != b["tokenizer"]["sha256"]:
        raise UserError(f"{what} {other} was tokenised with another tokenizer than data.path {data_dir}: "
                        f"prepare it with {data_dir / a['tokenizer']['file']} (e.g. a data_prep.mixture of sets "
                        "sharing one tokenizer, or the *_ext sets after vocabulary extension)")


def set_name(data_dir: Path, taken: set) -> str:
    """val_bpb_<name>: the set's language when the manifest has one, else its directory name."""
    m = read_manifest(data_dir)
    name = str(m.get("language") or data_dir.name)
    if name in taken:
        name = data_dir.name
    i = 2
    while name in taken:
        name, i = f"{data_dir.name}_{i}", i + 1
    taken.add(name)
    return name


def save_merged(core: nn.Module, kind: str, out_dir: Path, tokenizer: Tokenizer | Path,
                tokenizer_files_from: Path | None) -> Path:
    """A Hugging Face directory of the merged model, written atomically, with the data's tokenizer. A
    native model goes through minimodel.models.export (verified reload, HF tokenizer files,
    minimodel.json); a transformers model also keeps its base's tokenizer files when the vocabulary
    did not change."""
    if kind == "native":
        return export_model(core, tokenizer, out_dir)[0]
    with atomic_dir(Path(out_dir)) as tmp:
        core.save_pretrained(str(tmp))
        copy_tokenizer(open_tokenizer(tokenizer), tmp)
        if tokenizer_files_from is not None:
            copy_tokenizer_files(tokenizer_files_from, tmp)
    return Path(out_dir)
