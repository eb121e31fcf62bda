"""The training loop shared by the stages: accumulation, clipping, autocast, DDP,
periodic validation (loss and bits per byte), checkpoints with exact resume, a clean stop on
SIGTERM/SIGINT."""
from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from minimodel.common.distributed import DistInfo, all_reduce_sum, barrier
from minimodel.common.errors import UserError
from minimodel.config import Config
from minimodel.data.stage_data import StageData
from minimodel.data.windows import Windows, val_window_ids
from minimodel.nn.flops import device_peak_flops, flops_per_token
from minimodel.train.checkpoint import load_checkpoint, resume_point, save_checkpoint
from minimodel.train.numerics import NumericalFault, SpikeDetector, diagnose, nonfinite_tensors
from minimodel.train.optim import lr_multiplier, set_lr
from minimodel.train.rundir import RunDir
from minimodel.train.stopping import StopSignals
from minimodel.train.tracking import Tracker


def peak_rss_gib() -> float:
    import resource  # POSIX only: imported where it is used
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kib / 2**20 if sys.platform != "darwin" else kib / 2**30


def autocast_ctx(device: torch.device, dtype: str):
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, val: Windows, cfg: Config, dist: DistInfo,
             token_bytes: torch.Tensor | None) -> dict:
    """Mean validation loss (nats/token) and bits per byte over a fixed set of windows.
    Targets of -100 (SFT prompt tokens, padding) count neither as tokens nor as bytes."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)  # nll, tokens, bytes
    for ids in val_window_ids(val, cfg.train.eval_batches, cfg.train.micro_batch, dist.rank, dist.world_size):
        x, y = val.batch(ids)
        targets = y.cpu()  # once, before the move (a no-op for the CPU batches the data sets give)
        x, y = x.to(dist.device), y.to(dist.device)
        with autocast_ctx(dist.device, cfg.train.dtype):
            nll = model(x, y, reduction="sum")
        valid = targets[targets != -100]
        sums[0] += nll.double().cpu()
        sums[1] += valid.numel()
        sums[2] += token_bytes[valid].sum() if token_bytes is not None else 0
    sums = all_reduce_sum(sums.to(dist.device), dist).cpu()
    model.train(was_training)
    loss = (sums[0] / sums[1].clamp(min=1)).item()
    if token_bytes is None:  # fall back to the split's average bytes per token
        bpt = val.info["bytes"] / max(val.info["tokens"], 1)
        bpb = loss / math.log(2) / bpt
    else:
        bpb = (sums[0] / math.log(2) / sums[2]).item()
    return {"val_loss": loss, "val_bpb": bpb}


@torch.no_grad()
def max_attention_logit(model: nn.Module, x: torch.Tensor, cfg: Config, device: torch.device) -> float:
    attn = model.attention_modules()
    if not attn:  # a transformers base exposes no hook for this diagnostic
        return float("nan")
    for a in attn:
        a.record_max_logit, a.max_logit = True, None
    with autocast_ctx(device, cfg.train.dtype):
        model(x.to(device))
    for a in attn:
        a.record_max_logit = False
    return max(a.max_logit for a in attn)


def replay_rows(marks: list, device: torch.device) -> dict:
    """The model's extra argument when the stream marks replay rows (a distilling CPT run)."""
    return {"replay_rows": marks[0].to(device)} if marks else {}


@dataclass
class TrainState:
    step: int = 0
    position: int = 0          # training windows consumed (all ranks)
    tokens: int = 0
    skipped_steps: int = 0
    loss_spikes: int = 0
    elapsed_s: float = 0.0
    extra: dict = field(default_factory=dict)
    stopped_by: signal.Signals | None = None  # a SIGTERM/SIGINT stopped the run here (checkpoint saved)


