"""Peak memory of real CPT steps at real shapes with random weights, beside the memory plan.

A reference base's config.json (the kit carries them: minimodel/models/reference_configs) is built with
random weights in base.dtype, made trainable by the CPT stage's own code (make_trainable: LoRA, fp32
masters; apply_grad_checkpoint; build_optimizers), and trained for two AdamW steps under bf16 autocast.
The peak is max_memory_allocated on a GPU; on a CPU, which has no allocator statistics, the peak of
live tensor storage bytes, tracked op by op (`LiveBytes`: the same quantity). Used by
scripts/calibrate_plan.py --measure and scripts/gpu_lora.py.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import resource
import sys
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from minimodel.common.errors import UserError, cli_entry
from minimodel.common.io import atomic_dir, read_json_object, write_text
from minimodel.config import CptConfig, load_config
from minimodel.models.causal_lm import CausalLM, shape_of_hf_config
from minimodel.models.loading import reference_config
from minimodel.models.memory import DTYPES
from minimodel.stages.checkpointing import apply_grad_checkpoint
from minimodel.stages.on_base import make_trainable
from minimodel.train.memory_plan import GIB, live_bytes
from minimodel.train.optim import build_optimizers


class LiveBytes(TorchDispatchMode):
    """The peak of live tensor storage bytes while active (CPU's max_memory_allocated): every op's
    outputs are counted once per storage until Python frees that storage; `roots` (the parameters
    and buffers that exist already) count from the start."""

    def __init__(self, *roots):
        super().__init__()
        self.live: dict[int, int] = {}
        self.now = self.peak = 0
        for tensors in roots:
            for t in tensors:
                self._track(t)

    def _free(self, key: int) -> None:
        self.now -= self.live.pop(key, 0)

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key, n = storage.data_ptr(), storage.nbytes()
        if n == 0 or key in self.live:
            return
        self.live[key] = n
        self.now += n
        self.peak = max(self.peak, self.now)
        weakref.finalize(storage, self._free, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                self._track(t)
        return out


def shape_dir(base: str, out: Path, layers: int | None = None) -> Path:
    """A directory holding the reference base's config.json (fewer layers if asked): what the plan reads."""
    ref = reference_config(base)
    if ref is None:
        raise UserError(f"{base} is not one of the reference bases (minimodel/models/reference_configs): name one "
                        "of those, e.g. HuggingFaceTB/SmolLM2-135M")
    raw = read_json_object(ref, "reinstall minimodel")
    if layers:
        raw["num_hidden_layers"] = layers
    with atomic_dir(out) as tmp:
        write_text(tmp / "config.json", json.dumps(raw))
    return out


def random_base(base_dir: Path, dtype: torch.dtype, device: torch.device):
    """The transformers model of base_dir/config.json with random weights in `dtype`, on `device`: built on
    the meta device and filled where it lives (a 7B in seconds on a GPU)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(base_dir)
    with torch.device("meta"):
        net = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    fresh = copy.deepcopy(net)  # a meta twin, to rebuild the non-persistent buffers (RoPE) for real
    net = net.to_empty(device=device)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.02) if p.ndim > 1 else p.fill_(1.0)
        for name, mod in fresh.named_modules():
            if hasattr(mod, "inv_freq"):  # to_empty left RoPE's tables as garbage: recompute them
                owner = net.get_submodule(name)
                rebuilt = type(mod)(config=mod.config) if hasattr(mod, "config") else None  # on the CPU: tiny
                if rebuilt is not None:
                    owner.inv_freq = rebuilt.inv_freq.to(device)
                    owner.original_inv_freq = rebuilt.inv_freq.to(device)
    net.tie_weights()
    return net


def stage_config(base_dir: Path, base_dtype: str, ckpt: bool, seq: int, micro_batch: int, rank: int,
                 quantize: str = "none", embedding_optim: str = "adamw") -> CptConfig:
    return load_config(None, [f"base.path={base_dir}", f"base.dtype={base_dtype}", f"base.quantize={quantize}",
                              f"train.grad_checkpoint={str(ckpt).lower()}", f"data.seq_len={seq}",
                              f"train.micro_batch={micro_batch}", f"lora.rank={rank}", "train.dtype=bf16",
                              "train.device=cpu", f"lora.embedding_optim={embedding_optim}"], cls=CptConfig)


def planned(cfg: CptConfig, gpu: str = "4090", cpu_loss: bool = True) -> dict:
    """The plan's live bytes for cfg (cpu_loss: as a CPU runs it, with its chunked loss)."""
    from scripts.plan import estimate

    p = estimate(cfg, gpu, cpu_loss=cpu_loss)
    mem = {k: v * GIB for k, v in p["memory_per_gpu_gib"].items()}
    return {"live_gib": live_bytes(mem) / GIB, "peak_gib": p["peak_gib"], "parts_gib": p["memory_per_gpu_gib"]}


def build(cfg: CptConfig, device: torch.device, net=None):
    """The CPT stage's trainable model and optimizers on a random base (or on `net`, already built)."""
    dtype = DTYPES[cfg.base.dtype if cfg.base.dtype != "auto" else "bf16"]
    net = net if net is not None else random_base(Path(cfg.base.path), dtype, device)
    lm = make_trainable(cfg, CausalLM(net, "hf", shape_of_hf_config(net.config))).to(device)
    apply_grad_checkpoint(cfg, lm, device)
    opts = build_optimizers(lm, cfg.optim, embed_lr=cfg.optim.lr * cfg.lora.embedding_lr_mult,
                            embed_optim=cfg.lora.embedding_optim)
    return lm, opts


def steps(lm, opts, cfg: CptConfig, device: torch.device, n: int = 2) -> float:
    """n optimizer steps of one micro-batch; the last loss."""
    lm.train()
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randint(0, lm.config.vocab_size, (cfg.train.micro_batch, cfg.data.seq_len), generator=g).to(device)
    for _ in range(n):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = lm(x, x)
        loss.backward()
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
    return loss.item()


def measure(cfg: CptConfig, device: torch.device | None = None, net=None) -> dict:
    """Peak bytes of two steps of the stage's model (the model and its optimizer states included); `net`: a
    base already loaded (a quantised one), else a random one is built."""
    device = device or torch.device("cpu")
    lm, opts = build(cfg, device, net)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        loss = steps(lm, opts, cfg, device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        with LiveBytes(lm.parameters(), lm.buffers()) as tracker:
            loss = steps(lm, opts, cfg, device)
        peak = tracker.peak
    del lm, opts
    gc.collect()
    return {"measured_gib": peak / GIB, "loss": loss}


def run_case(base: str, dtype: str, ckpt: bool, seq: int, micro_batch: int, rank: int = 128,
             layers: int | None = None, work: Path = Path("runs/measure_memory"),
             embedding_optim: str = "adamw", quantize: str = "none") -> dict:
    """One measured case beside its plan."""
    name = f"{base.replace('/', '__')}{f'_L{layers}' if layers else ''}"
    shape = shape_dir(base, work / name, layers)
    net = None
    if quantize != "none":  # bitsandbytes quantises while loading: a saved random base, through load_base
        from minimodel.stages.on_base import load_base

        saved = work / f"{name}_saved_{dtype}"
        if not (saved / "config.json").is_file():
            with atomic_dir(saved) as tmp:
                random_base(shape, DTYPES[dtype], torch.device("cpu")).save_pretrained(tmp)
        shape = saved
    cfg = stage_config(shape, dtype, ckpt, seq, micro_batch, rank, quantize=quantize, embedding_optim=embedding_optim)
    if quantize != "none":
        net = load_base(cfg).net
        gc.collect()
    got = measure(cfg, net=net)
    plan = planned(cfg)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB: the process, torch included
    return {"base": base, "layers": layers or read_json_object(reference_config(base), "")["num_hidden_layers"],
            "base_dtype": dtype, "grad_checkpoint": ckpt, "embedding_optim": embedding_optim,
            "quantize": quantize, "seq": seq, "micro_batch": micro_batch, "rank": rank,
            "measured_gib": round(got["measured_gib"], 4), "planned_gib": round(plan["live_gib"], 4),
            "error": round(plan["live_gib"] / got["measured_gib"] - 1, 4), "process_max_rss_gib": round(rss, 3),
            "planned_parts_gib": {k: round(v, 4) for k, v in plan["parts_gib"].items() if v}}


@cli_entry
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m scripts.measure_memory", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", help="a reference base, e.g. HuggingFaceTB/SmolLM2-135M")
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16", help="base.dtype of the frozen base")
    ap.add_argument("--grad-checkpoint", action="store_true")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--rank", type=int, default=128)
    ap.add_argument("--layers", type=int, default=None, help="keep only this many layers (default: all)")
    ap.add_argument("--embedding-optim", choices=("adamw", "adamw8bit"), default="adamw",
                    help="lora.embedding_optim: the trained embeddings' optimizer")
    ap.add_argument("--quantize", choices=("none", "nf4", "int8"), default="none",
                    help="base.quantize: a saved random base loaded through bitsandbytes")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    row = run_case(args.base, args.dtype, args.grad_checkpoint, args.seq, args.micro_batch, args.rank, args.layers,
                   embedding_optim=args.embedding_optim, quantize=args.quantize)
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    main()
