"""The measurements of scripts/gpu_check.py, one function per section. Each takes the run's `Check`
(device, quick, the seconds its budget has left, `emit` for one JSON record) and emits its records as
soon as it has them. `quick` shrinks every size to a seconds-long CPU dry run. The 7B LoRA section
is in scripts/gpu_lora.py."""
from __future__ import annotations

import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
CAP_24GB_GIB = 23.0  # a 24 GB card (24,564 MiB) less its CUDA context: what PyTorch's allocator gets
COMPILE_NEED_S = 110  # two cold torch.compile runs (fwd + bwd) of a 104M model on one GPU, with margin


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16)


def time_for(ck, need_s: float, **fields) -> bool:
    """True when the section's budget still has `need_s` seconds; else records the part as skipped."""
    if ck.left() >= need_s:
        return True
    ck.emit(**fields, skipped=f"{ck.left():.0f} s left in the section's budget, about {need_s:.0f} s needed")
    return False


# ---------------------------------------------------------------- CUDA-path tests

def junit_summary(path: Path) -> dict:
    """Counts and failed test names from a pytest --junitxml file."""
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = []
    for case in root.iter("testcase"):
        for bad in list(case.findall("failure")) + list(case.findall("error")):
            message = (bad.get("message") or "").strip().splitlines()[:1]
            failed.append(f"{case.get('name')}: {message[0][:200] if message else bad.tag}")
    # named apart from a record's "error"/"skipped", which mark the record itself
    return {"tests": total["tests"], "passed": total["tests"] - total["failures"] - total["errors"] - total["skipped"],
            "failed": total["failures"], "test_errors": total["errors"], "skipped_tests": total["skipped"],
            "failed_tests": failed}


def gpu_tests(ck) -> None:
    """`pytest -m gpu tests/test_gpu.py` in a child process; on the CPU dry run the same tests run on the CPU."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # so a cut-off run's output shows what finished
    if ck.device.type == "cpu":
        env["MINIMODEL_TEST_DEVICE"] = "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-m", "gpu", "tests/test_gpu.py",
               f"--junitxml={xml}"]
        try:
            r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(ck.left() - 2, 1))
        except subprocess.TimeoutExpired as e:  # what finished before the cut still counts
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout or ""
            done = [line.split(" ", 1)[0].split("::")[-1] + " " + line.split()[1] for line in out.splitlines()
                    if "::" in line and any(w in line for w in ("PASSED", "FAILED", "SKIPPED", "ERROR"))]
            ck.emit(error=f"pytest timed out after {e.timeout:.0f} s", finished=done)
            return
        if not xml.is_file():
            raise RuntimeError(f"pytest wrote no report (exit {r.returncode}): {r.stdout[-300:]}{r.stderr[-300:]}")
        ck.emit(**junit_summary(xml), exit_status=r.returncode)


# ---------------------------------------------------------------- training step vs transformers

def bench_train(ck) -> None:
    """scripts.bench train at 104M, seq 1024 and 2048 (16K tokens a step), eager then compiled."""
    from scripts.bench_train import bench_preset

    preset, configs = ("tiny", [(64, 2), (128, 1)]) if ck.quick else ("104m", [(1024, 16), (2048, 8)])
    for seq, batch in configs:
        for compiled in (False, True):
            fields = {"preset": preset, "seq": seq, "batch": batch, "compile": compiled}
            if compiled and ck.device.type == "cpu":
                ck.emit(**fields, skipped="torch.compile's cold start (a minute or more per model on a small CPU) "
                                          "is left to the GPU run")
                continue
            if not time_for(ck, COMPILE_NEED_S if compiled else 20, **fields):
                continue
            rounds, warmup = (2, 1) if ck.quick else (10, 3)
            ck.emit(**bench_preset(preset, seq, batch, rounds, warmup, "adamw", "bf16", compiled, ck.device))
            free_memory(ck.device)


# ---------------------------------------------------------------- Muon's share of the step

def muon_share(ck) -> None:
    """Time of torch.optim.Muon's step (Newton-Schulz and the update) over the whole training step at 104M."""
    from minimodel.config import OptimConfig
    from minimodel.nn.model import MiniModel, model_config_from
    from minimodel.train.optim import build_optimizers

    preset, seq, batch, rounds = ("tiny", 64, 2, 3) if ck.quick else ("104m", 1024, 16, 10)
    small = dict(d_model=64, n_layers=2, ffn_dim=128, vocab_size=1024) if ck.quick else {}
    torch.manual_seed(0)
    model = MiniModel(model_config_from(preset, max_seq_len=max(seq, 2048), **small)).to(ck.device)
    opts = build_optimizers(model, OptimConfig(name="muon"))
    x = torch.randint(0, model.config.vocab_size, (batch, seq), device=ck.device)
    for compiled in (False, True):
        fields = {"preset": preset, "params": model.num_params(), "seq": seq, "batch": batch, "compile": compiled}
        if compiled and ck.device.type == "cpu":
            ck.emit(**fields, skipped="torch.compile's cold start is left to the GPU run")
            continue
        if not time_for(ck, 40 if compiled else 10, **fields):  # compiling one model, likely cached by now
            continue
        net = torch.compile(model, dynamic=False) if compiled else model
        phases = []
        for i in range(rounds + 2):  # two warm-up steps (compilation, optimizer state)
            marks = [time.perf_counter()]
            with autocast(ck.device):
                loss = net(x, x)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            for opt in opts:  # Muon first, then AdamW (embeddings, norms)
                sync(ck.device)
                marks.append(time.perf_counter())
                opt.step()
                opt.zero_grad(set_to_none=True)
            sync(ck.device)
            marks.append(time.perf_counter())
            if i >= 2:
                phases.append([b - a for a, b in zip(marks, marks[1:])] + [marks[-1] - marks[0]])
        fwd_bwd, muon, adamw, step = (statistics.median(p[k] for p in phases) for k in range(4))
        ck.emit(**fields, step_ms=round(step * 1e3, 2), fwd_bwd_ms=round(fwd_bwd * 1e3, 2),
                muon_ms=round(muon * 1e3, 2), adamw_ms=round(adamw * 1e3, 2), muon_share=round(muon / step, 4),
                rounds=rounds)
    del model, opts
    free_memory(ck.device)


