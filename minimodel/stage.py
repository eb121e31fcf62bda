"""The one stage lifecycle. Pretraining (pretrain.py), continued pretraining (cpt.py) and SFT
(sft.py) differ only in how they build their data and their model (a `Stage`); the rest is
written once, here: the same-run check, seeding, optimizers, the preflight, config.toml with
provenance, the tracker, the shared training loop (trainer.py), the final export, the summary.

Run directory: config.toml (resolved config + [run] provenance), metrics.jsonl,
checkpoints/step_N/ (adapter stages: trainable tensors only; the base is reloaded from its
source on resume), final/ (Hugging Face format; minimodel.json too for a native model, so a
stage's result is the next stage's base) and, for LoRA stages, adapter/.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.nn as nn

from minimodel.config import StageConfig, dump_toml, load_config
from minimodel.data import StageData, read_manifest, token_byte_lengths
from minimodel.diskspace import run_bytes_needed, stop_when_full
from minimodel.distributed import DistInfo, barrier, cleanup, init_distributed
from minimodel.errors import UserError, cli_entry
from minimodel.io import atomic_dir, write_text
from minimodel.optim import build_optimizers
from minimodel.rundir import check_same_run, command_line, device_description, git_commit
from minimodel.stopping import StopSignals, exit_status
from minimodel.tracking import Tracker
from minimodel.trainer import Job, preflight, train


@dataclass
class Built:
    """What a stage trains and how it ends."""
    model: nn.Module                    # forward(ids, targets, reduction=...) -> loss
    trained: nn.Module                  # what checkpoints hold (the model, or its trainable tensors)
    info: dict                          # recorded in config.toml's [run]
    summary: str                        # the run's first log line
    finish: Callable[[Path], dict]      # writes final/ (and adapter/) once every step is done
    embed_lr: float | None = None       # embeddings' own learning rate (adapter stages)
    vocab_fix: str | None = None        # what to say when the data's ids exceed the model's rows
    max_start_loss: float | None = None  # a trained base starts below this on data.known_sets (nats)


class Stage(Protocol):
    name: str                           # "pretrain" | "cpt" | "sft": config.toml's [run] stage

    def data(self, cfg, dist: DistInfo) -> StageData: ...
    def model(self, cfg, data: StageData) -> Built: ...


def stage_entry(stage: Stage, config_class, doc: str, configs: str, example: str):
    """`run(cfg)` and `main(argv)` of a stage module: python -m minimodel.<stage> --config FILE key=value ..."""
    def run(cfg) -> dict:
        return run_stage(stage, cfg)

    @cli_entry
    def main(argv=None) -> dict:
        args = parse_stage_args(sys.argv[1:] if argv is None else argv, f"python -m minimodel.{stage.name}", doc,
                                configs, example)
        return run_stage(stage, load_config(args.config, args.overrides, cls=config_class), exits_after=True)

    return run, main


def parse_stage_args(argv, prog: str, doc: str, configs: str, example: str):
    """`--config FILE` and `section.key=value` overrides: the command line every training stage takes."""
    import argparse

    ap = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help=f"TOML config ({configs})")
    ap.add_argument("overrides", nargs="*", help=f"section.key=value, e.g. {example}")
    return ap.parse_args(argv)



def run_stage(stage: Stage, cfg, exits_after: bool = False) -> dict:
    """Build, train (resuming from the last good checkpoint) and export. A SIGTERM/SIGINT during
    training saves a checkpoint at the step it finishes and exits 143/130 (SystemExit). `exits_after`:
    the process ends when this returns (a command line), so a clean stop ignores further signals."""
    dist = init_distributed(cfg.train.device)
    lock = None
    try:
        data = stage.data(cfg, dist)
        run_dir = Path(cfg.train.out_dir)
        resolved = cfg.to_dict()
        check_same_run(run_dir, resolved)
        torch.manual_seed(cfg.train.seed)  # identical init (model, LoRA factors) on every rank
        built = stage.model(cfg, data)
        model = built.model.to(dist.device)
        vocab = model.config.vocab_size
        for windows in data.all_sets():
            windows.check_vocab(vocab, built.vocab_fix)
        optimizers = build_optimizers(model, cfg.optim, embed_lr=built.embed_lr)
        if dist.is_main:
            lock = preflight(run_dir, built.trained, n_optim_states=2)
            write_text(run_dir / "config.toml", dump_toml({**resolved, "run": {
                "stage": stage.name, "commit": git_commit(), "command": command_line(),
                "world_size": dist.world_size, "device": device_description(dist.device), **built.info}}))
        barrier(dist)
        tracker = Tracker(run_dir, resolved, enabled=dist.is_main, use_wandb=cfg.tracking.wandb,
                          project=cfg.tracking.project, run_name=cfg.tracking.run_name,
                          total_steps=cfg.train.steps, progress=cfg.train.progress)
        if dist.is_main:
            tracker.write(f"{built.summary}, world size {dist.world_size}, device {dist.device.type}")
        need = run_bytes_needed(built.trained, n_optim_states=2)
        with StopSignals(ignore_on_exit=exits_after) as stop, stop_when_full(run_dir, need, "metrics.jsonl"):  # the checkpoints: trainer.py
            try:
                state = train(Job(model, optimizers, cfg, dist, run_dir, data, tracker,
                                  token_byte_lengths(data.tokenizer, vocab), built.trained, built.max_start_loss,
                                  stop))
            finally:
                tracker.close()
            if state.stopped_by is not None:  # the checkpoint is saved; still counting signals (a 2nd is ignored)
                if dist.is_main:
                    print(f"stopped by {state.stopped_by.name} at step {state.step}; re-run the same command to "
                          "resume", file=sys.stderr, flush=True)
                    lock.release()
                barrier(dist)  # no rank ends (and gets torchrun to end the others) before rank 0 is done
                raise SystemExit(exit_status(state.stopped_by))
        out = {"step": state.step, "tokens": state.tokens, "run_dir": str(run_dir), "model": model,
               "info": built.info}
        if dist.is_main and state.step >= cfg.train.steps:
            model.eval()
            with stop_when_full(run_dir, need, "the final model", judge_by_free=True):
                out.update(built.finish(run_dir))
            print(f"done: {state.step} steps, {state.tokens} tokens; "
                  + ", ".join(f"{k} in {v}" for k, v in out.items() if k in ("final", "adapter")), file=sys.stderr)
        barrier(dist)
        return out
    finally:
        if lock is not None:
            lock.release()
        cleanup(dist)


# ---------------------------------------------------------------- stages on a base (CPT, SFT)

def adapter_model(cfg: StageConfig, data: StageData, stage: str, on_base: Callable | None = None) -> Built:
    """The base (resized when the data's tokenizer extends it), wrapped in LoRA or unfrozen whole.
    `on_base(lm)` sees the base as loaded, before any change (generated replay samples from it)."""
    from minimodel.loading import load
    from minimodel.lora import TrainableView, apply_lora, apply_unsloth_lora, full_finetune
    from minimodel.tokenizer import tokenizer_relation

    lc = cfg.lora
    lm = load(cfg.base.path, trust_remote_code=cfg.base.trust_remote_code, backend=(
        "unsloth" if lc.backend == "unsloth" else "transformers"), max_seq_len=cfg.data.seq_len,
        load_in_4bit=lc.load_in_4bit)
    if on_base is not None:
        on_base(lm)
    base_tokenizer = lm.tokenizer
    info = {"base": cfg.base.path, "base_kind": lm.kind,
            "tokenizer": tokenizer_relation(base_tokenizer, data.tokenizer, cfg.base.path)}
    if lm.config.max_seq_len < cfg.data.seq_len:
        raise UserError(f"data.seq_len={cfg.data.seq_len} exceeds the base's context of "
                        f"{lm.config.max_seq_len} tokens; lower data.seq_len")
    extended = info["tokenizer"] == "extended"
    if extended:
        from minimodel.vocab_resize import resize_vocab

        resized = resize_vocab(lm.core(), base_tokenizer, data.tokenizer)
        lm.refresh_config()
        info.update({f"vocab_{k}": v for k, v in resized.items()})
    if not lc.enabled:
        full_finetune(lm)
    elif lc.backend == "unsloth":
        apply_unsloth_lora(lm, lc, cfg.train.seed)
    else:
        apply_lora(lm, lc.rank, lc.alpha, lc.dropout, lc.target_modules, lc.rslora, lc.train_embeddings)
    view = TrainableView(lm)
    info["trainable_params"] = sum(p.numel() for p in view.parameters())
    info["params"] = lm.num_params()
    embed_lr = cfg.optim.lr * lc.embedding_lr_mult
    how = f"LoRA r={lc.rank} ({lc.backend})" if lc.enabled else "full fine-tuning"
    summary = (f"{stage}: base {cfg.base.path} ({lm.kind}, {info['params'] / 1e6:.2f}M params, "
               f"tokenizer {info['tokenizer']}), {how}, {info['trainable_params'] / 1e6:.3f}M trainable, "
               f"lr {cfg.optim.lr:g} / embeddings {embed_lr:g}, {cfg.train.steps} steps")

    def finish(run_dir: Path) -> dict:
        from minimodel.lora import merge, save_adapter

        out = {}
        if lc.enabled:
            save_adapter(lm, run_dir / "adapter", data.tokenizer,
                         {"base": cfg.base.path, "trust_remote_code": cfg.base.trust_remote_code, "stage": stage,
                          "backend": lc.backend}, save_embeddings=lc.train_embeddings or extended)
            out["adapter"] = str(run_dir / "adapter")
        source_dir = lm.source.path if lm.source else None
        out["final"] = str(save_merged(merge(lm), lm.kind, run_dir / "final", data.tokenizer,
                                       None if extended else source_dir))
        return out

    # A trained base reads text in a language it knows far better than a uniform guess (ln V nats); one
    # nat worse than that on the replay set means the ids mean nothing to it: another tokenizer's data.
    # (A new language may well start worse than uniform: an English core is confidently wrong on Korean.)
    return Built(lm, view, info, summary, finish, embed_lr=embed_lr,
                 vocab_fix="the data and the base disagree on the tokenizer",
                 max_start_loss=math.log(lm.config.vocab_size) + 1.0)


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


def save_merged(core: nn.Module, kind: str, out_dir: Path, tokenizer: Path, tokenizer_files_from: Path | None) -> Path:
    """A Hugging Face directory of the merged model, written atomically, with the data's tokenizer. A
    native model goes through minimodel.export (verified reload, HF tokenizer files, minimodel.json);
    a transformers model also keeps its base's tokenizer files when the vocabulary did not change."""
    from minimodel.export import copy_tokenizer_files, export_model
    from minimodel.tokenizer import copy_tokenizer, open_tokenizer

    if kind == "native":
        return export_model(core, tokenizer, out_dir)[0]
    with atomic_dir(Path(out_dir)) as tmp:
        core.save_pretrained(str(tmp))
        copy_tokenizer(open_tokenizer(tokenizer), tmp)
        if tokenizer_files_from is not None:
            copy_tokenizer_files(tokenizer_files_from, tmp)
    return Path(out_dir)
