"""Generations for the 2x2 table: {new language, English} x {encyclopedia prompt, instruction}.

    python -m eval.generations runs/quickstart/core [--prompts eval/prompts/en_ko_2x2.jsonl]

Prompt files are jsonl: {"id", "lang", "kind": "encyclopedia" | "instruction", "prompt"}.
Encyclopedia prompts are continued as plain text (after EOS, as a new document); instructions are wrapped in
the model's chat template (the kit's ChatML for its own tokenizers), at every stage alike,
so base, CPT and SFT answer the same input. Each prompt is decoded greedily and sampled
(seeded), and each output gets a repetition score. Writes RUN_DIR/eval/generations.json.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from eval.models import load_model, model_cli, model_meta, output_path, save_output, small_model_threads
from eval.repetition import repetition_score
from minimodel.common.errors import UserError, cli_entry
from minimodel.common.io import read_jsonl_objects
from minimodel.models.causal_lm import CausalLM

DEFAULT_PROMPTS = Path(__file__).resolve().parent / "prompts" / "en_ko_2x2.jsonl"
KINDS = ("encyclopedia", "instruction")


def read_prompts(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompt file not found: {path}")
    out = []
    for n, rec in read_jsonl_objects(path, "each line needs id, lang, kind, prompt"):
        missing = [k for k in ("id", "lang", "kind", "prompt") if not isinstance(rec.get(k), str)]
        if missing:
            raise UserError(f"{path}:{n} lacks string field(s) {missing}; each line needs id, lang, kind, prompt")
        if rec["kind"] not in KINDS:
            raise UserError(f"{path}:{n}: kind {rec['kind']!r} must be one of {KINDS}")
        out.append(rec)
    if not out:
        raise UserError(f"{path} holds no prompts")
    return out


def prompt_ids(lm: CausalLM, rec: dict) -> list[int]:
    if rec["kind"] == "instruction":
        return lm.tokenizer.chat_prompt(rec["prompt"])
    return [lm.prefix_id] + lm.tokenizer.encode(rec["prompt"])


@torch.no_grad()
def continue_ids(lm: CausalLM, ids: list[int], max_new_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0, stop_ids: tuple[int, ...] = ()) -> list[int]:
    """New token ids after `ids`: greedy at temperature 0, else seeded nucleus sampling."""
    eos = lm.tokenizer.eos_id
    prompt = torch.tensor([ids], device=lm.device)
    out = lm.sample(prompt, max_new_tokens, temperature, top_p, seed, eos)[0, len(ids):].tolist()
    stops = set(stop_ids) | ({eos} if eos is not None else set())
    for i, t in enumerate(out):  # cut at the first stop token
        if t in stops:
            return out[:i]
    return out


def stop_tokens(lm: CausalLM) -> tuple[int, ...]:
    """Ids that end an answer: EOS and, for the kit's tokenizers, ChatML's <|im_end|>."""
    sp = getattr(lm.tokenizer, "sp", None)
    if sp is not None and sp.piece_to_id("<|im_end|>") != sp.unk_id():
        return (sp.piece_to_id("<|im_end|>"),)
    return ()


def drop_cut_character(text: str) -> str:
    """A text cut by the token budget without the character the cut split: byte-level tokenizers spell
    a Korean syllable in up to three tokens, and the bytes of a partial one decode to U+FFFD ("�")."""
    return text.rstrip("\ufffd")


def run_generations(lm: CausalLM, prompts: list[dict], max_new_tokens: int = 64, temperature: float = 0.8,
                    top_p: float = 0.95, seed: int = 0) -> list[dict]:
    with small_model_threads(lm):
        return _generate_all(lm, prompts, max_new_tokens, temperature, top_p, seed)


def _generate_all(lm, prompts, max_new_tokens, temperature, top_p, seed) -> list[dict]:
    samples, stops = [], stop_tokens(lm)
    for k, rec in enumerate(prompts):
        ids = prompt_ids(lm, rec)
        for mode, temp in (("greedy", 0.0), ("sampled", temperature)):
            new = continue_ids(lm, ids, max_new_tokens, temp, top_p, seed + k, stops)
            text = lm.tokenizer.decode(new)
            if len(new) == max_new_tokens:
                text = drop_cut_character(text)
            samples.append({**rec, "mode": mode, "text": text, "new_tokens": len(new),
                            "repetition": repetition_score(text)})
    return samples


def parse_args(argv):
    ap = model_cli("python -m eval.generations", __doc__, "generations.json")
    ap.add_argument("--prompts", default=str(DEFAULT_PROMPTS))
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.8, help="for the sampled outputs")
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


@cli_entry
def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    prompts = read_prompts(args.prompts)
    lm = load_model(args.model, args.adapter, args.device)
    out = output_path(lm, args.out, "generations.json")
    samples = run_generations(lm, prompts, args.max_new_tokens, args.temperature, args.top_p, args.seed)
    for s in samples:
        if s["mode"] == "greedy":
            print(f"[{s['id']}] {s['prompt']} -> {s['text'][:100]!r}", file=sys.stderr)
    doc = {**model_meta(lm, args, "eval.generations", argv), "prompts_file": str(args.prompts),
           "settings": {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
                        "top_p": args.top_p, "seed": args.seed}, "samples": samples}
    save_output(out, doc)
    return doc


if __name__ == "__main__":
    main()
