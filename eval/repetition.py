"""How repetitive a generated text is: the typical failure of small models is a loop.

Units are whitespace-separated words; for text written without spaces (Chinese, Japanese)
characters. distinct-n = unique n-grams / n-grams (1.0 = nothing repeated);
rep-n = share of n-grams that already occurred earlier in the same text (0.0 = no loop).
"""
from __future__ import annotations


def units(text: str) -> tuple[list[str], str]:
    words = text.split()
    chars = [c for c in text if not c.isspace()]
    # a spaced language has a word boundary every few characters; a long unspaced run is CJK-style
    if words and len(chars) / len(words) <= 12:
        return words, "words"
    return chars, "chars"


def ngrams(seq: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


def distinct(seq: list[str], n: int) -> float | None:
    grams = ngrams(seq, n)
    return len(set(grams)) / len(grams) if grams else None


def repeated_rate(seq: list[str], n: int) -> float | None:
    grams = ngrams(seq, n)
    if not grams:
        return None
    seen, repeats = set(), 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams)


def repetition_score(text: str, n_rep: int = 4) -> dict:
    seq, unit = units(text)
    return {"units": unit, "length": len(seq), "distinct_1": distinct(seq, 1), "distinct_2": distinct(seq, 2),
            f"rep_{n_rep}": repeated_rate(seq, n_rep)}