# ---------------------------------------------------------------- the micro-batch that fits 24 GB

def two_steps(model, opts, x: torch.Tensor) -> torch.Tensor:
    """Two training steps on x (the second holds the optimizer state too); the last loss."""
    for _ in range(2):
        with autocast(x.device):
            loss = model(x, x)
        loss.backward()
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
    sync(x.device)
    return loss.detach()


def largest_fitting(fits, start: int = 8, limit: int = 512) -> tuple[int, int | None]:
    """(largest b <= limit with fits(b), smallest b seen failing or None) for a monotone `fits`:
    doubling from `start`, then bisection. 0 when even 1 fails."""
    lo, hi, b = 0, None, start
    while hi is None and b <= limit:
        if fits(b):
            lo, b = b, b * 2
        else:
            hi = b
    while hi is not None and hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo, hi


def microbatch_24gb(ck) -> None:
    """The largest 104M micro-batch (eager, bf16 autocast, Muon, seq 1024 and 2048) whose training step fits
    when this process may use only CAP_24GB_GIB of the GPU."""
    if ck.device.type != "cuda":
        ck.emit(skipped="needs CUDA: the 24 GB cap is torch.cuda.set_per_process_memory_fraction")
        return
    from minimodel.config import OptimConfig
    from minimodel.nn.model import MiniModel, model_config_from
    from minimodel.train.optim import build_optimizers

    total = torch.cuda.get_device_properties(ck.device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(CAP_24GB_GIB * 2**30 / total, 1.0), ck.device)
    try:
        torch.manual_seed(0)
        model = MiniModel(model_config_from("104m", max_seq_len=2048)).to(ck.device)
        opts = build_optimizers(model, OptimConfig(name="muon"))
        for seq in (1024, 2048):
            if not time_for(ck, 15, seq=seq):
                continue
            peaks: dict[int, float] = {}

            def fits(b: int) -> bool:
                free_memory(ck.device)
                try:
                    # called within this iteration only: seq and peaks are this iteration's
                    two_steps(model, opts, torch.randint(0, model.config.vocab_size, (b, seq), device=ck.device))  # noqa: B023
                    peaks[b] = torch.cuda.max_memory_allocated(ck.device) / 2**30  # noqa: B023
                    return True
                except torch.OutOfMemoryError:
                    return False
                finally:
                    model.zero_grad(set_to_none=True)

            best, first_oom = largest_fitting(fits)
            ck.emit(preset="104m", seq=seq, cap_gib=CAP_24GB_GIB, max_micro_batch=best, first_oom=first_oom,
                    peak_gib=round(peaks.get(best, float("nan")), 2),
                    tried=sorted(peaks) + ([first_oom] if first_oom else []))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, ck.device)
        free_memory(ck.device)


# ---------------------------------------------------------------- 300 steps of the core

def override_value(v) -> str:
    """A config override's right-hand side: strings (paths) quoted, booleans in TOML's spelling."""
    import json

    return str(v).lower() if isinstance(v, bool) else json.dumps(str(v)) if isinstance(v, (str, Path)) else str(v)


