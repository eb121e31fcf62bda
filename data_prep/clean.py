"""Text cleaning: NFC, control characters out, length filters, exact de-duplication."""
from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Iterable, Iterator

# C0/C1 controls except tab and newline, DEL, the BOM, lone surrogates (from bad decodes).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff\ud800-\udfff]")


def clean_text(text: str) -> str:
    text = text.replace("\r\n", "\n")
    text = unicodedata.normalize("NFC", text)
    return _CONTROL.sub("", text).strip()


@dataclass
class CleanStats:
    seen: int = 0
    kept: int = 0
    too_short: int = 0
    too_long: int = 0
    duplicate: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Cleaner:
    """Stateful filter: remembers hashes so duplicates across calls are dropped too."""
    min_chars: int = 1
    max_chars: int | None = None
    dedup: bool = True
    stats: CleanStats = field(default_factory=CleanStats)
    seen: set = field(default_factory=set, repr=False)  # share one set across cleaners to dedup across sources

    def __call__(self, text: str) -> str | None:
        """The cleaned text, or None when the document is filtered out."""
        self.stats.seen += 1
        text = clean_text(text)
        if len(text) < max(self.min_chars, 1):
            self.stats.too_short += 1
            return None
        if self.max_chars is not None and len(text) > self.max_chars:
            self.stats.too_long += 1
            return None
        if self.dedup:
            h = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
            if h in self.seen:
                self.stats.duplicate += 1
                return None
            self.seen.add(h)
        self.stats.kept += 1
        return text


def clean_docs(docs: Iterable, cleaner: Cleaner) -> Iterator:
    """Clean `Doc`s (anything with .text and dataclasses.replace support), dropping filtered ones."""
    from dataclasses import replace
    for d in docs:
        t = cleaner(d.text)
        if t is not None:
            yield replace(d, text=t)
