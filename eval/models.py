"""The models eval scores: whatever minimodel.models.loading loads (a run directory, a Hugging Face
directory or hub id, a .gguf file, an adapter on its base), merged, on a device, at the
context the run was trained with. The tokenizer is the model's own (minimodel.tokenizers.tokenizer)."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

from minimodel.common.distributed import pick_device
from minimodel.common.io import write_json
from minimodel.models.causal_lm import CausalLM
from minimodel.models.loading import load

EXTERNAL_CONTEXT = 2048  # default context for a model not trained here (a run is scored at its own)


def load_model(spec: str | Path, adapter: str | Path | None = None, device: str = "auto",
               context: int | None = None, name: str | None = None) -> CausalLM:
    """The model `spec` names (with `adapter` on it, when given), ready to score: merged, frozen,
    in eval mode, with a tokenizer; `context` overrides the trained context."""
    lm = load(spec, adapter)
    lm.require_tokenizer()
    if context:
        lm.context = int(context)
    elif lm.run_dir is None and lm.context > EXTERNAL_CONTEXT:
        # a base not trained here: its maximum (8192 and more) costs memory and hours on a CPU
        print(f"note: {lm.name} is scored at context {EXTERNAL_CONTEXT} (its maximum is {lm.context}; "
              "--ctx to change)", file=sys.stderr)
        lm.context = EXTERNAL_CONTEXT
    lm.name = name or lm.name
    return lm.to(pick_device(device)).eval()


def free_memory(device: torch.device) -> int:
    """Bytes free on the device (CUDA) or in RAM (CPU)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def scoring_batch(lm: CausalLM, ctx: int, limit: int = 16) -> int:
    """Windows scored at once: as many as keep a quarter of the free memory enough for each window's
    fp32 logits (ctx x vocab, three times: logits, log-softmax, a copy) and activations, at most `limit`.
    A 150k-token vocabulary at context 2048 needs ~3.7 GB per window."""
    per_window = ctx * (lm.config.vocab_size * 4 * 3 + lm.config.d_model * 4 * 16)
    return max(1, min(limit, int(free_memory(lm.device) // 4 // per_window)))


def model_cli(prog: str, doc: str, out_file: str) -> argparse.ArgumentParser:
    """The arguments every eval command takes: the model (and an adapter on it), the device, where its
    JSON goes, and the stage and base labels the report reads."""
    ap = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="run dir, Hugging Face dir or hub id, .gguf file, or adapter dir")
    ap.add_argument("--adapter", help="peft adapter to apply on MODEL")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", help=f"output JSON (default: RUN_DIR/eval/{out_file} for a run directory; "
                    "for any other model the JSON is printed on stdout)")
    ap.add_argument("--stage", help="stage label for the report (base, cpt, sft, ...); default from config.toml")
    ap.add_argument("--base", help="the model this one was adapted from (run dir or name), for the report")
    return ap


def output_path(lm: CausalLM, out: str | None, file: str) -> Path | None:
    """Where an eval command's JSON goes: --out, else RUN_DIR/eval/FILE for a run directory, else
    nowhere (None: `save_output` prints it). Scoring a base is the first thing a user does, and a
    Hugging Face directory, hub cache or .gguf file is not ours to write into."""
    if out:
        return Path(out)
    return None if lm.run_dir is None else lm.run_dir / "eval" / file


def save_output(path: Path | None, doc: dict) -> None:
    """Write the JSON where `output_path` said; without a place, print it on stdout (the numbers
    were shown on stderr as they came) and say how to keep it."""
    if path is not None:
        write_json(path, doc)
        print(f"wrote {path}", file=sys.stderr)
        return
    print(json.dumps(doc, indent=2, ensure_ascii=False, default=str))
    print(f"note: {doc.get('model')} is not a run directory, so the JSON above was not saved; "
          "--out FILE.json writes it", file=sys.stderr)


def model_meta(lm: CausalLM, args, module: str, argv: list[str]) -> dict:
    """What an eval output records about the model it scored and the command that scored it."""
    src = lm.source
    return {"model": lm.name, "spec": src.spec if src else None,
            "adapter": str(src.path) if src and src.kind == "adapter" else None, "kind": lm.kind,
            "tokenizer_sha256": lm.tokenizer.sha256 if lm.tokenizer else None,
            "tokenizer_kind": lm.tokenizer.kind if lm.tokenizer else None, "params": lm.num_params(),
            "stage": args.stage, "base": args.base, "command": shlex.join(["python", "-m", module, *argv])}


@contextmanager
def small_model_threads(lm: CausalLM, max_params: int = 10_000_000):
    """One CPU thread for a small model: its matmuls are tiny (decoding is one token at a time),
    and synchronising threads costs more than it saves; on cores shared with other work the
    default thread count was 3-10x slower for the quickstart's 1.8M-parameter core."""
    before = torch.get_num_threads()
    if lm.device.type == "cpu" and lm.num_params() < max_params:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
