"""GGUF files as bases: dequantised once through transformers' GGUF reader into a safetensors
Hugging Face directory, so later loads are plain safetensors loads (minimodel.models.loading resolves a
.gguf path through `gguf_to_hf`). Needs the `gguf` package. The converted directory lives in
$MINIMODEL_CACHE/gguf/<name>-<key>/ unless the caller names one.
"""
from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path

import torch

from minimodel.common.errors import UserError, error_gist
from minimodel.common.io import atomic_dir, read_json_object, write_json, write_text
from minimodel.tokenizers.sp_to_hf import SPACE, save_hf_tokenizer, verify_tokenizer

IMPORT_META = "minimodel_import.json"
USER_DEFINED = 4  # sentencepiece's and GGUF's piece type for user-defined symbols


def cache_root() -> Path:
    return Path(os.environ.get("MINIMODEL_CACHE", Path.home() / ".cache" / "minimodel"))


def _gguf_key(path: Path) -> str:
    st = path.stat()  # name, size and mtime: hashing a multi-GB file on every load would cost more
    return hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]


def _gguf_field(gguf_path: Path, key: str):
    from gguf import GGUFReader  # optional: only for .gguf bases (not on the GPU machine)

    field = GGUFReader(gguf_path).fields.get(key)
    return None if field is None else field.contents()


def gguf_sentencepiece(gguf_path: Path) -> bytes | None:
    """A sentencepiece model rebuilt from a GGUF's "llama" (sentencepiece BPE) vocabulary, or
    None for other tokenizer kinds. transformers converts GGUF vocabularies by architecture,
    so a sentencepiece vocabulary in a qwen3 file (our cores) would get a GPT-2 byte-level
    tokenizer; GGUF keeps sentencepiece's pieces, scores and types, enough to rebuild it.
    Both layouts are reproduced: Llama/Mistral (a dummy "▁" prefix) and Gemma (add_space_prefix
    false, runs of spaces as user-defined pieces matched whole before the merges)."""
    from gguf import GGUFReader  # optional: only for .gguf bases (not on the GPU machine)
    from sentencepiece import sentencepiece_model_pb2 as pb  # protobuf: not on every machine (the GPU machine lacks it)

    f = GGUFReader(gguf_path).fields
    if "tokenizer.ggml.model" not in f or f["tokenizer.ggml.model"].contents() != "llama":
        return None
    tokens, scores = f["tokenizer.ggml.tokens"].contents(), f["tokenizer.ggml.scores"].contents()
    types = f["tokenizer.ggml.token_type"].contents()  # same numbering as sentencepiece's piece types
    m = pb.ModelProto()
    for piece, score, kind in zip(tokens, scores, types):
        if kind == USER_DEFINED:  # llama.cpp's converter writes their "▁" as spaces (Gemma's "  ", "   " ...)
            piece = piece.replace(" ", SPACE)
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


def _byte_level_fixes(tok, gguf_path: Path) -> None:
    """Repair what transformers' GGUF converter gets wrong for a llama-architecture file with a byte-level
    ("gpt2") vocabulary, as Llama 3 and SmolLM ship: it keeps sentencepiece's decoder, which strips the
    first space of every decoded text, and takes EOS from the BOS id. A byte-level vocabulary decodes
    with ByteLevel alone; BOS and EOS are read from the file's own ids."""
    from tokenizers import decoders  # transformers and tokenizers take seconds to import: only where used

    tok.backend_tokenizer.decoder = decoders.ByteLevel()
    tokens = _gguf_field(gguf_path, "tokenizer.ggml.tokens")
    for key in ("bos", "eos"):
        token_id = _gguf_field(gguf_path, f"tokenizer.ggml.{key}_token_id")
        if token_id is not None:
            setattr(tok, f"{key}_token", tokens[int(token_id)])


def _gguf_config(gguf_path: Path):
    """transformers' GGUF config, with head_dim taken from the file: for qwen3 transformers
    ignores attention.key_length and falls back to 128, which breaks every model whose
    heads are not 128 wide (our cores: 32 to 96)."""
    from gguf import GGUFReader  # optional: only for .gguf bases (not on the GPU machine)
    from transformers import AutoConfig  # transformers and tokenizers take seconds to import: only where used

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
    from transformers import (  # transformers and tokenizers take seconds to import: only where used
        AutoModelForCausalLM,
        AutoTokenizer,
    )

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise UserError(f"GGUF file not found: {gguf_path}")
    key = _gguf_key(gguf_path)
    out = Path(out_dir) if out_dir else cache_root() / "gguf" / f"{gguf_path.stem}-{key}"
    meta = out / IMPORT_META
    if meta.is_file() and read_json_object(meta, "delete the directory to convert again").get("key") == key \
            and (out / "config.json").is_file():
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
        raise UserError(f"transformers cannot load {gguf_path.name}: {error_gist(e)} "
                        "(supported: llama, mistral, qwen2, qwen3 and a few more GGUF architectures)") from None
    sp_bytes = gguf_sentencepiece(gguf_path)
    tok, tok_note = None, "sentencepiece vocabulary rebuilt from GGUF metadata"
    if sp_bytes is None:
        try:
            tok = AutoTokenizer.from_pretrained(gguf_path.parent, **kw)
            tok_note = "converted by transformers from GGUF metadata"
            if _gguf_field(gguf_path, "tokenizer.ggml.model") == "gpt2":
                _byte_level_fixes(tok, gguf_path)
        except (ValueError, KeyError, OSError, TypeError, NotImplementedError) as e:
            tok_note = f"no tokenizer: {error_gist(e)}"
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
            (tmp / "tokenizer.model").write_bytes(sp_bytes)
            verify_tokenizer(save_hf_tokenizer(tmp / "tokenizer.model", tmp), tmp / "tokenizer.model")
            template = _gguf_field(gguf_path, "tokenizer.chat_template")
            if template:  # the file's own template wins over our ChatML default
                cfg = read_json_object(tmp / "tokenizer_config.json", "")
                cfg["chat_template"] = template
                write_json(tmp / "tokenizer_config.json", cfg)
                write_text(tmp / "chat_template.jinja", template)
        write_json(tmp / IMPORT_META, {"source": str(gguf_path.resolve()), "key": key, "dtype": str(dtype),
                                       "tokenizer": tok_note})
    return out
