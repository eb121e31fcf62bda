"""Read prepared token shards (see data_prep/shards.py) for training and validation.

Batches are windows of seq_len+1 tokens. Each epoch visits every window once in
an order fixed by (seed, epoch); global window k goes to rank k % world_size, so
the stream depends only on how many windows were consumed: resume is exact, also
with another world size.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from data_prep.shards import manifest_problem
from data_prep.tokenizer import file_sha256
from minimodel.errors import UserError
from minimodel.jsonfile import read_json_object


def read_manifest(data_dir: str | Path) -> dict:
    data_dir = Path(data_dir)
    path = data_dir / "manifest.json"
    if not data_dir.is_dir():
        raise UserError(f"data path not found: {data_dir} (prepare it with python -m data_prep ...)")
    if not path.is_file():
        raise UserError(f"{data_dir} has no manifest.json: not a prepared set, or its preparation did not finish")
    manifest = read_json_object(path, "prepare the data again")
    problem = manifest_problem(manifest)
    if problem:
        raise UserError(f"{path} {problem}; prepare the data again with data_prep")
    return manifest


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
        if vocab_size is not None and self.manifest["vocab_size"] > vocab_size:
            raise UserError(f"{self.data_dir} uses a tokenizer of {self.manifest['vocab_size']} tokens but the "
                            f"model has vocab_size={vocab_size}; set model.vocab_size={self.manifest['vocab_size']}")
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
            self._check_ids(vocab_size)

    def _check_ids(self, vocab_size: int) -> None:
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
    from data_prep.tokenizer import load_tokenizer

    sp = load_tokenizer(tokenizer_path)
    lengths = torch.zeros(vocab_size, dtype=torch.float64)
    if sp.get_piece_size() > vocab_size:
        raise UserError(f"tokenizer {tokenizer_path} has {sp.get_piece_size()} pieces but the model has "
                        f"vocab_size={vocab_size}: they do not belong together")
    try:
        for i in range(sp.get_piece_size()):
            if sp.is_control(i) or sp.is_unknown(i):
                continue
            if sp.is_byte(i):
                lengths[i] = 1
                continue
            lengths[i] = len(sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
    except UnicodeDecodeError:  # sentencepiece parsed the file, but its pieces are not text
        raise UserError(f"{tokenizer_path} holds pieces that are not UTF-8: a damaged tokenizer model") from None
    return lengths
