"""What an adapted model learned and forgot, as numbers and one verdict line per language.

* bits-per-byte change against the base, per held-out set: absolute (adapted - base) and
  relative ((adapted - base) / base); lower bpb is better, so a positive change is forgetting;
* benchmark deltas (adapted - base, per task) with a paired bootstrap confidence interval
  over the items both models answered;
* backward transfer across a chain of stages (Lopez-Paz & Ranzato 2017, on bpb): for every
  stage but the last, the final model's bpb on that stage's language minus the bpb right
  after that stage; averaged. Positive = the later stages made earlier learning worse.
"""
from __future__ import annotations

import random

# relative bpb change -> words; the bands are deliberately coarse (bpb noise at demo size is ~0.5%)
VERDICTS = ((-0.05, "learned"), (-0.01, "learned a little"), (0.01, "unchanged"),
            (0.05, "forgot a little"), (0.20, "forgot"), (float("inf"), "forgot a lot"))
LANGUAGES = {"en": "English", "ko": "Korean", "de": "German", "es": "Spanish", "fr": "French",
             "ru": "Russian", "zh": "Chinese", "ja": "Japanese"}


def verdict_bands() -> str:
    """The verdict thresholds in words, from VERDICTS (what the report states beside its verdicts)."""
    parts, low = [], None
    for bound, word in VERDICTS:
        if low is None:
            span = f"<= {bound * 100:+g}%"
        elif bound == float("inf"):
            span = f"> {low * 100:+g}%"
        else:
            span = f"{low * 100:+g}% to {bound * 100:+g}%"
        parts.append(f"{word} {span}")
        low = bound
    return "; ".join(parts)


def language_of(set_name: str) -> str:
    return set_name.split("_", 1)[0]


def bpb_change(base: float, adapted: float) -> dict:
    return {"bpb_base": base, "bpb_adapted": adapted, "absolute": adapted - base, "relative": (adapted - base) / base}


def verdict_word(relative: float) -> str:
    return next(word for bound, word in VERDICTS if relative <= bound)


def verdict(set_name: str, relative: float) -> str:
    """'English +1.3% bpb: forgot a little' (sets other than *_heldout keep their name)."""
    lang = language_of(set_name)
    label = LANGUAGES.get(lang, lang)
    rest = set_name.split("_", 1)[1] if "_" in set_name else ""
    if rest and rest != "heldout":
        label = f"{label} ({rest})"
    return f"{label} {relative * 100:+.1f}% bpb: {verdict_word(relative)}"


def forgetting_rows(base_name: str, adapted_name: str, base_bpb: dict, adapted_bpb: dict) -> list[dict]:
    """One row per held-out set both models were scored on."""
    return [{"base": base_name, "adapted": adapted_name, "set": s, "language": language_of(s),
             **bpb_change(base_bpb[s], adapted_bpb[s]),
             "verdict": verdict(s, (adapted_bpb[s] - base_bpb[s]) / base_bpb[s])}
            for s in sorted(set(base_bpb) & set(adapted_bpb))]


def bootstrap_delta(base: list[float], adapted: list[float], n_boot: int = 2000, ci: float = 0.95,
                    seed: int = 0) -> dict:
    """mean(adapted) - mean(base) over paired items, with a percentile bootstrap interval."""
    if len(base) != len(adapted) or not base:
        raise ValueError(f"paired scores needed: {len(base)} base vs {len(adapted)} adapted items")
    n = len(base)
    diffs = [a - b for a, b in zip(adapted, base)]
    rng = random.Random(seed)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    lo = means[int((1 - ci) / 2 * n_boot)]
    hi = means[min(int((1 + ci) / 2 * n_boot), n_boot - 1)]
    return {"delta": sum(diffs) / n, "ci_low": lo, "ci_high": hi, "ci": ci, "items": n,
            "base_mean": sum(base) / n, "adapted_mean": sum(adapted) / n}


def benchmark_deltas(base_name: str, adapted_name: str, base_items: dict, adapted_items: dict,
                     **boot) -> list[dict]:
    """base_items/adapted_items: {task: {metric: {doc_id: score}}} -> one row per task and metric."""
    rows = []
    for task in sorted(set(base_items) & set(adapted_items)):
        for metric in sorted(set(base_items[task]) & set(adapted_items[task])):
            b, a = base_items[task][metric], adapted_items[task][metric]
            ids = sorted(set(b) & set(a), key=str)
            if ids:
                rows.append({"base": base_name, "adapted": adapted_name, "task": task, "metric": metric,
                             **bootstrap_delta([b[i] for i in ids], [a[i] for i in ids], **boot)})
    return rows


def backward_transfer(chain: list[dict]) -> dict | None:
    """chain: stages in order, each {"name", "language" (what it trained on), "bpb": {set: value}}.

    Returns {"bwt", "terms": [...]} over the stages whose language has a held-out set in both
    that stage and the last; None when there is no such stage.
    """
    if len(chain) < 2:
        return None
    last, terms = chain[-1], []
    for stage in chain[:-1]:
        for s in sorted(stage["bpb"]):
            if language_of(s) == stage.get("language") and s in last["bpb"]:
                terms.append({"stage": stage["name"], "set": s, "after_stage": stage["bpb"][s],
                              "final": last["bpb"][s], "change": last["bpb"][s] - stage["bpb"][s]})
    if not terms:
        return None
    return {"bwt": sum(t["change"] for t in terms) / len(terms), "final": last["name"], "terms": terms}
