"""Load any model the kit evaluates behind one small interface.

A model spec is one of:
  * a minimodel run directory (its `final/` holds minimodel.json + model.safetensors +
    tokenizer.model): the native MiniModel;
  * a Hugging Face directory (config.json + weights): transformers' AutoModelForCausalLM;
  * a peft adapter directory (adapter_config.json), or a run directory whose `adapter/` holds
    one and which has no merged `final/`: the base model + the adapter (PeftModel).
The tokenizer is the model's own: `tokenizer.model` (sentencepiece) beside the weights when
there is one (the kit's tokenizers), otherwise AutoTokenizer.
"""
from __future__ import annotations

import hashlib
import tomllib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from minimodel.errors import UserError


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class SPTokenizer:
    """The kit's sentencepiece tokenizers (BOS/EOS = 2/3, ChatML markers as single pieces)."""

    def __init__(self, path: Path):
        from data_prep.tokenizer import load_tokenizer

        self.path = Path(path)
        self.sp = load_tokenizer(path)
        self.sha256 = file_sha256(path)
        self.bos_id = self.sp.bos_id() if self.sp.bos_id() >= 0 else None
        self.eos_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else None
        self.vocab_size = self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(list(ids))

    def chat_prompt(self, user: str) -> list[int]:
        from data_prep.sft import encode_chat

        return encode_chat(self.sp, [{"role": "user", "content": user}], add_generation_prompt=True)[0]


class HFTokenizer:
    def __init__(self, path: str | Path):
        from transformers import AutoTokenizer

        from minimodel.bases import HF_LOAD_ERRORS, error_gist

        self.path = path
        try:
            self.tok = AutoTokenizer.from_pretrained(str(path))
        except HF_LOAD_ERRORS as e:
            raise UserError(f"cannot load the tokenizer of {path}: {error_gist(e)}; "
                            "copy the model's tokenizer files beside it") from None
        self.sha256 = None  # not a single file: token shards can only be checked against sentencepiece
        self.bos_id, self.eos_id = self.tok.bos_token_id, self.tok.eos_token_id
        self.vocab_size = len(self.tok)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def chat_prompt(self, user: str) -> list[int]:
        msgs = [{"role": "user", "content": user}]
        if getattr(self.tok, "chat_template", None):
            out = self.tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
            return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)
        return self.encode(user + "\n")


@dataclass
class LoadedModel:
    """`logits(ids)` for (B, T) ids; `context` is the length the model was trained at when known."""
    name: str
    kind: str                      # native | hf (an adapter is merged into either)
    module: torch.nn.Module
    tokenizer: object
    context: int
    device: torch.device
    run_dir: Path | None = None
    source: dict = field(default_factory=dict)

    @property
    def prefix_id(self) -> int:
        """What a document is conditioned on: EOS, as in the pretraining stream, where every document
        follows the previous one's EOS (lm-eval's convention too); BOS for tokenizers without EOS."""
        tok = self.tokenizer
        return tok.eos_id if tok.eos_id is not None else tok.bos_id

    @torch.no_grad()
    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.to(self.device)
        if self.kind == "native":
            return self.module(ids).float()
        # right padding only: a causal model's outputs before the padding do not see it
        return self.module(input_ids=ids).logits.float()


def _read_toml(path: Path) -> dict:
    from minimodel.jsonfile import read_utf8

    try:
        return tomllib.loads(read_utf8(path)) if path.is_file() else {}
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path} is not valid TOML ({e})") from None


def run_config(run_dir: Path | None) -> dict:
    return _read_toml(run_dir / "config.toml") if run_dir else {}


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _tokenizer_for(path: Path, fallback: str | Path | None = None):
    if (path / "tokenizer.model").is_file():
        return SPTokenizer(path / "tokenizer.model")
    if any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return HFTokenizer(path)
    if fallback is not None:
        return _tokenizer_for(Path(fallback)) if Path(fallback).is_dir() else HFTokenizer(fallback)
    raise UserError(f"{path} has no tokenizer (tokenizer.model or tokenizer.json); copy the model's tokenizer beside it")


