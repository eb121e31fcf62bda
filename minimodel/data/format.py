"""The on-disk format of prepared data sets: token shards (written by data_prep/shards.py) and SFT
sets (data_prep/sft.py). This reader owns it: the format names, the manifest and its checks are
here, and the writers import them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from minimodel.common.errors import UserError
from minimodel.common.io import file_sha256, read_json_object, write_bytes

SHARDS_FORMAT = "minimodel-shards-v1"


SFT_FORMAT = "minimodel-sft-v1"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size < 65536 else np.dtype("<u4")


def write_split(out_dir: Path, split: str, tokens: np.ndarray, dtype: np.dtype,
                shard_tokens: int = 1 << 24) -> list[dict]:
    """`tokens` as out_dir/<split>/shard_NNNNN.bin files (each written atomically); their manifest entries."""
    shards = []
    for i, start in enumerate(range(0, max(len(tokens), 1), shard_tokens)):
        chunk = tokens[start:start + shard_tokens].astype(dtype)
        rel = f"{split}/shard_{i:05d}.bin"
        write_bytes(out_dir / rel, chunk.tobytes())
        shards.append({"file": rel, "tokens": int(len(chunk))})
    return shards


def build_manifest(tok, splits: dict, sources: list, dtype: np.dtype, command: str) -> dict:
    """A token-shard set's manifest.json (`tok` a tokenizer.Tokenizer; `command` what made the set)."""
    return {
        "format": SHARDS_FORMAT,
        "dtype": dtype.name,
        "vocab_size": tok.vocab_size,
        "tokenizer": {"kind": tok.kind, "file": tok.file.name, "sha256": tok.sha256,
                      "bos_id": tok.bos_id, "eos_id": tok.eos_id, "pad_id": tok.pad_id},
        "eos_id": tok.eos_id,
        "splits": splits,
        "sources": sources,
        "command": command,
    }


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_name(v) -> bool:
    """A file name relative to the set directory (no absolute paths, no way out of it)."""
    return isinstance(v, str) and bool(v) and not v.startswith("/") and ".." not in Path(v).parts


def _header_problem(m, fmt: str, hint: str = "") -> str | None:
    """What both kinds of manifest need first: a JSON object of format `fmt` with a token dtype."""
    if not isinstance(m, dict):
        return f"is a JSON {type(m).__name__}, not an object"
    if m.get("format") != fmt:
        return f"has format {m.get('format')!r}, expected {fmt!r}{hint}"
    if m.get("dtype") not in ("uint16", "uint32"):
        return f"has dtype {m.get('dtype')!r}, expected 'uint16' or 'uint32'"
    return None


def manifest_problem(m) -> str | None:
    """What makes a manifest unreadable for the loaders (wrong types, missing keys), or None.
    Checked once here so the readers can index it without a KeyError/TypeError per field."""
    if problem := _header_problem(m, SHARDS_FORMAT):
        return problem
    if not _is_count(m.get("vocab_size")) or not m["vocab_size"]:
        return f"has vocab_size {m.get('vocab_size')!r}, expected a positive integer"
    if not _is_count(m.get("eos_id")):
        return f"has eos_id {m.get('eos_id')!r}, expected a token id"
    tok = m.get("tokenizer")
    if not isinstance(tok, dict) or not _is_name(tok.get("file")) or not isinstance(tok.get("sha256"), str):
        return "lacks tokenizer.file / tokenizer.sha256"
    splits = m.get("splits")
    if not isinstance(splits, dict) or not splits:
        return "lacks its splits"
    for name, split in splits.items():
        shards = split.get("shards") if isinstance(split, dict) else None
        if not isinstance(shards, list) or not all(
                isinstance(s, dict) and _is_name(s.get("file")) and _is_count(s.get("tokens")) for s in shards):
            return f"split {name!r} lacks a list of shards with file and tokens"
        for key in ("tokens", "bytes", "docs"):
            if key in split and not _is_count(split[key]):
                return f"split {name!r} has {key} {split[key]!r}, expected a count"
    return None


