"""What continued pretraining (cpt.py) and SFT (sft.py) share: load the base, check its tokenizer
against the data, grow the vocabulary, wrap LoRA (or unfreeze all for full fine-tuning), train
with the shared loop, then write the adapter and the merged Hugging Face directory.

Run directory: config.toml, metrics.jsonl, checkpoints/step_N/ (trainable tensors only: the
base is reloaded from its source on resume), adapter/ (LoRA runs), final/ (merged model:
config.json + model.safetensors + tokenizer.model; minimodel.json too for a native base, so a
stage's result is the next stage's base).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
import torch.nn as nn

from data_prep.atomic import atomic_dir, write_text
from minimodel.bases import Base, config_from_hf, load_base, tokenizer_relation
from minimodel.config import StageConfig, dump_toml
from minimodel.data import TokenShards, read_manifest, token_byte_lengths
from minimodel.distributed import DistInfo, barrier
from minimodel.errors import UserError
from minimodel.lora import TrainableView, apply_lora, full_finetune, merge, save_adapter
from minimodel.optim import build_optimizers
from minimodel.rundir import check_same_run, command_line, device_description, git_commit
from minimodel.tracking import Tracker
from minimodel.trainer import preflight, train

# HF tokenizer files worth carrying into a merged model whose vocabulary did not change.
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                      "merges.txt", "generation_config.json", "chat_template.jinja")


def load_for_stage(cfg: StageConfig, data_tok: Path) -> tuple[Base, dict]:
    """The base, resized to the data's tokenizer when it was extended, wrapped for training."""
    lc = cfg.lora
    if lc.backend == "unsloth":
        from minimodel import unsloth_backend

        base = unsloth_backend.load_base(cfg.base.path, cfg.data.seq_len, lc.load_in_4bit,
                                         cfg.base.trust_remote_code)
    else:
        base = load_base(cfg.base.path, cfg.base.trust_remote_code)
    info = {"base": cfg.base.path, "base_kind": base.lm.kind,
            "tokenizer": tokenizer_relation(base.tokenizer, data_tok, cfg.base.path)}
    if base.lm.config.max_seq_len < cfg.data.seq_len:
        raise UserError(f"data.seq_len={cfg.data.seq_len} exceeds the base's context of "
                        f"{base.lm.config.max_seq_len} tokens; lower data.seq_len")
    if info["tokenizer"] == "extended":
        from minimodel.vocab_resize import resize_vocab

        resized = resize_vocab(base.lm.core(), base.tokenizer, data_tok)
        if base.lm.kind == "hf":
            base.lm.config = config_from_hf(base.lm.core().config)
        info.update({f"vocab_{k}": v for k, v in resized.items()})
    if not lc.enabled:
        full_finetune(base.lm)
    elif lc.backend == "unsloth":
        from minimodel import unsloth_backend

        unsloth_backend.apply_lora(base.lm, lc, cfg.train.seed)
    else:
        apply_lora(base.lm, lc.rank, lc.alpha, lc.dropout, lc.target_modules, lc.rslora, lc.train_embeddings)
    info["trainable_params"] = sum(p.numel() for p in TrainableView(base.lm).parameters())
    info["params"] = base.lm.num_params()
    return base, info


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


def save_merged(core: nn.Module, kind: str, out_dir: Path, tokenizer: Path, base: Base | None,
                vocab_changed: bool) -> Path:
    """A Hugging Face directory of the merged model, written atomically. A native model goes
    through minimodel.export (verified reload, HF tokenizer files, minimodel.json)."""
    if kind == "minimodel":
        from minimodel.export import export_model

        return export_model(core, tokenizer, out_dir)[0]
    with atomic_dir(Path(out_dir)) as tmp:
        core.save_pretrained(str(tmp))
        if not vocab_changed and base is not None and base.weights_dir is not None:
            for name in HF_TOKENIZER_FILES:
                if (base.weights_dir / name).is_file() and not (tmp / name).exists():
                    shutil.copy2(base.weights_dir / name, tmp / name)
        shutil.copy2(tokenizer, tmp / "tokenizer.model")
    return Path(out_dir)