def _native(path: Path):
    from minimodel.bases import read_native_config
    from minimodel.checkpoint import load_model_weights
    from minimodel.model import MiniModel

    cfg = read_native_config(path / "minimodel.json")
    model = MiniModel(cfg)
    load_model_weights(model, path / "model.safetensors")
    return model, cfg.max_seq_len


def _hf(path: str | Path):
    from minimodel.bases import load_hf_causal_lm

    model = load_hf_causal_lm(path, "a Hugging Face model from", dtype=torch.float32)
    return model, int(getattr(model.config, "max_position_embeddings", 2048) or 2048)


def _base_model(path: str | Path):
    p = Path(path)
    if p.is_dir() and (p / "final").is_dir():
        p = p / "final"
    if p.is_dir() and (p / "minimodel.json").is_file():
        return ("native", *_native(p), p)
    if p.is_dir() and not (p / "config.json").is_file():
        raise UserError(f"{p} is not a model: no final/ (run directory), minimodel.json, config.json "
                        "(Hugging Face directory) or adapter_config.json")
    return ("hf", *_hf(p if p.exists() else path), p if p.exists() else path)


def load_model(spec: str | Path, adapter: str | Path | None = None, device: str = "auto",
               context: int | None = None, name: str | None = None) -> LoadedModel:
    """Load a run dir, a Hugging Face dir (or hub id when the hub is reachable) or base + adapter."""
    p = Path(spec)
    run_dir = None
    if p.is_dir() and (p / "config.toml").is_file():
        run_dir = p
        if (p / "final").is_dir():
            p = p / "final"
        elif adapter is None and (p / "adapter" / "adapter_config.json").is_file():
            adapter = p / "adapter"
            base = run_config(run_dir).get("base", {}).get("path") or run_config(run_dir).get("base", {}).get("model")
            if not base:
                raise UserError(f"{run_dir} has adapter/ but no merged final/ and no [base] path in config.toml; "
                                "pass the base model with --base")
            p = Path(base)
        else:
            raise UserError(f"{run_dir} has no final/ (the run did not finish) and no adapter/: nothing to evaluate")
    if p.is_dir() and (p / "adapter_config.json").is_file() and adapter is None:
        adapter = p
        from minimodel.jsonfile import read_json_object

        acfg = read_json_object(p / "adapter_config.json", "copy the adapter directory again")
        base = acfg.get("base_model_name_or_path")
        if not isinstance(base, str) or not base:
            raise UserError(f"{p}: adapter_config.json names no base_model_name_or_path; pass the base model")
        p = Path(base)
    if not p.exists() and not (isinstance(spec, str) and "/" in spec and not spec.startswith((".", "/"))):
        raise UserError(f"model not found: {spec} (a run directory, a Hugging Face directory or an adapter)")
    kind, module, max_pos, where = _base_model(p)
    tok_dir = Path(where) if Path(where).is_dir() else None
    tokenizer = _tokenizer_for(Path(adapter), fallback=where) if adapter else (
        _tokenizer_for(tok_dir) if tok_dir else HFTokenizer(where))
    if adapter is not None:
        from minimodel.lora import load_peft

        # merged for evaluation: the same function as base + adapter, and the plain model's
        # interface (our generate(), KV caches) keeps working
        module = load_peft(module, Path(adapter)).merge_and_unload()
    trained = run_config(run_dir).get("data", {}).get("seq_len") if run_dir else None
    ctx = int(context or min(trained or max_pos, max_pos))
    dev = pick_device(device)
    module.to(dev).eval()
    label = name or (run_dir.name if run_dir else Path(str(spec)).name)
    src = {"spec": str(spec), "adapter": str(adapter) if adapter else None, "kind": kind,
           "tokenizer_sha256": tokenizer.sha256}
    return LoadedModel(label, kind, module, tokenizer, ctx, dev, run_dir, src)


@contextmanager
def small_model_threads(lm: LoadedModel, max_params: int = 10_000_000):
    """One CPU thread for a small model: its matmuls are tiny (decoding is one token at a time),
    and synchronising threads costs more than it saves; on cores shared with other work the
    default thread count was 3-10x slower for the quickstart's 1.8M-parameter core."""
    before = torch.get_num_threads()
    if lm.device.type == "cpu" and sum(p.numel() for p in lm.module.parameters()) < max_params:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
