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

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.nn as nn

from minimodel.common.distributed import DistInfo, barrier, cleanup, init_distributed
from minimodel.common.errors import cli_entry
from minimodel.common.io import write_text
from minimodel.config import dump_toml, load_config
from minimodel.data.stage_data import StageData
from minimodel.stages.checkpointing import apply_grad_checkpoint
from minimodel.train.optim import build_optimizers
from minimodel.train.rundir import RunDir, check_same_run, command_line, device_description, git_commit
from minimodel.train.stopping import StopSignals, exit_status
from minimodel.train.tracking import Tracker
from minimodel.train.trainer import Job, train


@dataclass
class Built:
    """What a stage trains and how it ends."""
    model: nn.Module                    # forward(ids, targets, reduction=...) -> loss
    trained: nn.Module                  # what checkpoints hold (the model, or its trainable tensors)
    info: dict                          # recorded in config.toml's [run]
    summary: str                        # the run's first log line
    finish: Callable[[Path], dict]      # writes final/ (and adapter/) once every step is done
    embed_lr: float | None = None       # embeddings' own learning rate (adapter stages)
    embed_optim: str = "adamw"          # their optimizer: "adamw" | "adamw8bit" (lora.embedding_optim)
    vocab_fix: str | None = None        # what to say when the data's ids exceed the model's rows
    max_start_loss: float | None = None  # a trained base starts below this on data.known_sets (nats)
    update_rule: object | None = None   # brackets each optimizer step (minimodel.forgetting.metaplastic)


class Stage(Protocol):
    name: str                           # "pretrain" | "cpt" | "sft": config.toml's [run] stage

    def data(self, cfg, dist: DistInfo) -> StageData: ...
    def model(self, cfg, data: StageData, dist: DistInfo) -> Built: ...


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

    ap = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help=f"TOML config ({configs})")
    ap.add_argument("overrides", nargs="*", help=f"section.key=value, e.g. {example}")
    return ap.parse_args(argv)


def run_stage(stage: Stage, cfg, exits_after: bool = False) -> dict:
    """Build, train (resuming from the last good checkpoint) and export. A SIGTERM/SIGINT during
    training saves a checkpoint at the step it finishes and exits 143/130 (SystemExit). `exits_after`:
    the process ends when this returns (a command line), so a clean stop ignores further signals."""
    dist = init_distributed(cfg.train.device)
    run_dir = None
    try:
        data = stage.data(cfg, dist)
        resolved = cfg.to_dict()
        check_same_run(Path(cfg.train.out_dir), resolved)
        torch.manual_seed(cfg.train.seed)  # identical init (model, LoRA factors) on every rank
        built = stage.model(cfg, data, dist)
        model = built.model.to(dist.device)
        built.summary += ", " + apply_grad_checkpoint(cfg, model, dist.device, dist.world_size)
        vocab = model.config.vocab_size
        for windows in data.all_sets():
            windows.check_vocab(vocab, built.vocab_fix)
        optimizers = build_optimizers(model, cfg.optim, embed_lr=built.embed_lr, embed_optim=built.embed_optim)
        run_dir = RunDir(cfg.train.out_dir, built.trained)
        if dist.is_main:
            run_dir.open()
            write_text(run_dir.path / "config.toml", dump_toml({**resolved, "run": {
                "stage": stage.name, "commit": git_commit(), "command": command_line(),
                "world_size": dist.world_size, "device": device_description(dist.device), **built.info}}))
        barrier(dist)
        tracker = Tracker(run_dir.path, resolved, enabled=dist.is_main, use_wandb=cfg.tracking.wandb,
                          project=cfg.tracking.project, run_name=cfg.tracking.run_name,
                          total_steps=cfg.train.steps, progress=cfg.train.progress)
        if dist.is_main:
            tracker.write(f"{built.summary}, world size {dist.world_size}, device {dist.device.type}")
        with StopSignals(ignore_on_exit=exits_after) as stop, run_dir.guard("metrics.jsonl"):  # checkpoints: trainer
            try:
                state = train(Job(model, optimizers, cfg, dist, run_dir, data, tracker,
                                  data.tokenizer.token_bytes(vocab), built.trained, built.max_start_loss,
                                  stop, built.update_rule))
            finally:
                tracker.close()
            if state.stopped_by is not None:  # the checkpoint is saved; still counting signals (a 2nd is ignored)
                if dist.is_main:
                    print(f"stopped by {state.stopped_by.name} at step {state.step}; re-run the same command to "
                          "resume", file=sys.stderr, flush=True)
                    run_dir.release()
                barrier(dist)  # no rank ends (and gets torchrun to end the others) before rank 0 is done
                raise SystemExit(exit_status(state.stopped_by))
        out = {"step": state.step, "tokens": state.tokens, "run_dir": str(run_dir.path), "model": model,
               "info": built.info}
        if dist.is_main and state.step >= cfg.train.steps:
            model.eval()
            with run_dir.guard("the final model", judge_by_free=True):
                out.update(built.finish(run_dir.path))
            print(f"done: {state.step} steps, {state.tokens} tokens; "
                  + ", ".join(f"{k} in {v}" for k, v in out.items() if k in ("final", "adapter")), file=sys.stderr)
        barrier(dist)
        return out
    finally:
        if run_dir is not None:
            run_dir.release()
        cleanup(dist)
