"""Prepared sets read as numbered windows of seq_len+1 tokens: `TokenShards` (pretraining, CPT,
replay), `SFTExamples` (one chat example per row, loss on the replies), and the training stream.

Each epoch visits every window once in an order fixed by (seed, epoch); global window k goes to
rank k % world_size, so the stream depends only on how many windows were consumed: resume is
exact, also with another world size.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from minimodel.common.errors import UserError
from minimodel.data.format import check_tokenizer, load_sft_split, read_manifest
from minimodel.tokenizers.tokenizer import Tokenizer, open_tokenizer


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
            raise UserError(self._too_small())
        if vocab_size is not None:
            self.check_vocab(vocab_size)

    def _too_small(self) -> str:
        """Why no window fits, with the fix that fits the cause (an empty split cannot be cured by seq_len)."""
        where, tokens, window = f"split {self.split!r} of {self.data_dir}", self.info["tokens"], self.seq_len + 1
        redo = ("prepare the set again with more text in it: more documents"
                + (", a larger --val-fraction" if self.split == "val" else "")
                + ", or for a .txt source --txt-unit line|paragraph")
        if tokens == 0:
            return f"{where} is empty ({self.info.get('docs', 0)} documents, 0 tokens); {redo}"
        if tokens < window:
            return (f"{where} holds {tokens} tokens, fewer than one window of data.seq_len+1={window}; "
                    f"set data.seq_len={tokens - 1} or lower, or {redo}")
        return (f"{where} has fewer than data.seq_len+1={window} tokens in every shard; "
                "lower data.seq_len or prepare it again with larger shards")

    def check_vocab(self, vocab_size: int, fix: str | None = None) -> None:
        """Every token id has a row in a model of `vocab_size` rows; `fix` says what to change when not
        (default: the pretraining model's vocab_size)."""
        if self.manifest["vocab_size"] > vocab_size:
            raise UserError(f"{self.data_dir} uses a tokenizer of {self.manifest['vocab_size']} tokens but the "
                            + (f"model has {vocab_size} rows: {fix}" if fix else f"model has vocab_size={vocab_size}; "
                               f"set model.vocab_size={self.manifest['vocab_size']}"))
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


def val_window_ids(shards: TokenShards, n_batches: int, micro_batch: int, rank: int,
                   world_size: int) -> list[list[int]]:
    """Fixed, spread-out validation windows, split across ranks; same set every evaluation."""
    total = min(n_batches * micro_batch * world_size, shards.n_windows)
    picks = np.linspace(0, shards.n_windows - 1, total).round().astype(np.int64)
    mine = picks[rank::world_size]
    return [mine[i:i + micro_batch].tolist() for i in range(0, len(mine), micro_batch)]


def token_byte_lengths(tokenizer: Tokenizer | str | Path, vocab_size: int) -> torch.Tensor:
    """UTF-8 bytes each token id stands for (0 for control tokens), for bits per byte."""
    return open_tokenizer(tokenizer).token_bytes(vocab_size)


IGNORE = -100


PAD_TO = 64  # an SFT batch's width is a multiple of this (at most seq_len)


class SFTExamples:
    """One example per row, right-padded to seq_len+1 tokens (longer ones truncated). Targets are
    the next tokens where the mask marks assistant text, -100 elsewhere (prompt, padding).
    A data.Windows like TokenShards, so TrainStream and evaluate take it."""

    def __init__(self, set_dir: str | Path, split: str, seq_len: int):
        self.data_dir = Path(set_dir)
        # the manifest's structure, the split's files and their agreement are checked by load_sft_split
        self.manifest, self.ids, self.mask, self.index = load_sft_split(self.data_dir, split)
        check_tokenizer(self.data_dir, self.manifest)
        self.info = self.manifest["splits"][split]
        self.seq_len, self.pad_id = seq_len, self.manifest["tokenizer"].get("pad_id", 0)
        self.n_windows = len(self.index) - 1
        if self.n_windows <= 0:
            raise UserError(f"split {split!r} of {self.data_dir} holds no examples")
        self.truncated = int(np.sum(np.diff(self.index) > seq_len + 1))

    def check_vocab(self, vocab_size: int, fix: str | None = None) -> None:
        top = int(self.ids.max(initial=0))
        if top >= vocab_size:
            raise UserError(f"{self.data_dir} holds token id {top} >= the model's {vocab_size} rows: "
                            "the SFT data and the base disagree on the tokenizer")

    def example(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.index[k], min(self.index[k + 1], self.index[k] + self.seq_len + 1)
        ids = np.full(self.seq_len + 1, self.pad_id, dtype=np.int64)
        mask = np.zeros(self.seq_len + 1, dtype=np.int64)
        ids[:b - a], mask[:b - a] = self.ids[a:b], self.mask[a:b]
        return ids, mask

    def window(self, k: int) -> np.ndarray:
        return self.example(k)[0]

    def batch(self, window_ids) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of these examples, padded only as far as the longest one needs (rounded
        up to a multiple of PAD_TO, so a compiled model sees few shapes). Right padding is never a
        target and, under causal attention, never seen by a real token, so the loss is that of rows
        padded to seq_len; the demo's instructions average ~90 of 513 tokens, and padding to seq_len
        made SFT cost as much as pretraining the core (profiled: all of its time is forward/backward)."""
        window_ids = [int(k) for k in window_ids]
        ids, mask = zip(*(self.example(k) for k in window_ids))
        longest = max(min(self.index[k + 1] - self.index[k], self.seq_len + 1) for k in window_ids)
        width = min(self.seq_len, -(-max(int(longest) - 1, 1) // PAD_TO) * PAD_TO) + 1
        ids, mask = torch.from_numpy(np.stack(ids)[:, :width]), torch.from_numpy(np.stack(mask)[:, :width])
        y = ids[:, 1:].masked_fill(mask[:, 1:] == 0, IGNORE)
        return ids[:, :-1].contiguous(), y.contiguous()
