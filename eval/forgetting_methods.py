"""The forgetting-methods comparison: CPT arms that differ only in how they fight forgetting (no replay,
real replay, generated replay, generated replay + distillation, at 5% and 25%), each run with several
seeds at the same new-language token budget, against their common base, on content-matched held-out
text in both languages.

    python -m eval.forgetting_methods runs/forgetting_methods

Reads OUT/base_bpb.json (eval.bpb of the base) and OUT/arms/<arm>_s<seed>/ (a CPT run directory with
eval/bpb.json; its config.toml says source, ratio, distill and seed), plus OUT/timing.jsonl (the wall
time of each run, written by recipes/forgetting_methods.sh). Writes OUT/summary.json, OUT/methods.md
(the table) and OUT/methods.png (each language's change against the base, per arm: every seed and the mean),
OUT/report.md (both). The summary's `targets` block checks the issue's three targets.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from eval.forgetting import bpb_change, language_of
from eval.report import png_bytes
from minimodel.common.errors import UserError, cli_entry
from minimodel.common.io import read_json_object, read_jsonl_objects, write_bytes, write_json, write_text
from minimodel.config import read_run_config


def bpb_by_language(bpb_json: Path) -> dict[str, float]:
    """{"en": ..., "ko": ...} from an eval.bpb result: per language its held-out set (<lang>_heldout),
    else its first set by name."""
    sets = read_json_object(bpb_json, "run python -m eval.bpb again").get("sets", {})
    out = {}
    for name in sorted(sets, key=lambda n: (not n.endswith("_heldout"), n)):
        out.setdefault(language_of(name), float(sets[name]["bpb"]))
    return out


def arm_of(cfg) -> str:
    rc = cfg.replay
    if rc.ratio == 0:
        return "none"
    name = f"{'generated' if rc.source == 'generated' else 'data'} {rc.ratio:.0%}"
    return name + (f" + distill {rc.distill:g}" if rc.distill else "")


def collect(out: Path) -> dict:
    base_file = out / "base_bpb.json"
    if not base_file.is_file():
        raise UserError(f"{base_file} is missing: run python -m eval.bpb BASE --out {base_file} first "
                        "(recipes/forgetting_methods.sh does)")
    base = bpb_by_language(base_file)
    timing = out / "timing.jsonl"
    walls = {r["run"]: r["wall_s"] for _, r in read_jsonl_objects(timing, "written by recipes/forgetting_methods.sh")} \
        if timing.is_file() else {}
    runs = sorted(p for p in (out / "arms").glob("*") if (p / "eval" / "bpb.json").is_file())
    if not runs:
        raise UserError(f"no evaluated arm under {out / 'arms'}: run recipes/forgetting_methods.sh")
    arms: dict[str, dict] = {}
    for run in runs:
        record = read_run_config(run)
        cfg = record.config
        bpb = bpb_by_language(run / "eval" / "bpb.json")
        a = arms.setdefault(arm_of(cfg), {
            "source": "none" if cfg.replay.ratio == 0 else cfg.replay.source, "ratio": cfg.replay.ratio,
            "distill": cfg.replay.distill, "seeds": [], "en_bpb_by_seed": [], "ko_bpb_by_seed": [],
            "dream_seconds_by_seed": [], "wall_s_by_seed": []})
        a["seeds"].append(cfg.train.seed)
        a["en_bpb_by_seed"].append(bpb["en"])
        a["ko_bpb_by_seed"].append(bpb["ko"])
        a["dream_seconds_by_seed"].append(record.run.dream_seconds)
        a["wall_s_by_seed"].append(walls.get(run.name))
    for a in arms.values():
        for lang in ("en", "ko"):
            values = a[f"{lang}_bpb_by_seed"]
            a[f"{lang}_bpb"] = statistics.fmean(values)
            a[f"{lang}_relative"] = bpb_change(base[lang], a[f"{lang}_bpb"])["relative"]
            a[f"{lang}_spread"] = (max(values) - min(values)) / 2  # half the range over seeds
        walls_known = [w for w in a["wall_s_by_seed"] if w]
        a["generation_share"] = (statistics.fmean(a["dream_seconds_by_seed"]) / statistics.fmean(walls_known)
                                 if a["source"] == "generated" and walls_known else None)
    return {"base": {"en_bpb": base["en"], "ko_bpb": base["ko"]}, "arms": arms, "targets": targets(arms)}


def targets(arms: dict) -> dict:
    """The issue's targets, as measured (None where an arm is missing)."""
    def get(name):
        return arms.get(name)

    out = {}
    data5, gen5, dist5 = get("data 5%"), get("generated 5%"), next(
        (a for n, a in arms.items() if n.startswith("generated 5% + distill")), None)
    if data5 and gen5:
        gap = (gen5["en_relative"] - data5["en_relative"]) * 100
        ko = gen5["ko_bpb"] / data5["ko_bpb"] - 1
        out["generated_vs_real_en_gap_pp"] = {"value": gap, "target": "<= 1.5", "met": gap <= 1.5}
        out["generated_vs_real_ko_bpb"] = {"value": ko, "target": "|x| <= 2%", "met": abs(ko) <= 0.02}
    if gen5 and dist5:
        gain = (gen5["en_relative"] - dist5["en_relative"]) * 100
        out["distill_en_gain_pp"] = {"value": gain, "target": "> 0", "met": gain > 0}
    if gen5 and gen5["generation_share"] is not None:  # the demo's replay ratio; 25% samples 5x the tokens
        share = gen5["generation_share"]
        out["generation_share_of_wall_time_5pct"] = {"value": share, "target": "< 10%", "met": share < 0.10}
    return out