@dataclass
class Job:
    """One training run as the loop sees it (built by stage.run_stage)."""
    model: nn.Module                 # forward(ids, targets, reduction=...) -> loss
    optimizers: list
    cfg: Config                      # the stage's config (RunConfig, StageConfig, CptConfig)
    dist: DistInfo
    run_dir: RunDir
    data: StageData
    tracker: Tracker
    token_bytes: torch.Tensor | None  # UTF-8 bytes per token id, for bits per byte
    ckpt_model: nn.Module            # what checkpoints hold (adapter stages: the trainable tensors only)
    max_start_loss: float | None = None  # on data.known_sets: above it, the ids mean nothing to the model
    stop: StopSignals = field(default_factory=StopSignals)  # installed by the stage: SIGTERM/SIGINT seen
    update_rule: object | None = None  # before_step()/after_step() around the optimizers' step (metaplasticity)


def train(job: Job) -> TrainState:
    """Train `job.model` to cfg.train.steps, resuming from the run's last good checkpoint."""
    model, optimizers, cfg, dist, run_dir = job.model, job.optimizers, job.cfg, job.dist, job.run_dir
    tracker, token_bytes, ckpt_model, data = job.tracker, job.token_bytes, job.ckpt_model, job.data
    val_data, val_name = data.val, data.val_name
    tc = cfg.train
    ckpt_root = run_dir.checkpoints
    state = TrainState()
    spikes = SpikeDetector(tc.spike_sigma)
    found = resume_point(ckpt_root)
    if found is not None:
        path, meta = found
        load_checkpoint(path, ckpt_model, optimizers)
        state = TrainState(step=meta["step"], position=meta["position"], tokens=meta["tokens"],
                           skipped_steps=meta.get("skipped_steps", 0), loss_spikes=meta.get("loss_spikes", 0),
                           elapsed_s=meta.get("elapsed_s", 0.0))
        if "spike_detector" in meta:
            spikes.load_state_dict(meta["spike_detector"])
        tracker.write(f"resumed from {path} (step {state.step})")
    tracker.rewind(state.step if found is not None else -1)  # rows of steps about to be redone go
    stream = data.stream(state.position, cfg.train.seed, dist.rank, dist.world_size)

    net: nn.Module = model
    if dist.enabled:
        net = DDP(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    if tc.compile:
        net = torch.compile(net)

    mcfg = model.config
    tokens_per_step = tc.micro_batch * cfg.data.seq_len * tc.grad_accum * dist.world_size
    fpt = flops_per_token(mcfg, model.num_params(), cfg.data.seq_len)
    peak = device_peak_flops(dist.device) * dist.world_size
    # skipped steps in a row: set before checkpoint() below, which saves it, can ever run
    consecutive_skips = found[1].get("consecutive_skips", 0) if found is not None else 0

    def checkpoint(position: int | None = None):
        broken = nonfinite_tensors(ckpt_model, grads=False)  # never let broken weights replace good ones
        if broken:
            raise NumericalFault(f"step {state.step}: weights became non-finite ({', '.join(broken[:3])}); not "
                                 f"saved: the last good checkpoint is kept in {ckpt_root}; lower optim.lr in a "
                                 "new run (another train.out_dir), or resume there with train.on_nonfinite=skip")
        if dist.is_main:
            with run_dir.guard_checkpoint(state.step):
                save_checkpoint(ckpt_root, state.step, ckpt_model, optimizers,
                                {"position": stream.position if position is None else position,
                                 "tokens": state.tokens, "skipped_steps": state.skipped_steps,
                                 "loss_spikes": state.loss_spikes, "spike_detector": spikes.state_dict(),
                                 "consecutive_skips": consecutive_skips,
                                 "elapsed_s": state.elapsed_s, "world_size": dist.world_size}, tc.keep_last)
        barrier(dist)

    def forward_again(x, y, marks):
        def run():
            with autocast_ctx(dist.device, tc.dtype):
                return model(x.to(dist.device), y.to(dist.device), **replay_rows(marks, dist.device))
        return run

    def evaluate_all() -> dict:
        metrics = evaluate(model, val_data, cfg, dist, token_bytes)
        if val_name:
            metrics.update({f"val_loss_{val_name}": metrics["val_loss"], f"val_bpb_{val_name}": metrics["val_bpb"]})
        for name, shards in data.extra_val.items():
            m = evaluate(model, shards, cfg, dist, token_bytes)
            metrics.update({f"val_loss_{name}": m["val_loss"], f"val_bpb_{name}": m["val_bpb"]})
        return metrics

    if found is None:
        metrics = evaluate_all()  # the starting point of the curve
        tracker.log(0, tokens=0, **metrics)
        for name in data.known_sets if job.max_start_loss is not None else ():
            if not metrics[f"val_loss_{name}"] <= job.max_start_loss:
                raise UserError(
                    f"the base's first validation loss on {name}, a language it knows (the replay set), is "
                    f"{metrics[f'val_loss_{name}']:.2f} nats: worse than a uniform guess over its "
                    f"{model.config.vocab_size} tokens ({math.log(model.config.vocab_size):.2f}). The data was "
                    "most likely tokenised with another tokenizer than the one the base was trained with; "
                    "prepare it with the base's own tokenizer (python -m data_prep.prepare --tokenizer BASE_DIR)")
    model.train()
    t_last, tokens_last = time.perf_counter(), state.tokens
    last_ckpt_step = state.step
    saved_any = found is not None
    while state.step < tc.steps:
        if tc.stop_at_step and state.step >= tc.stop_at_step:
            break
        t0 = time.perf_counter()
        mult = lr_multiplier(state.step, tc.steps, cfg.optim)
        set_lr(optimizers, mult)
        loss_sum = torch.zeros((), device=dist.device)
        position_before, batches = stream.position, []
        for micro in range(tc.grad_accum):
            x, y, *marks = stream.next_batch(tc.micro_batch)  # marks: replay rows, when the model distils
            batches.append((x, y, marks))  # token ids only: kept so a fault can be diagnosed
            x, y = x.to(dist.device, non_blocking=True), y.to(dist.device, non_blocking=True)
            sync = contextlib.nullcontext()
            if dist.enabled and micro < tc.grad_accum - 1:
                sync = net.no_sync() if isinstance(net, DDP) else getattr(net, "_orig_mod", net).no_sync()
            with sync:
                with autocast_ctx(dist.device, tc.dtype):
                    loss = net(x, y, **replay_rows(marks, dist.device))
                (loss / tc.grad_accum).backward()
            loss_sum += loss.detach()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads)
        # one collective: any rank's fault, the loss summed over ranks (for the spike detector), and any
        # rank's stop signal (so every rank stops after this same step)
        stats = torch.cat([torch.stack([(~(torch.isfinite(loss_sum) & torch.isfinite(grad_norm))).float(),
                                        loss_sum.float()]),
                           torch.tensor(job.stop.flags(), device=dist.device)])
        faulty_ranks, global_loss, *signalled = all_reduce_sum(stats, dist).tolist()
        step_loss = global_loss / tc.grad_accum / dist.world_size
        if faulty_ranks == 0:
            if cfg.optim.grad_clip:  # clipped only when finite: a NaN norm would wipe every gradient
                torch.nn.utils.clip_grads_with_norm_(model.parameters(), cfg.optim.grad_clip, grad_norm)
            if job.update_rule is not None:
                job.update_rule.before_step()
            for opt in optimizers:
                opt.step()
            if job.update_rule is not None:
                job.update_rule.after_step()
            consecutive_skips = 0
            spike = spikes.update(step_loss)
            if spike is not None:
                state.loss_spikes += 1
                tracker.write(f"step {state.step + 1}: loss spike {step_loss:.4f} "
                              f"(running mean {spike[0]:.4f}, std {spike[1]:.4f})")
                tracker.log(state.step + 1, loss_spike=step_loss)
        else:
            why = diagnose(model, [forward_again(*b) for b in batches])
            where = f" (rank {dist.rank}'s micro-batches)" if dist.enabled else ""
            message = f"step {state.step + 1}: non-finite loss or gradient: {why}{where}"
            if dist.enabled and not dist.is_main and not bool(torch.isfinite(loss_sum)):
                print(message, file=sys.stderr, flush=True)  # rank 0 logs; this rank saw the fault itself
            if tc.on_nonfinite == "stop" or consecutive_skips + 1 > tc.max_consecutive_skips:
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
                if state.step != last_ckpt_step or not saved_any:  # keep the steps since (broken weights raise)
                    checkpoint(position=position_before)
                    last_ckpt_step, saved_any = state.step, True
                cause = ("train.on_nonfinite=stop" if tc.on_nonfinite == "stop"
                         else f"{consecutive_skips + 1} steps in a row, over train.max_consecutive_skips")
                kept = (f"progress kept in {ckpt_root / f'step_{last_ckpt_step}'}" if saved_any
                        else "no checkpoint was written yet")
                raise NumericalFault(f"{message}; run stopped ({cause}), {kept}: rerun with "
                                     "train.on_nonfinite=skip to resume past such steps, or start a new run "
                                     "(another train.out_dir) with a lower optim.lr")
            consecutive_skips += 1
            state.skipped_steps += 1
            tracker.write(f"{message}; step skipped ({state.skipped_steps} so far)")
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        state.step += 1
        state.tokens += tokens_per_step
        state.elapsed_s += time.perf_counter() - t0

        if state.step % tc.log_every == 0 or state.step == tc.steps:
            now = time.perf_counter()
            tok_s = (state.tokens - tokens_last) / max(now - t_last, 1e-9)
            t_last, tokens_last = now, state.tokens
            metrics = {"loss": step_loss, "lr_mult": mult, "grad_norm": grad_norm.item(),
                       "tokens": state.tokens, "tok_per_s": tok_s, "mfu": fpt * tok_s / peak,
                       "epoch": stream.epoch(), "skipped_steps": state.skipped_steps,
                       "loss_spikes": state.loss_spikes}
            if dist.device.type == "cuda":  # what the planner's memory model is calibrated against
                metrics["peak_mem_gib"] = torch.cuda.max_memory_allocated(dist.device) / 2**30
            else:  # the process's peak resident memory (the CPU's closest equivalent)
                metrics["peak_rss_gib"] = peak_rss_gib()
            tracker.log(state.step, **metrics)
            tracker.progress(state.step, loss=step_loss, tok_s=int(tok_s))
        if tc.attn_logit_every and (state.step % tc.attn_logit_every == 0 or state.step == tc.steps):
            x, _ = val_data.batch(val_window_ids(val_data, 1, min(tc.micro_batch, 4), 0, 1)[0])
            top = max_attention_logit(model, x, cfg, dist.device)
            if math.isfinite(top):
                tracker.log(state.step, max_attn_logit=top)
        if state.step % tc.eval_every == 0 or state.step == tc.steps:
            metrics = evaluate_all()
            tracker.log(state.step, tokens=state.tokens, **metrics)
            others = "".join(f"  {k} {v:.4f}" for k, v in metrics.items()
                             if k.startswith("val_bpb_") and k != f"val_bpb_{val_name}")
            tracker.write(f"step {state.step}: val_loss {metrics['val_loss']:.4f}  "
                          f"val_bpb {metrics['val_bpb']:.4f}{others}")
        if state.step % tc.ckpt_every == 0 or state.step == tc.steps:
            checkpoint()
            last_ckpt_step, saved_any = state.step, True
        # A single process stops at the first step end after the signal; ranks stop where they agreed.
        stop_for = StopSignals.agreed(signalled) if dist.enabled else job.stop.received
        if stop_for is not None:
            if state.step != last_ckpt_step:
                checkpoint()
                last_ckpt_step = state.step
            state.stopped_by = stop_for
            return state
    if state.step != last_ckpt_step:  # stopped early (stop_at_step): keep the progress
        checkpoint()
    return state