def pretrain_300(ck) -> None:
    """The 104M core's recipe (recipes/configs/core_104m.toml) for 300 steps at seq 1024, micro-batch 16,
    on --data or on the fixture set: the loss curve's ends and the MFU the trainer logs."""
    from minimodel.config import load_config
    from minimodel.pretrain import run
    from minimodel.train.tracking import read_metrics
    from scripts.gpu_data import fixture_set

    cuda = ck.device.type == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        vocab = 1024 if ck.quick else 6400
        data = Path(ck.data) if ck.data else fixture_set(Path(tmp) / "set", vocab, n_docs=40 if ck.quick else None)
        o = {"data.path": data, "train.out_dir": Path(tmp) / "run", "train.device": ck.device.type,
             "train.compile": cuda, "train.progress": False, "train.keep_last": 1, "train.eval_batches": 1}
        if ck.quick:
            recipe = "recipes/configs/core_tiny.toml"
            o.update({"model.vocab_size": vocab, "model.d_model": 64, "model.n_layers": 2, "model.n_heads": 4,
                      "model.n_kv_heads": 2, "model.ffn_dim": 192, "data.seq_len": 64, "train.steps": 12,
                      "train.micro_batch": 8, "train.log_every": 3, "train.eval_every": 6,
                      "train.ckpt_every": 12, "train.attn_logit_every": 6, "optim.warmup_steps": 3,
                      "optim.name": "adamw", "optim.lr": 3e-3})  # a Muon step is 0.4 s on a CPU
        else:
            recipe = "recipes/configs/core_104m.toml"
            o.update({"data.seq_len": 1024, "train.steps": 300, "train.micro_batch": 16, "train.grad_accum": 1,
                      "train.log_every": 10, "train.eval_every": 100, "train.ckpt_every": 300,
                      "train.attn_logit_every": 100, "optim.warmup_steps": 30})
        t0 = time.perf_counter()
        result = run(load_config(str(ROOT / recipe), [f"{k}={override_value(v)}" for k, v in o.items()]))
        wall = time.perf_counter() - t0
        rows = read_metrics(Path(tmp) / "run")
    logged = [m for m in rows if "loss" in m]
    val = [m["val_loss"] for m in rows if "val_loss" in m]
    later = logged[len(logged) // 2:]  # past compilation and warm-up
    ck.emit(recipe=recipe, data=str(ck.data) if ck.data else "tests/fixtures (fixture set)",
            params=result["info"]["params"], steps=result["step"], tokens=result["tokens"], compile=cuda,
            first_loss=round(logged[0]["loss"], 4), last_loss=round(logged[-1]["loss"], 4),
            val_loss_start=round(val[0], 4), val_loss_end=round(val[-1], 4),
            epochs=round(logged[-1]["epoch"], 2), mfu=round(statistics.median(m["mfu"] for m in later), 4),
            tok_s=round(statistics.median(m["tok_per_s"] for m in later)),
            peak_mem_gib=round(later[-1]["peak_mem_gib"], 2) if "peak_mem_gib" in later[-1] else None,
            wall_s=round(wall, 1), exported="final" in result)


# ---------------------------------------------------------------- generated replay's sampling speed

def dream_replay(ck) -> None:
    """Sampling speed of generated ("dream") replay at 104M (minimodel.nn.generate, KV cache, bf16): with a
    CPT run's tokens/s it says what share of the run the base's writing of its replay set takes."""
    from minimodel.nn.generate import generate
    from minimodel.nn.model import MiniModel, model_config_from

    preset, seq, batches = ("tiny", 64, (4, 16)) if ck.quick else ("104m", 1024, (64, 256))
    small = dict(d_model=64, n_layers=2, ffn_dim=128, vocab_size=1024) if ck.quick else {}
    torch.manual_seed(0)
    model = MiniModel(model_config_from(preset, max_seq_len=seq, **small)).to(ck.device).eval()
    for batch in batches:
        fields = {"preset": preset, "params": model.num_params(), "batch": batch, "sample_tokens": seq - 1}
        if not time_for(ck, 5 if ck.quick else 20, **fields):
            continue
        free_memory(ck.device)
        prompt = torch.zeros(batch, 1, dtype=torch.long, device=ck.device)
        gen = torch.Generator(device=ck.device).manual_seed(0)
        sync(ck.device)
        t0 = time.perf_counter()
        with autocast(ck.device):
            out = generate(model, prompt, seq - 1, temperature=1.0, generator=gen)
        sync(ck.device)
        seconds = time.perf_counter() - t0
        new = (out.shape[1] - 1) * batch
        peak = torch.cuda.max_memory_allocated(ck.device) / 2**30 if ck.device.type == "cuda" else None
        ck.emit(**fields, seconds=round(seconds, 3), tok_s=round(new / seconds, 1), peak_gib=peak)
    del model
    free_memory(ck.device)
