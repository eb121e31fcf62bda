"""What a stage hands the training loop: its sets, the tokenizer opened once, and the training
stream (the new data alone, or mixed with a replay set at an exact ratio)."""
from __future__ import annotations

from dataclasses import dataclass, field

from minimodel.data.replay import ReplayStream
from minimodel.data.windows import Stream, TrainStream, Windows
from minimodel.tokenizers.tokenizer import Tokenizer, open_tokenizer


@dataclass
class StageData:
    """A stage's data: what it trains on, what it validates on, and the tokenizer of both."""
    train: Windows
    val: Windows
    tokenizer: Tokenizer                          # the data's, opened once for the whole run
    extra_val: dict[str, Windows] = field(default_factory=dict)  # logged as val_bpb_<name>
    val_name: str | None = None                   # val's metrics are also logged as val_bpb_<val_name>
    known_sets: tuple[str, ...] = ()              # extra_val sets in a language the base already knows
    replay: Windows | None = None                 # mixed into training at replay_ratio (CPT)
    replay_ratio: float = 0.0
    mark_replay_rows: bool = False                # batches say which rows are replay (distillation)

    def all_sets(self) -> list[Windows]:
        return [self.train, self.val, *self.extra_val.values()]

    def stream(self, position: int, seed: int, rank: int, world_size: int) -> Stream:
        """The training stream from `position` (windows consumed by all ranks together)."""
        if self.replay is not None and self.replay_ratio > 0:
            return ReplayStream(self.train, self.replay, self.replay_ratio, seed, rank, world_size, position,
                                mark_rows=self.mark_replay_rows)
        return TrainStream(self.train, seed, rank, world_size, position)


def tokenizer_of(windows: Windows) -> Tokenizer:
    """The tokenizer a set was made with (the file beside its shards), opened."""
    return open_tokenizer(windows.data_dir / windows.manifest["tokenizer"]["file"])