def run_stage(cfg: StageConfig, dist: DistInfo, stage: str, train_data, val_data, data_dir: Path,
              make_stream=None, extra_val: dict | None = None, val_name: str | None = None) -> dict:
    """Build, train and export; `train_data`/`val_data` follow TokenShards' interface."""
    data_tok = data_dir / train_data.manifest["tokenizer"]["file"]
    run_dir = Path(cfg.train.out_dir)
    resolved = cfg.to_dict()
    check_same_run(run_dir, resolved)
    torch.manual_seed(cfg.train.seed)  # identical LoRA init on every rank
    base, info = load_for_stage(cfg, data_tok)
    lm = base.lm.to(dist.device)
    vocab = lm.config.vocab_size
    for shards in [train_data, val_data, *(extra_val or {}).values()]:
        shards.check_vocab(vocab) if hasattr(shards, "check_vocab") else _check_ids(shards, vocab)
    embed_lr = cfg.optim.lr * cfg.lora.embedding_lr_mult
    optimizers = build_optimizers(lm, cfg.optim, embed_lr=embed_lr)
    view = TrainableView(lm)
    if dist.is_main:
        preflight(run_dir, view, n_optim_states=2)
        write_text(run_dir / "config.toml", dump_toml({**resolved, "run": {
            "stage": stage, "commit": git_commit(), "command": command_line(),
            "world_size": dist.world_size, "device": device_description(dist.device), **info}}))
    barrier(dist)
    token_bytes = token_byte_lengths(data_tok, vocab)
    tracker = Tracker(run_dir, resolved, enabled=dist.is_main, use_wandb=cfg.tracking.wandb,
                      project=cfg.tracking.project, run_name=cfg.tracking.run_name,
                      total_steps=cfg.train.steps, progress=cfg.train.progress)
    if dist.is_main:
        how = (f"LoRA r={cfg.lora.rank} ({cfg.lora.backend})" if cfg.lora.enabled else "full fine-tuning")
        tracker.write(f"{stage}: base {cfg.base.path} ({info['base_kind']}, {info['params'] / 1e6:.2f}M params, "
                      f"tokenizer {info['tokenizer']}), {how}, {info['trainable_params'] / 1e6:.3f}M trainable, "
                      f"lr {cfg.optim.lr:g} / embeddings {embed_lr:g}, {cfg.train.steps} steps")
    state = train(lm, optimizers, cfg, dist, run_dir, train_data, val_data, tracker, token_bytes,
                  make_stream=make_stream, ckpt_model=view, extra_val=extra_val, val_name=val_name)
    tracker.close()
    out = {"step": state.step, "tokens": state.tokens, "run_dir": str(run_dir), "model": lm, "info": info}
    if dist.is_main and state.step >= cfg.train.steps:
        lm.eval()
        if cfg.lora.enabled:
            save_adapter(lm, run_dir / "adapter", data_tok,
                         {"base": cfg.base.path, "trust_remote_code": cfg.base.trust_remote_code, "stage": stage,
                          "backend": cfg.lora.backend}, save_embeddings=cfg.lora.train_embeddings
                         or info["tokenizer"] == "extended")
            out["adapter"] = str(run_dir / "adapter")
        core = merge(lm)
        final = save_merged(core, lm.kind, run_dir / "final", data_tok, base, info["tokenizer"] == "extended")
        out["final"] = str(final)
        print(f"done: {state.step} steps, {state.tokens} tokens; merged model in {final}"
              + (f", adapter in {run_dir / 'adapter'}" if cfg.lora.enabled else ""), file=sys.stderr)
    barrier(dist)
    return out


def _check_ids(shards: TokenShards, vocab: int) -> None:
    if shards.manifest["vocab_size"] > vocab:
        raise UserError(f"{shards.data_dir} uses a tokenizer of {shards.manifest['vocab_size']} tokens but the "
                        f"base has {vocab} rows: the data and the base disagree on the tokenizer")
    shards._check_ids(vocab)
