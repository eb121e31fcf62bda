"""Hugging Face models as bases: local directories, hub ids and GGUF files.

    resolve_base("runs/core/final" | "Qwen/Qwen3-0.6B" | "model-Q8_0.gguf") -> local HF directory
    load_base(spec)   -> (transformers model, tokenizer, directory): the LoRA / SFT stages' base
    load_native(spec) -> MiniModel with the same logits (Llama/Mistral/Qwen3-shaped checkpoints)
    save_native(model, out_dir, tokenizer_from=dir) -> the native model back as a HF directory

Bases go through transformers (Llama, Mistral, Qwen2 and Qwen3 families); trust_remote_code
stays off unless the caller asks. GGUF files are read by transformers' gguf support
(needs the `gguf` package), dequantised once and saved as safetensors, so later loads are
plain safetensors loads.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path

import torch

from data_prep.atomic import atomic_dir, write_json
from minimodel.errors import UserError
from minimodel.export import WEIGHTS, check_tokenizer_fits
from minimodel.hf_config import from_hf_config
from minimodel.jsonfile import read_json_object
from minimodel.model import MiniModel

BASE_TYPES = ("llama", "mistral", "qwen2", "qwen3")
IMPORT_META = "minimodel_import.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def cache_root() -> Path:
    return Path(os.environ.get("MINIMODEL_CACHE", Path.home() / ".cache" / "minimodel"))


def resolve_base(spec: str | Path, revision: str | None = None, gguf_dir: str | Path | None = None) -> Path:
    """A local Hugging Face model directory for `spec`: an HF directory, a minimodel run
    directory (its final/), a .gguf file (converted once, see gguf_to_hf) or a hub id."""
    p = Path(spec)
    if p.is_file():
        if p.suffix == ".gguf":
            return gguf_to_hf(p, gguf_dir)
        raise UserError(f"{p} is a file but not a .gguf model; give a model directory, a .gguf file or a hub id")
    if p.is_dir():
        if (p / "config.json").is_file():
            return p
        if (p / "final" / "config.json").is_file():
            return p / "final"
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return gguf_to_hf(ggufs[0], gguf_dir)
        what = f"several .gguf files ({', '.join(g.name for g in ggufs[:3])}): name one" if ggufs else "no config.json"
        raise UserError(f"{p} is not a Hugging Face model directory ({what})")
    if not _HUB_ID.match(str(spec)) or str(spec).startswith((".", "/", "~")):
        raise UserError(f"base model not found: {spec} (not a directory, a .gguf file or a hub id like org/name)")
    return _hub_snapshot(str(spec), revision)


def _hub_snapshot(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:  # config, weights and tokenizer files only (no .bin/.pt duplicates, no GGUF variants)
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=[
            "*.json", "*.safetensors", "tokenizer.model", "*.tiktoken", "*.txt", "*.jinja"]))
    except RepositoryNotFoundError:
        raise UserError(f"hub model {repo_id} does not exist (or is gated: log in with `hf auth login`)") from None
    except LocalEntryNotFoundError:
        raise UserError(f"hub model {repo_id} is not in the local cache and the hub is offline "
                        "(HF_HUB_OFFLINE=1); download it once online or give a local directory") from None
    except (HfHubHTTPError, OSError) as e:
        raise UserError(f"cannot fetch hub model {repo_id}: {str(e).splitlines()[0]}") from None


def read_config(model_dir: Path):
    from transformers import AutoConfig

    from minimodel.bases import HF_LOAD_ERRORS, error_gist, read_hf_config

    read_hf_config(model_dir)
    try:
        return AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    except HF_LOAD_ERRORS as e:
        raise UserError(f"{model_dir}/config.json cannot be read by transformers: "
                        f"{error_gist(e)}") from None


def check_base(model_dir: Path, trust_remote_code: bool = False):
    """Config of a usable base: a supported family (or remote code explicitly allowed)."""
    cfg = read_config(model_dir) if not trust_remote_code else None
    if cfg is not None and cfg.model_type not in BASE_TYPES:
        raise UserError(f"{model_dir}: model type {cfg.model_type!r} is not a supported base "
                        f"(supported: {', '.join(BASE_TYPES)}); pass trust_remote_code to try it anyway")
    return cfg


def load_tokenizer(model_dir: Path, vocab_size: int, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    from minimodel.bases import HF_LOAD_ERRORS, error_gist

    try:
        tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except HF_LOAD_ERRORS as e:
        raise UserError(f"{model_dir} has no tokenizer transformers can load "
                        f"({error_gist(e)}); "
                        "copy the tokenizer files of the model into it") from None
    check_tokenizer_fits(len(tok), vocab_size, str(model_dir))
    return tok


def load_base(spec: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
              trust_remote_code: bool = False, revision: str | None = None):
    """(model, tokenizer, directory) of a base for the LoRA and SFT stages, through transformers."""
    from minimodel.bases import load_hf_causal_lm

    model_dir = resolve_base(spec, revision)
    check_base(model_dir, trust_remote_code)
    model = load_hf_causal_lm(model_dir, "base", dtype=dtype, trust_remote_code=trust_remote_code)
    tok = load_tokenizer(model_dir, model.get_input_embeddings().weight.shape[0], trust_remote_code)
    return model.to(device), tok, model_dir


def _read_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    """All safetensors weights of a HF directory (single file or sharded with an index)."""
    from minimodel.checkpoint import read_safetensors

    index = model_dir / f"{WEIGHTS}.index.json"
    if index.is_file():
        weight_map = read_json_object(index, "copy the model's files again").get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise UserError(f"{index} is damaged: it does not map weight names to files")
        files = sorted(set(weight_map.values()))
    elif (model_dir / WEIGHTS).is_file():
        files = [WEIGHTS]
    else:
        raise UserError(f"{model_dir} has no {WEIGHTS} (pytorch_model.bin is not read: it needs unpickling); "
                        "convert it with transformers' save_pretrained(safe_serialization=True)")
    out = {}
    for f in files:
        out.update(read_safetensors(model_dir / f))
    return out


def load_native(spec: str | Path, revision: str | None = None) -> MiniModel:
    """A Llama/Mistral/Qwen3-shaped checkpoint as a MiniModel with identical logits (fp32)."""
    from dataclasses import asdict

    from minimodel.bases import native_config

    model_dir = resolve_base(spec, revision)
    hf_cfg = read_config(model_dir)
    try:
        cfg = from_hf_config(hf_cfg)
    except (TypeError, ValueError, KeyError, AttributeError, ZeroDivisionError) as e:
        raise UserError(f"{model_dir}/config.json does not describe a Llama/Qwen3-shaped model ({type(e).__name__}: "
                        f"{str(e)[:120]})") from None
    cfg = native_config(asdict(cfg), f"{model_dir}/config.json")  # types and ranges, before building the model
    model = MiniModel(cfg)
    tensors = _read_tensors(model_dir)
    if cfg.tie_embeddings:
        tensors.pop("lm_head.weight", None)  # some tied checkpoints store the copy too
    expected = model.state_dict()
    unknown = sorted(set(tensors) - set(expected))
    missing = sorted(n for n in set(expected) - set(tensors) if not (cfg.tie_embeddings and n == "lm_head.weight"))
    if unknown or missing:
        raise UserError(f"{model_dir}: weights do not match a {'Qwen3' if cfg.qk_norm else 'Llama'}-shaped model "
                        f"(unexpected {unknown[:3]}, missing {missing[:3]})")
    for name, t in tensors.items():
        if tuple(t.shape) != tuple(expected[name].shape):
            raise UserError(f"{model_dir}: {name} has shape {tuple(t.shape)}, config.json implies "
                            f"{tuple(expected[name].shape)}")
    model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False)
    return model.eval()


def save_native(model: MiniModel, out_dir: str | Path, tokenizer_from: str | Path | None = None,
                sp_path: str | Path | None = None) -> Path:
    """The native model as a HF directory. The tokenizer comes from a sentencepiece model
    (sp_path: full verified export) or is copied from a HF directory (tokenizer_from);
    the reload is checked for logits parity either way."""
    import shutil

    from minimodel.export import LOGITS_TOL, export_model, fp32_copy, logits_diff, write_model_files

    if sp_path is not None:
        return export_model(model, sp_path, out_dir)[0]
    src = Path(tokenizer_from) if tokenizer_from else None
    native = fp32_copy(model)
    with atomic_dir(out_dir) as tmp:
        write_model_files(model, tmp)
        if src is not None:
            for f in src.iterdir():
                if f.is_file() and (f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges"))
                                    or f.name in ("chat_template.jinja", "generation_config.json")):
                    shutil.copyfile(f, tmp / f.name)
        diff = logits_diff(native, tmp)
        if not diff < LOGITS_TOL:
            raise UserError(f"the saved model reloads with other logits (max diff {diff:.3g}); not written")
    return Path(out_dir)


def _gguf_key(path: Path) -> str:
    st = path.stat()  # name, size and mtime: hashing a multi-GB file on every load would cost more
    return hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]


def _gguf_field(gguf_path: Path, key: str):
    from gguf import GGUFReader

    field = GGUFReader(gguf_path).fields.get(key)
    return None if field is None else field.contents()


def gguf_sentencepiece(gguf_path: Path) -> bytes | None:
    """A sentencepiece model rebuilt from a GGUF's "llama" (sentencepiece BPE) vocabulary, or
    None for other tokenizer kinds. transformers converts GGUF vocabularies by architecture,
    so a sentencepiece vocabulary in a qwen3 file (our cores) would get a GPT-2 byte-level
    tokenizer; GGUF keeps sentencepiece's pieces, scores and types, enough to rebuild it."""
    from gguf import GGUFReader
    from sentencepiece import sentencepiece_model_pb2 as pb

    f = GGUFReader(gguf_path).fields
    if "tokenizer.ggml.model" not in f or f["tokenizer.ggml.model"].contents() != "llama":
        return None
    tokens, scores = f["tokenizer.ggml.tokens"].contents(), f["tokenizer.ggml.scores"].contents()
    types = f["tokenizer.ggml.token_type"].contents()  # same numbering as sentencepiece's piece types
    m = pb.ModelProto()
    for piece, score, kind in zip(tokens, scores, types):
        m.pieces.add(piece=piece, score=float(score), type=int(kind))
    t = m.trainer_spec
    t.model_type = pb.TrainerSpec.BPE
    t.byte_fallback = 6 in types
    for key, attr in (("unknown", "unk_id"), ("bos", "bos_id"), ("eos", "eos_id"), ("padding", "pad_id")):
        field = f.get(f"tokenizer.ggml.{key}_token_id")
        setattr(t, attr, int(field.contents()) if field is not None else -1)
    n = m.normalizer_spec
    n.name = "identity"
    prefix = f.get("tokenizer.ggml.add_space_prefix")
    n.add_dummy_prefix = bool(prefix.contents()) if prefix is not None else True
    n.remove_extra_whitespaces = False
    n.escape_whitespaces = True
    return m.SerializeToString()


