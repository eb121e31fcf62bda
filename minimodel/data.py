"""Read prepared data sets for training and validation: token shards (written by
data_prep/shards.py) and SFT sets (data_prep/sft.py). This reader owns their on-disk
format: the format names and the manifest checks are here, and the writers import them.

Batches are windows of seq_len+1 tokens. Each epoch visits every window once in
an order fixed by (seed, epoch); global window k goes to rank k % world_size, so
the stream depends only on how many windows were consumed: resume is exact, also
with another world size.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from minimodel.errors import UserError
from minimodel.io import file_sha256, read_json_object, write_bytes

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
    if len(ids) != len(mask) or not len(idx) or idx[0] != 0 or idx[-1] != len(ids) or np.any(np.diff(idx.astype(np.int64)) < 0) \
            or idx.max(initial=0) > len(ids):
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


class Windows(Protocol):
    """What the training loop and evaluation read: a split addressed as numbered windows of
    seq_len+1 tokens. TokenShards (pretraining, CPT, replay) and sft.SFTExamples implement it."""
    data_dir: Path
    manifest: dict
    info: dict                  # the split's entry in the manifest (tokens, bytes, ...)
    n_windows: int

    def window(self, k: int) -> np.ndarray: ...
    def batch(self, window_ids) -> tuple[torch.Tensor, torch.Tensor]: ...
    def check_vocab(self, vocab_size: int, fix: str | None = None) -> None: ...


class Stream(Protocol):
    """An endless training stream whose state is `position` (windows consumed, all ranks together)."""
    position: int

    def next_batch(self, micro_batch: int) -> tuple[torch.Tensor, torch.Tensor]: ...
    def epoch(self) -> float: ...


@dataclass
class StageData:
    """A stage's data: what it trains on, what it validates on, and the tokenizer of both."""
    train: Windows
    val: Windows
    tokenizer: Path                               # the data's sentencepiece model
    stream: Callable[[int], Stream]               # position -> the training stream from there
    extra_val: dict[str, Windows] = field(default_factory=dict)  # logged as val_bpb_<name>
    val_name: str | None = None                   # val's metrics are also logged as val_bpb_<val_name>
    known_sets: tuple[str, ...] = ()              # extra_val sets in a language the base already knows

    def all_sets(self) -> list[Windows]:
        return [self.train, self.val, *self.extra_val.values()]


class TokenShards:
    """All shards of one split, memmapped, addressed as fixed-length windows."""

    def __init__(self, data_dir: str | Path, split: str, seq_len: int, vocab_size: int | None = None):
        self.data_dir = Path(data_dir)
        self.manifest = read_manifest(self.data_dir)
        check_tokenizer(self.data_dir, self.manifest)
        splits = self.manifest["splits"]
        if split not in splits:
            raise UserError(f"{self.data_dir} has no split {split!r}; it has {sorted(splits)}")
        dtype = np.dtype(self.manifest["dtype"]).newbyteorder("<")
        self.split, self.seq_len = split, seq_len
        self.info = splits[split]
        self.shards, windows = [], []
        for entry in self.info["shards"]:
            path = self.data_dir / entry["file"]
            if not path.is_file():
                raise UserError(f"shard missing: {path}")
            if path.stat().st_size != entry["tokens"] * dtype.itemsize:
                raise UserError(f"shard {path} holds {path.stat().st_size} bytes, the manifest says "
                                f"{entry['tokens']} tokens of {dtype.name}: truncated or from another set")
            arr = np.memmap(path, dtype=dtype, mode="r") if entry["tokens"] else np.zeros(0, dtype)
            self.shards.append(arr)
            windows.append(max((len(arr) - 1) // seq_len, 0))
        self.cum_windows = np.concatenate([[0], np.cumsum(windows)]).astype(np.int64)
        self.n_windows = int(self.cum_windows[-1])
        if self.n_windows == 0:
            raise UserError(f"split {split!r} of {self.data_dir} has fewer than seq_len+1={seq_len + 1} "
                            "tokens in every shard; lower data.seq_len or add data")
        if vocab_size is not None:
            self.check_vocab(vocab_size)

    def check_vocab(self, vocab_size: int, fix: str | None = None) -> None:
        """Every token id has a row in a model of `vocab_size` rows; `fix` says what to change when not
        (default: the pretraining model's vocab_size)."""
        if self.manifest["vocab_size"] > vocab_size:
            raise UserError(f"{self.data_dir} uses a tokenizer of {self.manifest['vocab_size']} tokens but the "
                            + (f"model has {vocab_size} rows: {fix}" if fix else
                               f"model has vocab_size={vocab_size}; set model.vocab_size={self.manifest['vocab_size']}"))
        for entry, arr in zip(self.info["shards"], self.shards):
            for start in range(0, len(arr), 1 << 24):  # chunked: shards can be large
                hi = int(arr[start:start + (1 << 24)].max(initial=0))
                if hi >= vocab_size:
                    raise UserError(f"shard {self.data_dir / entry['file']} holds token id {hi} >= model "
                                    f"vocab_size {vocab_size}: the data and the model disagree on the tokenizer")

    def window(self, k: int) -> np.ndarray:
        shard = int(np.searchsorted(self.cum_windows, k, side="right") - 1)
        start = (k - int(self.cum_windows[shard])) * self.seq_len
        return np.asarray(self.shards[shard][start:start + self.seq_len + 1], dtype=np.int64)

    def batch(self, window_ids) -> tuple[torch.Tensor, torch.Tensor]:
        arr = torch.from_numpy(np.stack([self.window(int(k)) for k in window_ids]))
        return arr[:, :-1].contiguous(), arr[:, 1:].contiguous()


class TrainStream:
    """Endless shuffled windows; `position` (windows consumed, all ranks together) is the resume state."""

    def __init__(self, shards: TokenShards, seed: int, rank: int = 0, world_size: int = 1, position: int = 0):
        self.shards, self.seed, self.rank, self.world_size = shards, seed, rank, world_size
        self.position = position
        self._perm_epoch, self._perm = -1, None

    def _order(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.shards.n_windows)
            self._perm_epoch = epoch
        return self._perm

    def next_batch(self, micro_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.shards.n_windows
        globals_ = range(self.position, self.position + micro_batch * self.world_size)
        mine = [g for g in globals_ if g % self.world_size == self.rank]
        ids = [self._order(g // n)[g % n] for g in mine]
        self.position += micro_batch * self.world_size
        return self.shards.batch(ids)

    def epoch(self) -> float:
        return self.position / self.shards.n_windows


def val_window_ids(shards: TokenShards, n_batches: int, micro_batch: int, rank: int, world_size: int) -> list[list[int]]:
    """Fixed, spread-out validation windows, split across ranks; same set every evaluation."""
    total = min(n_batches * micro_batch * world_size, shards.n_windows)
    picks = np.linspace(0, shards.n_windows - 1, total).round().astype(np.int64)
    mine = picks[rank::world_size]
    return [mine[i:i + micro_batch].tolist() for i in range(0, len(mine), micro_batch)]


def token_byte_lengths(tokenizer_path: str | Path, vocab_size: int) -> torch.Tensor:
    """UTF-8 bytes each token id stands for (0 for control tokens), for bits per byte."""
    from minimodel.tokenizer import open_tokenizer

    return open_tokenizer(tokenizer_path).token_bytes(vocab_size)
