"""Training-step throughput: the native model against transformers' Qwen3ForCausalLM
of the same config, batch, precision and optimizer, measured in one process.

    python -m scripts.bench train [--presets tiny 26m] [--seq 256] [--batch 8] [--compile]

Prints one JSON line per preset. Steps of the two models alternate, so machine noise
hits both alike; the ratio is the median of per-round ratios.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch
import torch.nn.functional as F

from minimodel.config import OptimConfig
from minimodel.models.hf_convert import to_hf_config
from minimodel.nn.flops import device_peak_flops, flops_per_token
from minimodel.nn.model import MiniModel, model_config_from
from minimodel.train.optim import build_optimizers
from minimodel.train.rundir import device_description


def hf_loss(model, x, y):
    logits = model(input_ids=x).logits
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())


def native_loss(model, x, y):
    return model(x, y)


def make_step(model, loss_fn, optimizers, device, dtype):
    def step(x, y):
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
        with ctx:
            loss = loss_fn(model, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        t_opt = time.perf_counter()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        sync(device)
        return time.perf_counter() - t_opt
    return step


def saved_for_backward_bytes(model, loss_fn, x, y, device, dtype) -> int:
    """Bytes autograd keeps for backward over one micro-batch: activations, plus autocast's bf16
    copies of the weights (a constant, about 2 bytes per parameter); the fp32 weights themselves
    are excluded and each storage is counted once. Measured the same way on any device, so the
    CPU box still compares the two implementations' memory."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in weights and st.device.type != "meta":
            storages[st.data_ptr()] = st.nbytes()
        return t

    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ctx:
        loss = loss_fn(model, x, y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values())


def step_peak_bytes(step, x, y, device) -> int | None:
    """CUDA: the most memory one step allocates above what was already held (activations,
    gradients, optimizer temporaries)."""
    if device.type != "cuda":
        return None
    sync(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step(x, y)
    return torch.cuda.max_memory_allocated(device) - before


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_preset(preset: str, seq: int, batch: int, rounds: int, warmup: int, optim: str,
                 dtype: str, compile_: bool, device: torch.device) -> dict:
    from transformers import AutoModelForCausalLM

    cfg = model_config_from(preset, max_seq_len=max(seq, 2048))
    torch.manual_seed(0)
    native = MiniModel(cfg).to(device)
    hf = AutoModelForCausalLM.from_config(to_hf_config(cfg), attn_implementation="sdpa").to(device)
    hf.load_state_dict(native.state_dict())
    ocfg = OptimConfig(name=optim)
    runs = {}
    for name, model, fn in (("native", native, native_loss), ("hf", hf, hf_loss)):
        runs[name] = {"model": model, "opts": build_optimizers(model, ocfg), "fn": fn}
        if compile_:
            runs[name]["model_c"] = torch.compile(model, dynamic=False)  # fixed shapes: no symbolic kernels
    steps = {n: make_step(r.get("model_c", r["model"]), r["fn"], r["opts"], device, dtype) for n, r in runs.items()}
    x = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
    y = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        for s in steps.values():
            s(x, y)
    times = {n: [] for n in steps}
    opt_times = {n: [] for n in steps}
    for _ in range(rounds):
        for n, s in steps.items():
            sync(device)
            t0 = time.perf_counter()
            opt_times[n].append(s(x, y))
            times[n].append(time.perf_counter() - t0)
    tokens = batch * seq
    med = {n: statistics.median(t) for n, t in times.items()}
    ratios = [h / o for o, h in zip(times["native"], times["hf"])]
    tok_s = tokens / med["native"]
    result = {
        "bench": "train", "preset": preset, "params": native.num_params(), "seq": seq, "batch": batch,
        "dtype": dtype, "optim": optim, "compile": compile_, "device": device_description(device),
        "threads": torch.get_num_threads(),
        "native_tok_s": round(tok_s, 1), "hf_tok_s": round(tokens / med["hf"], 1),
        "ratio_vs_hf": round(statistics.median(ratios), 3),
        "optimizer_share": round(statistics.median(opt_times["native"]) / med["native"], 3),
        "mfu": round(flops_per_token(cfg, native.num_params(), seq) * tok_s / device_peak_flops(device), 4),
        "rounds": rounds,
    }
    if device.type == "cuda":
        result["peak_mem_gib_both_models"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    # memory per micro-batch, each model on its own (eager: compile changes what is saved)
    for n, r in runs.items():
        saved = saved_for_backward_bytes(r["model"], r["fn"], x, y, device, dtype)
        result[f"{n}_saved_for_backward_mib"] = round(saved / 2**20, 1)
        peak = step_peak_bytes(steps[n], x, y, device)
        if peak is not None:
            result[f"{n}_step_peak_gib"] = round(peak / 2**30, 2)
    result["saved_ratio_native_vs_hf"] = round(result["native_saved_for_backward_mib"]
                                               / result["hf_saved_for_backward_mib"], 3)
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m scripts.bench train")
    ap.add_argument("--presets", nargs="+", default=["tiny", "26m"])
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--optim", choices=["adamw", "muon"], default="adamw")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    for preset in args.presets:
        print(json.dumps(bench_preset(preset, args.seq, args.batch, args.rounds, args.warmup, args.optim,
                                      args.dtype, args.compile, torch.device(args.device))), flush=True)


if __name__ == "__main__":
    main()