def _gguf_config(gguf_path: Path):
    """transformers' GGUF config, with head_dim taken from the file: for qwen3 transformers
    ignores attention.key_length and falls back to 128, which breaks every model whose
    heads are not 128 wide (our cores: 32 to 96)."""
    from gguf import GGUFReader
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    reader = GGUFReader(gguf_path)
    arch = reader.fields["general.architecture"].contents()
    field = reader.fields.get(f"{arch}.attention.key_length")
    if field is not None and hasattr(config, "head_dim"):
        config.head_dim = int(field.contents())
    return config


def gguf_to_hf(gguf_path: str | Path, out_dir: str | Path | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Dequantise a GGUF file through transformers into a safetensors HF directory (done once:
    an existing conversion of the same file is reused). Default place:
    $MINIMODEL_CACHE/gguf/<name>-<key>/."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise UserError(f"GGUF file not found: {gguf_path}")
    key = _gguf_key(gguf_path)
    out = Path(out_dir) if out_dir else cache_root() / "gguf" / f"{gguf_path.stem}-{key}"
    meta = out / IMPORT_META
    if meta.is_file() and json.loads(meta.read_text()).get("key") == key and (out / "config.json").is_file():
        return out
    try:
        import gguf  # noqa: F401  (transformers needs it; say so plainly)
    except ImportError:
        raise UserError("reading GGUF files needs the gguf package: pip install gguf") from None
    kw = dict(gguf_file=gguf_path.name)
    try:
        config = _gguf_config(gguf_path)
        loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, config=copy.deepcopy(config),
                                                      dtype=dtype, **kw)
    except (ValueError, KeyError, RuntimeError, NotImplementedError) as e:
        raise UserError(f"transformers cannot load {gguf_path.name}: {str(e).splitlines()[0]} "
                        "(supported: llama, mistral, qwen2, qwen3 and a few more GGUF architectures)") from None
    sp_bytes = gguf_sentencepiece(gguf_path)
    tok, tok_note = None, "sentencepiece vocabulary rebuilt from GGUF metadata"
    if sp_bytes is None:
        try:
            tok = AutoTokenizer.from_pretrained(gguf_path.parent, **kw)
            tok_note = "converted by transformers from GGUF metadata"
        except (ValueError, KeyError, OSError, TypeError, NotImplementedError) as e:
            tok_note = f"no tokenizer: {str(e).splitlines()[0]}"
    # transformers flags a GGUF-loaded model as quantised and refuses to save it, although its
    # weights are already dequantised: move them into a plain model of the same config.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    model.tie_weights()
    del loaded
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        if tok is not None:
            tok.save_pretrained(tmp)
        elif sp_bytes is not None:
            from minimodel.hf_tokenizer import save_hf_tokenizer, verify_tokenizer

            (tmp / "tokenizer.model").write_bytes(sp_bytes)
            verify_tokenizer(save_hf_tokenizer(tmp / "tokenizer.model", tmp), tmp / "tokenizer.model")
            template = _gguf_field(gguf_path, "tokenizer.chat_template")
            if template:  # the file's own template wins over our ChatML default
                cfg = json.loads((tmp / "tokenizer_config.json").read_text())
                cfg["chat_template"] = template
                write_json(tmp / "tokenizer_config.json", cfg)
                (tmp / "chat_template.jinja").write_text(template, encoding="utf-8")
        write_json(tmp / IMPORT_META, {"source": str(gguf_path.resolve()), "key": key, "dtype": str(dtype),
                                       "tokenizer": tok_note})
    return out