def sft_manifest_problem(m) -> str | None:
    """What makes an SFT manifest unreadable for the loaders (wrong types, missing keys), or None."""
    if problem := _header_problem(m, SFT_FORMAT, " (a set from python -m data_prep.sft)"):
        return problem
    tok = m.get("tokenizer")
    if not isinstance(tok, dict) or not _is_name(tok.get("file")) or not isinstance(tok.get("sha256"), str) \
            or not _is_count(tok.get("pad_id", 0)):
        return "lacks tokenizer.file / tokenizer.sha256 / tokenizer.pad_id"
    splits = m.get("splits")
    if not isinstance(splits, dict) or not splits:
        return "lacks its splits"
    for name, s in splits.items():
        if not isinstance(s, dict) or not all(_is_name(s.get(k)) for k in ("tokens_file", "mask_file", "index_file")):
            return f"split {name!r} lacks tokens_file / mask_file / index_file"
    return None


def _checked_manifest(path: Path, problem_of, fix: str, tool: str) -> dict:
    """The manifest in `path` when `problem_of` finds nothing wrong with it; otherwise a UserError
    naming the file, the problem and the fix (`fix`, with `tool`: what prepares such a set)."""
    m = read_json_object(path, fix)
    problem = problem_of(m)
    if problem:
        raise UserError(f"{path} {problem}; {fix} with {tool}")
    return m


def load_sft_split(set_dir: str | Path, split: str) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """(manifest, token ids, loss mask, example offsets) of one split, checked for consistency."""
    set_dir = Path(set_dir)
    path = set_dir / "manifest.json"
    if not path.is_file():
        raise UserError(f"{set_dir} has no manifest.json: prepare SFT data with python -m data_prep.sft")
    m = _checked_manifest(path, sft_manifest_problem, "prepare the SFT set again", "python -m data_prep.sft")
    if split not in m["splits"]:
        raise UserError(f"{set_dir} has no split {split!r}; it has {sorted(m['splits'])}")
    s = m["splits"][split]
    for key in ("tokens_file", "mask_file", "index_file"):
        if not (set_dir / s[key]).is_file():
            raise UserError(f"{set_dir / s[key]} is missing: truncated set, prepare it again")
    ids = np.fromfile(set_dir / s["tokens_file"], dtype=np.dtype(m["dtype"]).newbyteorder("<"))
    mask = np.fromfile(set_dir / s["mask_file"], dtype=np.uint8)
    idx = np.fromfile(set_dir / s["index_file"], dtype="<u8")
    # offsets start at 0, never decrease and end at the token count; anything else is a damaged file
    if len(ids) != len(mask) or not len(idx) or idx[0] != 0 or idx[-1] != len(ids) \
            or np.any(np.diff(idx.astype(np.int64)) < 0) or idx.max(initial=0) > len(ids):
        raise UserError(f"{set_dir}/{split}: tokens, mask and index disagree: truncated set, prepare it again")
    return m, ids, mask, idx.astype(np.int64)


def read_manifest(data_dir: str | Path) -> dict:
    data_dir = Path(data_dir)
    path = data_dir / "manifest.json"
    if not data_dir.is_dir():
        raise UserError(f"data path not found: {data_dir} (prepare it with python -m data_prep ...)")
    if not path.is_file():
        raise UserError(f"{data_dir} has no manifest.json: not a prepared set, or its preparation did not finish")
    return _checked_manifest(path, manifest_problem, "prepare the data again", "data_prep")


def check_tokenizer(data_dir: Path, manifest: dict) -> None:
    """The shards must come from the tokenizer that sits beside them."""
    tok = data_dir / manifest["tokenizer"]["file"]
    if not tok.is_file():
        raise UserError(f"{data_dir}: tokenizer file {tok.name} is missing")
    digest = file_sha256(tok)
    if digest != manifest["tokenizer"]["sha256"]:
        raise UserError(f"{data_dir}: shards were made with another tokenizer than {tok.name} "
                        f"(sha256 {manifest['tokenizer']['sha256'][:12]} vs {digest[:12]}); "
                        "re-tokenise the data with this tokenizer")
