"""Which languages a generated replay set holds: by script, and by function words within Latin script.

A base that learned several languages dreams in all of them only if something asks it to; the dream
set's manifest records the share of samples per language (and of letters per script), so a reader sees
whether the replay covers every language learned so far. A deliberately small rule, not a language
identifier: the kit's sequences mix scripts (Hangul, Cyrillic) and a few Latin-script languages, which
a handful of frequent function words tell apart.
"""
from __future__ import annotations

import unicodedata
from collections import Counter

SCRIPT_LANGUAGE = {"hangul": "ko", "cyrillic": "ru", "kana": "ja", "han": "zh", "arabic": "ar", "greek": "el"}
FUNCTION_WORDS = {
    "en": {"the", "and", "of", "to", "that", "is", "in", "he", "it", "was", "for", "with", "his", "they"},
    "de": {"und", "der", "die", "das", "nicht", "ist", "zu", "den", "er", "sie", "mit", "ich", "ein", "von"},
    "fr": {"et", "le", "la", "les", "de", "des", "il", "que", "qui", "dans", "pas", "une", "est", "vous"},
    "es": {"y", "el", "los", "las", "que", "de", "en", "se", "del", "por", "con", "su", "no", "para"},
}


def script_of(ch: str) -> str | None:
    """The script of one letter (None for digits, punctuation, spaces)."""
    if not ch.isalpha():
        return None
    name = unicodedata.name(ch, "")
    for prefix, script in (("HANGUL", "hangul"), ("CYRILLIC", "cyrillic"), ("HIRAGANA", "kana"),
                           ("KATAKANA", "kana"), ("CJK", "han"), ("ARABIC", "arabic"), ("GREEK", "greek"),
                           ("LATIN", "latin")):
        if name.startswith(prefix):
            return script
    return "other"


def script_counts(text: str) -> Counter:
    return Counter(s for s in map(script_of, text) if s)


def language_of(text: str) -> str:
    """The language a sample is mostly written in: its dominant script, and for Latin script the language
    whose function words it uses most ("latin" when none is used; "none" for a sample without letters)."""
    scripts = script_counts(text)
    if not scripts:
        return "none"
    if scripts["kana"] and scripts["kana"] >= 0.1 * (scripts["kana"] + scripts["han"]):
        scripts["kana"] += scripts.pop("han", 0)  # Japanese mixes kana with kanji
    script = scripts.most_common(1)[0][0]
    if script != "latin":
        return SCRIPT_LANGUAGE.get(script, script)
    words = Counter(w.strip(".,;:!?\"'()").lower() for w in text.split())
    hits = {lang: sum(words[w] for w in ws) for lang, ws in FUNCTION_WORDS.items()}
    best = max(hits, key=hits.get)
    return best if hits[best] else "latin"


def language_mix(texts: list[str]) -> dict:
    """{"samples": {language: share of samples}, "letters": {script: share of letters}}, shares rounded."""
    by_sample = Counter(language_of(t) for t in texts)
    letters = Counter()
    for t in texts:
        letters.update(script_counts(t))
    n, total = max(len(texts), 1), max(sum(letters.values()), 1)
    return {"samples": {k: round(v / n, 4) for k, v in by_sample.most_common()},
            "letters": {k: round(v / total, 4) for k, v in letters.most_common()}}
