"""Deterministic held-out splits by document unit.

A unit's split depends only on its key and the seed, never on the language or the order
of documents, so parallel corpora keyed by the same unit (a Bible chapter "1.3") hold
out the same content in every language.
"""
from __future__ import annotations

import hashlib
from typing import Iterable

from data_prep.sources import Doc


def unit_score(key: str, seed: int = 0) -> float:
    """A uniform number in [0, 1) fixed by (seed, key)."""
    h = hashlib.sha256(f"{seed}\0{key}".encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def is_heldout(key: str, val_fraction: float, seed: int = 0) -> bool:
    return unit_score(key, seed) < val_fraction


def split_docs(docs: Iterable[Doc], val_fraction: float, seed: int = 0,
               val_units: Iterable[str] | None = None) -> dict[str, list[Doc]]:
    """{"train": [...], "val": [...]}. With `val_units` those keys are held out, else a hashed fraction.

    When hashing picks no unit but there are at least two, the lowest-scoring unit is held
    out so a small corpus still gets a val split.
    """
    docs = list(docs)
    if val_units is not None:
        held = set(val_units)
    else:
        keys = {d.key for d in docs}
        held = {k for k in keys if is_heldout(k, val_fraction, seed)}
        if not held and val_fraction > 0 and len(keys) >= 2:
            held = {min(keys, key=lambda k: unit_score(k, seed))}
        if held == keys and len(keys) >= 2:  # keep something to train on
            held.discard(max(keys, key=lambda k: unit_score(k, seed)))
    out: dict[str, list[Doc]] = {"train": [], "val": []}
    for d in docs:
        out["val" if d.key in held else "train"].append(d)
    return out


def heldout_units(keys: Iterable[str], val_fraction: float, seed: int = 0) -> list[str]:
    """The held-out keys among `keys`, in input order (for aligned corpora: pass the shared keys)."""
    return [k for k in keys if is_heldout(k, val_fraction, seed)]