def table(summary: dict) -> str:
    b = summary["base"]
    lines = [f"Base: English {b['en_bpb']:.4f} bpb, Korean {b['ko_bpb']:.4f} bpb (content-matched held-out "
             "text). Each arm: the mean over seeds, +- half the range; change relative to the base.", "",
             "| arm | source | ratio | distill | seeds | English bpb | English change | Korean bpb | Korean change |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in arm_order(summary):
        a = summary["arms"][name]
        lines.append(f"| {name} | {a['source']} | {a['ratio']:.2f} | {a['distill']:g} | {len(a['seeds'])} | "
                     f"{a['en_bpb']:.4f} +- {a['en_spread']:.4f} | {a['en_relative']:+.1%} | "
                     f"{a['ko_bpb']:.4f} +- {a['ko_spread']:.4f} | {a['ko_relative']:+.1%} |")
    if summary["targets"]:
        lines += ["", "| target | measured | aim | met |", "|---|---:|---|---|"]
        for k, t in summary["targets"].items():
            value = f"{t['value']:.1%}" if "share" in k or k.endswith("ko_bpb") else f"{t['value']:+.2f}"
            lines.append(f"| {k} | {value} | {t['target']} | {'yes' if t['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def arm_order(summary: dict) -> list[str]:
    """Arms as the table lists them: by replay ratio, then source, then distillation weight."""
    return sorted(summary["arms"], key=lambda n: (summary["arms"][n]["ratio"], summary["arms"][n]["source"],
                                                   summary["arms"][n]["distill"]))


def seed_changes(summary: dict, name: str, lang: str) -> list[float]:
    """Each seed's bits-per-byte change against the base, in percent."""
    base = summary["base"][f"{lang}_bpb"]
    return [(v / base - 1) * 100 for v in summary["arms"][name][f"{lang}_bpb_by_seed"]]


def figure(summary: dict):
    """One panel per language, one row per arm: every seed as a dot, the mean as a bar with its value.
    Plain linear axes that include 0 (the base), so a difference shows at its true size next to the
    effect of replay; seed noise of a few thousandths of a bit stays invisible instead of filling an
    axis of its own (the earlier plot's symlog and 0.0025-wide axis made it look like a result)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = arm_order(summary)
    fig, axes = plt.subplots(1, 2, figsize=(10, 1.2 + 0.45 * len(names)), sharey=True)
    labels = {"en": "English bpb vs the base, % (lower: forgot less)",
              "ko": "Korean bpb vs the base, % (lower: learned more)"}
    for ax, lang in zip(axes, ("en", "ko")):
        everything = [0.0]
        for row, name in enumerate(names):
            y, seeds = len(names) - 1 - row, seed_changes(summary, name, lang)
            mean = (summary["arms"][name][f"{lang}_bpb"] / summary["base"][f"{lang}_bpb"] - 1) * 100
            everything += seeds
            ax.plot([min(seeds), max(seeds)], [y, y], color="C0", lw=1, alpha=0.6)
            ax.scatter(seeds, [y] * len(seeds), s=22, facecolors="none", edgecolors="C0", zorder=3,
                       label="one seed" if row == 0 else None)
            ax.scatter([mean], [y], marker="|", s=260, color="black", zorder=4, label="mean" if row == 0 else None)
            ax.annotate(f"{mean:+.1f}%", (max(seeds), y), xytext=(8, 0), textcoords="offset points",
                        ha="left", va="center", fontsize=8)
        lo, hi = min(everything), max(everything)
        pad = 0.06 * (hi - lo or 1)
        ax.set_xlim(lo - pad, hi + 2.5 * pad)  # room for the value written right of each row
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_xlabel(labels[lang])
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(names)))
    axes[0].set_yticklabels([f"{n} ({len(summary['arms'][n]['seeds'])} seeds)" for n in reversed(names)])
    axes[0].set_ylim(-0.7, len(names) - 0.3)
    axes[0].legend(fontsize=8, loc="center right")
    fig.suptitle("Forgetting methods at the same Korean token budget (0 = the base)")
    fig.tight_layout()
    return fig


def plot(summary: dict, path: Path) -> None:
    write_bytes(path, png_bytes(figure(summary)))


@cli_entry
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m eval.forgetting_methods", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="the comparison's directory (OUT of recipes/forgetting_methods.sh)")
    a = ap.parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(a.out)
    summary = collect(out)
    write_json(out / "summary.json", summary)
    md = table(summary)
    write_text(out / "methods.md", md)
    plot(summary, out / "methods.png")
    write_text(out / "report.md", "# Forgetting methods\n\n" + md
               + "\n![Change against the base, per language and arm](methods.png)\n")
    print(md)
    return summary


if __name__ == "__main__":
    main()
