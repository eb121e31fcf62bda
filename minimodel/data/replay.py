"""Replay: new-language windows mixed with original-language windows at a fixed ratio.

Global window k (all ranks together) is a replay window when floor((k+1)·r) > floor(k·r),
with r held as an exact fraction: every prefix of the stream holds floor(k·r) replay windows,
so the ratio is exact in every stretch (not only on average) and the stream depends only on
the position, like TrainStream: resume is exact, also with another world size.
Each source is visited in its own shuffled order, epoch after epoch.
With `mark_rows` a batch also says which rows are replay windows (what distillation acts on).
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch

from minimodel.data.windows import TokenShards


class ReplayStream:
    def __init__(self, main: TokenShards, replay: TokenShards, ratio: float, seed: int,
                 rank: int = 0, world_size: int = 1, position: int = 0, mark_rows: bool = False):
        self.sources = (main, replay)
        self.mark_rows = mark_rows
        self.frac = Fraction(ratio).limit_denominator(10_000)
        self.seed, self.rank, self.world_size, self.position = seed, rank, world_size, position
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def replay_count(self, k: int) -> int:
        """Replay windows among global windows [0, k)."""
        return k * self.frac.numerator // self.frac.denominator

    def locate(self, k: int) -> tuple[int, int]:
        """(source 0 main / 1 replay, index of this window in that source's stream)."""
        before = self.replay_count(k)
        if self.replay_count(k + 1) > before:
            return 1, before
        return 0, k - before

    def _window_id(self, source: int, index: int) -> int:
        n = self.sources[source].n_windows
        epoch = index // n
        key = (source, epoch)
        if key not in self._perms:
            if len(self._perms) > 8:
                self._perms.clear()
            self._perms[key] = np.random.default_rng([self.seed, source, epoch]).permutation(n)
        return int(self._perms[key][index % n])

    def next_batch(self, micro_batch: int) -> tuple[torch.Tensor, ...]:
        """(inputs, targets), and with mark_rows a bool per row: drawn from the replay source."""
        globals_ = range(self.position, self.position + micro_batch * self.world_size)
        rows, from_replay = [], []
        for g in globals_:
            if g % self.world_size != self.rank:
                continue
            source, index = self.locate(g)
            rows.append(self.sources[source].window(self._window_id(source, index)))
            from_replay.append(source == 1)
        self.position += micro_batch * self.world_size
        arr = torch.from_numpy(np.stack(rows))
        x, y = arr[:, :-1].contiguous(), arr[:, 1:].contiguous()
        return (x, y, torch.tensor(from_replay)) if self.mark_rows else (x, y)

    def epoch(self) -> float:
        """Epochs of the new-language set consumed."""
        return (self.position - self.replay_count(self.position)) / self.sources[0].n_windows
