"""docs/benchmarks.md's GPU tables, rendered from every docs/gpu/*.jsonl that scripts/gpu_check.py wrote.

The tables replace whatever stands between the two marker lines (the rest of the file is left as it
is); the file is rewritten atomically. A table with no rows says so.
"""
from __future__ import annotations

import json
from pathlib import Path

from minimodel.common.errors import UserError
from minimodel.common.io import read_utf8, write_text

BEGIN = "<!-- gpu-check tables: begin (rendered by python -m scripts.gpu_check; edits here are lost) -->"
END = "<!-- gpu-check tables: end -->"
NONE_YET = "_No GPU run recorded yet._"


def read_records(out_dir: Path) -> list[dict]:
    """Every record of every OUT/*.jsonl, in file order; a torn last line (a run cut off mid-write) is skipped."""
    records = []
    for path in sorted(Path(out_dir).glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(r, dict) and "section" in r and "run" in r:
                records.append(r)
    return records


def cell(v, digits: int = 2) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v).replace("|", "\\|")


def table(headers: list[str], rows: list[list], empty: str = NONE_YET) -> str:
    if not rows:
        return empty
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def measured(records: list[dict], section: str) -> list[dict]:
    return [r for r in records if r["section"] == section and "error" not in r and "skipped" not in r]


def when(r: dict) -> str:
    return r["run"].replace("T", " ")[:16]


def bold(text: str) -> str:
    return text if text == "—" else f"**{text}**"


def pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def sections_md(records: list[dict]) -> str:
    env = {r["run"]: r for r in records if r["section"] == "env"}
    summary = {r["run"]: r for r in records if r["section"] == "summary"}
    parts = ["### Runs", table(
        ["run (UTC)", "GPU", "torch", "transformers", "peft", "bitsandbytes", "wall s", "sections"],
        [[when(e), cell(e["gpu"]), cell(e.get("torch")), cell(e.get("packages", {}).get("transformers")),
          cell(e.get("packages", {}).get("peft")), cell(e.get("packages", {}).get("bitsandbytes")),
          cell(summary.get(run, {}).get("wall_s"), 0),
          ", ".join(f"{k} {v}" for k, v in summary.get(run, {}).get("outcomes", {}).items()) or "cut off"]
         for run, e in env.items()])]
    parts += ["### CUDA-path tests (`pytest -m gpu`)", table(
        ["run (UTC)", "GPU", "passed", "failed", "errors", "skipped", "failures"],
        [[when(r), cell(r["gpu"]), cell(r.get("passed")), cell(r.get("failed")), cell(r.get("test_errors")),
          cell(r.get("skipped_tests")), cell("; ".join(r.get("failed_tests", [])) or "—")]
         for r in measured(records, "gpu_tests")])]
    parts += ["### Training step: minimodel vs transformers' Qwen3ForCausalLM (bf16, AdamW)", table(
        ["run (UTC)", "GPU", "params", "seq x batch", "mode", "minimodel tok/s", "transformers tok/s", "ratio",
         "MFU", "step peak GiB (ours / theirs)"],
        [[when(r), cell(r["gpu"]), f"{r['params'] / 1e6:.1f}M", f"{r['seq']} x {r['batch']}",
          "compiled" if r["compile"] else "eager", cell(r["native_tok_s"], 0), cell(r["hf_tok_s"], 0),
          bold(f"{r['ratio_vs_hf']:.2f}x"), pct(r.get("mfu")),
          f"{cell(r.get('native_step_peak_gib'))} / {cell(r.get('hf_step_peak_gib'))}"]
         for r in measured(records, "bench_train")])]
    parts += ["### Muon's share of the training step (104M, bf16)", table(
        ["run (UTC)", "GPU", "seq x batch", "mode", "step ms", "Muon ms", "AdamW ms", "Muon's share"],
        [[when(r), cell(r["gpu"]), f"{r['seq']} x {r['batch']}", "compiled" if r["compile"] else "eager",
          cell(r["step_ms"], 1), cell(r["muon_ms"], 1), cell(r["adamw_ms"], 1), bold(pct(r["muon_share"]))]
         for r in measured(records, "muon_share")])]
    parts += ["### The largest 104M micro-batch on a 24 GB card (eager, bf16, Muon; memory capped)", table(
        ["run (UTC)", "GPU", "seq", "cap GiB", "largest micro-batch", "peak GiB at it", "first that failed"],
        [[when(r), cell(r["gpu"]), cell(r["seq"]), cell(r["cap_gib"], 1), bold(cell(r["max_micro_batch"])),
          cell(r.get("peak_gib")), cell(r.get("first_oom"))] for r in measured(records, "microbatch_24gb")])]
    parts += ["### The 7B LoRA recipe's memory (random Mistral-7B weights, LoRA r=128 + embeddings, AdamW)", table(
        ["run (UTC)", "GPU", "model", "base", "grad ckpt", "seq x micro-batch", "trainable",
         "held before GiB (weights, optimizer state)", "peak GiB", "planned GiB (error)", "s / step"],
        [[when(r), cell(r["gpu"]), cell(r["model"]), f"{r['backend']}, {r['base_dtype']}", cell(r["grad_ckpt"]),
          f"{r['seq']} x {r['micro_batch']}", f"{r['trainable'] / 1e6:.1f}M", cell(r.get("held_gib")),
          bold(cell(r.get("peak_gib"))),
          f"{cell(r.get('planned_gib'))} ({pct(r['plan_error']) if r.get('plan_error') is not None else '–'})",
          cell(r.get("step_s"))] for r in measured(records, "lora_7b")])]
    parts += ["### 300 steps of the 104M core (recipes/configs/core_104m.toml, seq 1024 x 16)", table(
        ["run (UTC)", "GPU", "data", "steps", "compiled", "train loss first → last", "val loss start → end",
         "epochs", "MFU (logged)", "tok/s", "wall s"],
        [[when(r), cell(r["gpu"]), cell(r["data"]), cell(r["steps"]), cell(r["compile"]),
          f"{r['first_loss']:.3f} → {r['last_loss']:.3f}", f"{r['val_loss_start']:.3f} → {r['val_loss_end']:.3f}",
          cell(r["epochs"], 1), pct(r.get("mfu")), cell(r["tok_s"], 0), cell(r["wall_s"], 0)]
         for r in measured(records, "pretrain_300")])]
    parts += ["### Generated replay: the base's sampling speed "
              "(minimodel.nn.generate, KV cache, bf16, temperature 1)", table(
        ["run (UTC)", "GPU", "params", "batch", "tokens per sample", "tok/s", "peak GiB"],
        [[when(r), cell(r["gpu"]), f"{r['params'] / 1e6:.1f}M", cell(r["batch"]), cell(r["sample_tokens"]),
          bold(cell(r["tok_s"], 0)), cell(r.get("peak_gib"))] for r in measured(records, "dream_replay")])]
    problems = [r for r in records if ("error" in r or "skipped" in r) and r["section"] not in ("env", "summary")]
    parts += ["### Errors and skipped parts", table(
        ["run (UTC)", "GPU", "section", "what"],
        [[when(r), cell(r["gpu"]), r["section"], ("error: " + cell(r["error"])) if "error" in r
          else "skipped: " + cell(r["skipped"])] for r in problems], "_None._" if env else NONE_YET)]
    return "\n\n".join(parts)


def render(out_dir: str | Path, doc: str | Path) -> None:
    """Replace the text between BEGIN and END in `doc` with the tables of out_dir/*.jsonl."""
    doc = Path(doc)
    text = read_utf8(doc, "restore the file from git")
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise UserError(f"{doc} must hold the two marker lines once each, in order:\n{BEGIN}\n{END}")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    write_text(doc, f"{head}{BEGIN}\n{sections_md(read_records(Path(out_dir)))}\n{END}{tail}")
