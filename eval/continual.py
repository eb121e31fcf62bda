"""The forgetting matrix of a continual-learning sequence (recipes/continual.sh), per arm.

    python -m eval.continual runs/continual

R[i][j] is the bits per byte on language j's chapters after stage i (row 0: the base; columns: the
languages in stage order, base language first). Per arm, over seeds:
    forgetting[j]   R[last][j] / best[j] - 1, best[j] the lowest R[i][j] from the stage that learned j on
                    (the base language: against the base row); positive = forgotten
    bwt             the mean forgetting over every language before the last (base language included)
    en_relative     the base language after the last stage against the base (named for the kit's English cores)
    plasticity[j]   R[j][j] / the bpb of j learned alone from the base at the same token budget
    final_new_bpb   R[last][last]; final_avg_bpb the mean of the last row
    spread          half the range over seeds of bwt and en_relative
Reads OUT/sequence.json, OUT/base_bpb.json, OUT/arms/<arm>_s<seed>/stage<k>_<lang>/ (eval/bpb.json,
config.toml), OUT/alone/<lang>_s<seed>/, OUT/timing.jsonl, and OUT/saturation/summary.json and
OUT/sweep/summary.json when they exist. Writes OUT/summary.json, OUT/continual.md, OUT/heatmap.png and
OUT/stages.png.
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

from eval.report import png_bytes
from minimodel.common.errors import UserError, cli_entry
from minimodel.common.io import read_json_object, read_jsonl_objects, write_bytes, write_json, write_text
from minimodel.config import read_run_config
from minimodel.train.tracking import read_metrics

STAGE_RE = re.compile(r"^stage(\d+)_([a-z]{2,3})$")
ARM_RE = re.compile(r"^(.+)_s(\d+)$")


def bpb_of(bpb_json: Path, lang: str, split: str) -> float:
    sets = read_json_object(bpb_json, "run python -m eval.bpb again").get("sets", {})
    name = f"{lang}_{split}"
    if name not in sets:
        raise UserError(f"{bpb_json} has no {name} score (it has {', '.join(sorted(sets)) or 'none'}); "
                        f"score every language of the sequence, as recipes/continual.sh does")
    return float(sets[name]["bpb"])


def relative(new: float, old: float) -> float:
    return new / old - 1


def arm_metrics(R: list[list[float]], languages: list[str], alone: dict[str, float] | None = None) -> dict:
    """forgetting, bwt, en_relative, plasticity, final bpbs of one matrix (rows: base, stage 1..n)."""
    last = len(R) - 1
    forgetting = {}
    for j, lang in enumerate(languages):
        best = min(R[i][j] for i in range(j, last + 1)) if j else R[0][0]
        forgetting[lang] = relative(R[last][j], best)
    earlier = languages[:last]
    return {
        "forgetting": forgetting,
        "bwt": statistics.fmean(forgetting[x] for x in earlier) if earlier else 0.0,
        "en_relative": relative(R[last][0], R[0][0]),
        "plasticity": {lang: R[j][j] / alone[lang] for j, lang in enumerate(languages)
                       if j and alone and lang in alone},
        "final_new_bpb": R[last][last],
        "final_avg_bpb": statistics.fmean(R[last]),
    }


def mean_matrix(mats: list[list[list[float]]]) -> list[list[float]]:
    return [[statistics.fmean(m[i][j] for m in mats) for j in range(len(mats[0][0]))] for i in range(len(mats[0]))]


def half_range(values: list[float]) -> float:
    return (max(values) - min(values)) / 2 if values else 0.0


def summarize_arm(R_seeds: dict[int, list[list[float]]], languages: list[str], alone: dict[str, float]) -> dict:
    """The contract's per-arm fields from the matrices of each seed."""
    R = mean_matrix(list(R_seeds.values()))
    per_seed = {s: arm_metrics(m, languages) for s, m in R_seeds.items()}
    out = {"R": R, "R_seeds": {str(s): m for s, m in R_seeds.items()}, **arm_metrics(R, languages, alone)}
    out["spread"] = {k: half_range([m[k] for m in per_seed.values()]) for k in ("bwt", "en_relative")}
    out["bwt_seeds"] = {str(s): m["bwt"] for s, m in per_seed.items()}
    return out


def read_walls(out: Path) -> dict[str, float]:
    timing = out / "timing.jsonl"
    if not timing.is_file():
        return {}
    walls: dict[str, float] = {}
    for _, r in read_jsonl_objects(timing, "written by recipes/continual.sh"):
        if r["run"] == "total":  # a sequence run in parts (arms added later) adds up its recipe runs
            walls["total"] = walls.get("total", 0.0) + float(r["wall_s"])
        else:
            walls[r["run"]] = float(r["wall_s"])
    return walls


def dream_mix(cfg) -> dict | None:
    """The language mix the stage's base dreamed (recorded in the generated set's manifest)."""
    if cfg.replay.source != "generated" or not cfg.replay.ratio:
        return None
    manifest = Path(cfg.replay.path) / "manifest.json"
    if not manifest.is_file():
        return None
    return read_json_object(manifest, "generate the set again").get("language_mix")


def alone_bpbs(out: Path, languages: list[str], split: str, arms_dirs: dict) -> dict[str, float]:
    """Each later language learned alone from the base (mean over seeds); the first new language's alone
    run is the no-replay arm's first stage."""
    alone: dict[str, list[float]] = {}
    for d in sorted((out / "alone").glob("*_s*")):
        m = ARM_RE.match(d.name)
        if m and (d / "eval" / "bpb.json").is_file() and m.group(1) in languages:
            alone.setdefault(m.group(1), []).append(bpb_of(d / "eval" / "bpb.json", m.group(1), split))
    first = languages[1]
    if first not in alone and "none" in arms_dirs:
        alone[first] = [bpb_of(stages[0] / "eval" / "bpb.json", first, split)
                        for stages in arms_dirs["none"].values()]
    return {k: statistics.fmean(v) for k, v in alone.items()}


def collect(out: Path) -> dict:
    if not (out / "sequence.json").is_file():
        raise UserError(f"{out / 'sequence.json'} is missing: {out} is not a continual-learning run "
                        "(recipes/continual.sh writes it)")
    seq = read_json_object(out / "sequence.json", "run recipes/continual.sh again")
    languages, split = seq["languages"], seq.get("split", "heldout")
    if not (out / "base_bpb.json").is_file():
        raise UserError(f"{out / 'base_bpb.json'} is missing: score the base first (recipes/continual.sh does)")
    base_row = [bpb_of(out / "base_bpb.json", lang, split) for lang in languages]
    n = len(languages) - 1
    arms_dirs: dict[str, dict[int, list[Path]]] = {}
    for d in sorted((out / "arms").glob("*_s*")):
        m = ARM_RE.match(d.name)
        stages = sorted((s for s in d.iterdir() if STAGE_RE.match(s.name)), key=lambda s: int(STAGE_RE.match(
            s.name).group(1))) if m else []
        done = [s for s in stages if (s / "eval" / "bpb.json").is_file()]
        if m and len(done) == n:  # an arm counts once every stage is scored
            arms_dirs.setdefault(m.group(1), {})[int(m.group(2))] = done
    if not arms_dirs:
        raise UserError(f"no arm under {out / 'arms'} has all {n} stages scored: run recipes/continual.sh")
    walls = read_walls(out)
    alone = alone_bpbs(out, languages, split, arms_dirs)
    arms = {}
    for name, seeds in arms_dirs.items():
        R_seeds = {s: [base_row] + [[bpb_of(st / "eval" / "bpb.json", lang, split) for lang in languages]
                                    for st in stages] for s, stages in seeds.items()}
        a = summarize_arm(R_seeds, languages, alone)
        cfg = read_run_config(next(iter(seeds.values()))[0]).config
        rc = cfg.replay
        a.update({"source": "none" if rc.ratio == 0 else rc.source, "ratio": rc.ratio, "distill": rc.distill,
                  "anchor": rc.anchor, "seeds": sorted(seeds), "mechanism": mechanism_of(cfg)})
        wall, gen, mix = [], [], []
        for k in range(n):
            runs = [stages[k] for stages in seeds.values()]
            keys = [str(r.resolve().relative_to(out.resolve())) for r in runs]  # an aliased arm: its twin's runs
            w = [walls[key] for key in keys if key in walls]
            records = [read_run_config(r) for r in runs]
            dream = [rec.run.dream_seconds for rec in records]
            wall.append(statistics.fmean(w) if w else None)
            gen.append(statistics.fmean(dream) / statistics.fmean(w) if w and a["source"] == "generated" else None)
            mix.append(dream_mix(records[0].config))
        a.update({"wall_s": wall, "gen_share": gen, "dream_language_mix": mix,
                  "peak_rss_gib": peak_memory([st for stages in seeds.values() for st in stages]),
                  "state_bytes": state_bytes([stages[-1] for stages in seeds.values()])})
        arms[name] = a
    for name, a in arms.items():
        if a["mechanism"]:
            a["baseline"] = baseline_of(name, a, arms)
            a["vs_baseline"] = against_baseline(a, arms.get(a["baseline"]))
    summary = {"languages": languages, "split": split, "base": dict(zip(languages, base_row)), "alone": alone,
               "arms": arms, "total_wall_s": walls.get("total")}
    for extra in ("saturation", "sweep"):
        f = out / extra / "summary.json"
        if f.is_file():
            summary[extra] = read_json_object(f, "run eval.continual on it again")
    summary["best"] = best_arm(arms)
    summary["targets"] = targets(summary)
    return summary


def mechanism_of(cfg) -> str | None:
    """The [plasticity] mechanism an arm's stages ran with ("metaplastic", "surprise_rank", "split_lora"; joined
    with + when several), None for a replay-only arm."""
    pc = getattr(cfg, "plasticity", None)
    on = [k for k in ("metaplastic", "surprise_rank", "split_lora") if pc is not None and getattr(pc, k)]
    return "+".join(on) or None


def baseline_of(name: str, arm: dict, arms: dict) -> str | None:
    """The replay-only arm with the same replay (source, ratio, distillation, anchor): the one the mechanism's
    name ends with when several match (an aliased pair), else the first."""
    same = [n for n, a in arms.items() if not a["mechanism"] and all(
        a[k] == arm[k] for k in ("source", "ratio", "distill", "anchor"))]
    named = [n for n in same if name.endswith("_" + n)]
    return (named or same or [None])[0]


def against_baseline(arm: dict, base: dict | None) -> dict | None:
    """What the mechanism changed: bwt (points; positive = less forgotten), the seed spreads it must beat, the
    new language's final bpb and the stage wall time, relative to its baseline arm."""
    if base is None:
        return None
    gain = (base["bwt"] - arm["bwt"]) * 100
    spread = (base["spread"]["bwt"] + arm["spread"]["bwt"]) * 100
    walls = [(w, v) for w, v in zip(arm["wall_s"], base["wall_s"]) if w and v]
    return {"bwt_gain_pp": gain, "spread_pp": spread, "en_relative_gain_pp": (base["en_relative"] -
                                                                               arm["en_relative"]) * 100,
            "final_new_bpb": relative(arm["final_new_bpb"], base["final_new_bpb"]),
            "wall": statistics.fmean(w / v for w, v in walls) - 1 if walls else None,
            "beats": gain > spread and relative(arm["final_new_bpb"], base["final_new_bpb"]) <= 0.01}


def peak_memory(runs: list[Path]) -> float | None:
    """The largest peak memory any stage logged (GPU allocated, or the CPU process's resident set), GiB."""
    peaks = [m.get("peak_mem_gib", m.get("peak_rss_gib")) for r in runs if (r / "metrics.jsonl").is_file()
             for m in read_metrics(r)]
    peaks = [p for p in peaks if p is not None]
    return max(peaks) if peaks else None


def state_bytes(last_stages: list[Path]) -> int | None:
    """Bytes of the state a mechanism keeps beside the model (metaplasticity's importance), after the last stage."""
    files = [r / "plasticity" / "importance.safetensors" for r in last_stages]
    sizes = [f.stat().st_size for f in files if f.is_file()]
    return max(sizes) if sizes else None


def best_arm(arms: dict) -> dict:
    """The arm with the lowest mean bpb over every language after the last stage: what a sweep (scored on
    val chapters) hands the main run as its generated-replay setting."""
    name, a = min(arms.items(), key=lambda kv: kv[1]["final_avg_bpb"])
    return {"arm": name, "source": a["source"], "ratio": a["ratio"], "distill": a["distill"],
            "anchor": a["anchor"], "final_avg_bpb": a["final_avg_bpb"]}


def _target(value, aim: str, met: bool) -> dict:
    return {"value": value, "target": aim, "met": bool(met)}


def targets(summary: dict) -> dict:
    """The continual-learning issue's targets, as measured (absent where an arm is missing)."""
    arms, out = summary["arms"], {}
    real25, gen, none = arms.get("real25"), arms.get("gen"), arms.get("none")
    if real25:
        worst = max(v for k, v in real25["forgetting"].items() if k != summary["languages"][-1])
        out["real25_worst_earlier_forgetting"] = _target(worst, "<= +1% of own best", worst <= 0.01)
        out["real25_en_relative"] = _target(real25["en_relative"], "<= +1%", real25["en_relative"] <= 0.01)
    if gen and real25:
        gap = (gen["bwt"] - real25["bwt"]) * 100
        out["gen_bwt_gap_to_real25_pp"] = _target(gap, "<= 1 point", gap <= 1)
        out["gen_en_relative"] = _target(gen["en_relative"], "<= +1.5%", gen["en_relative"] <= 0.015)
    if gen and none:
        worse = relative(gen["final_new_bpb"], none["final_new_bpb"])
        out["gen_final_new_vs_none"] = _target(worse, "<= +2%", worse <= 0.02)
    if none:
        langs = summary["languages"][1:]
        worst = max((relative(a["R"][j + 1][j + 1], none["R"][j + 1][j + 1]), name, langs[j])
                    for name, a in arms.items() if name != "none" for j in range(len(langs)))
        out["replay_plasticity_vs_none"] = _target(worst[0], "<= +3% for every replay arm and language",
                                                   worst[0] <= 0.03) | {"worst": f"{worst[1]} on {worst[2]}"}
    if gen and any(s is not None for s in gen["gen_share"]):
        share = max(s for s in gen["gen_share"] if s is not None)
        out["gen_share_max_stage"] = _target(share, "< 15% of each stage's wall time", share < 0.15)
    mech = {n: a for n, a in arms.items() if a["mechanism"] and a.get("vs_baseline")}
    if mech:
        name, a = max(mech.items(), key=lambda kv: kv[1]["vs_baseline"]["bwt_gain_pp"] - kv[1]["vs_baseline"][
            "spread_pp"])
        v = a["vs_baseline"]
        out["mechanism_bwt_gain_pp"] = _target(v["bwt_gain_pp"], "> the seeds' spread at <= +1% new-language bpb",
                                               v["beats"]) | {"arm": name, "baseline": a["baseline"],
                                                              "spread_pp": v["spread_pp"]}
    if summary.get("total_wall_s"):
        minutes = summary["total_wall_s"] / 60
        out["cpu_preset_minutes"] = _target(minutes, "< 60", minutes < 60)
    return out


def arm_order(arms: dict) -> list[tuple[str, dict]]:
    """No replay first, then real replay, then generated, each by ratio, distillation, anchor."""
    return sorted(arms.items(), key=lambda kv: (kv[1]["source"] != "none", kv[1]["source"], kv[1]["ratio"],
                                                kv[1]["distill"], kv[1]["anchor"], kv[1].get("mechanism") or ""))


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x:+.1%}"


def report(summary: dict) -> str:
    langs, split = summary["languages"], summary["split"]
    rows = ["base"] + [f"+{x}" for x in langs[1:]]
    lines = [f"# Continual learning: {' -> '.join(langs)}", "",
             f"Bits per byte on every language's {split} chapters (verse-aligned: the same content in each "
             "language) after every stage, mean over seeds. Forgetting: the last stage against the language's own "
             f"best ({langs[0]}: against the base); positive = forgotten. bwt: the mean over every language before "
             "the last. Spread: half the range over seeds.", "",
             "| arm | source | ratio | distill | anchor | seeds | bwt | " + f"{langs[0]} vs base | "
             + " | ".join(f"forget {x}" for x in langs[1:-1]) + f" | {langs[-1]} bpb | plasticity (worst) |"
             + " gen share (max) |",
             "|---|---|---:|---:|---:|---:|---:|---:|" + "---:|" * (len(langs) - 2) + "---:|---:|---:|"]
    order = arm_order(summary["arms"])
    for name, a in order:
        plast = max(a["plasticity"].values()) if a["plasticity"] else None
        shares = [s for s in a["gen_share"] if s is not None]
        lines.append(
            f"| {name} | {a['source']} | {a['ratio']:g} | {a['distill']:g} | {a['anchor']:g} | {len(a['seeds'])} | "
            f"{a['bwt']:+.2%} ± {a['spread']['bwt']:.2%} | "
            f"{a['en_relative']:+.2%} ± {a['spread']['en_relative']:.2%} | "
            + " | ".join(_pct(a["forgetting"][x]) for x in langs[1:-1])
            + f" | {a['final_new_bpb']:.4f} | {'' if plast is None else f'{plast:.3f}'} | "
            + (f"{max(shares):.1%}" if shares else "") + " |")
    mech = [(n, a) for n, a in order if a.get("mechanism") and a.get("vs_baseline")]
    if mech:
        lines += ["", "Mechanisms against their baseline (the replay-only arm with the same replay). bwt gain: points "
                  "of backward transfer saved (positive: less forgotten); it counts when above the two arms' seed "
                  "spreads added up, at no more than +1% new-language bpb.", "",
                  "| arm | mechanism | baseline | bwt gain | spread | en vs base gain | new-language bpb | "
                  "wall per stage | peak memory | state on disk | beats |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for name, a in mech:
            v = a["vs_baseline"]
            lines.append(
                f"| {name} | {a['mechanism']} | {a['baseline']} | {v['bwt_gain_pp']:+.2f} pp | {v['spread_pp']:.2f} pp"
                f" | {v['en_relative_gain_pp']:+.2f} pp | {v['final_new_bpb']:+.2%} | {_pct(v['wall'])} | "
                + (f"{a['peak_rss_gib']:.2f} GiB" if a.get("peak_rss_gib") else "") + " | "
                + (f"{a['state_bytes'] / 1024:.0f} KiB" if a.get("state_bytes") else "") + " | "
                + ("yes" if v["beats"] else "no") + " |")
    for name, a in order:
        lines += ["", f"## {name}: R (rows: after each stage; columns: languages)", "",
                  "| after | " + " | ".join(langs) + " |", "|---|" + "---:|" * len(langs)]
        for i, row in enumerate(a["R"]):
            lines.append(f"| {rows[i]} | " + " | ".join(f"{v:.4f}" for v in row) + " |")
        mixes = [m for m in a["dream_language_mix"] if m]
        if mixes:
            lines.append("")
            lines.append("Dream language mix per stage (share of samples): " + "; ".join(
                f"{rows[k + 1]}: " + ", ".join(f"{lang} {v:.0%}" for lang, v in m["samples"].items())
                for k, m in enumerate(a["dream_language_mix"]) if m))
    if summary["alone"]:
        lines += ["", "Learned alone from the base (plasticity reference): " + ", ".join(
            f"{k} {v:.4f}" for k, v in summary["alone"].items())]
    if summary["targets"]:
        lines += ["", "| target | measured | aim | met |", "|---|---:|---|---|"]
        for k, t in summary["targets"].items():
            v = f"{t['value']:+.2f}" if k.endswith("_pp") else f"{t['value']:.1f}" if k.endswith("minutes") \
                else f"{t['value']:+.2%}"
            lines.append(f"| {k} | {v} | {t['target']} | {'yes' if t['met'] else 'no'} |")
    lines += ["", "![forgetting matrices](heatmap.png)", "", "![every language across stages](stages.png)", ""]
    return "\n".join(lines)


def plot(summary: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    langs, arms = summary["languages"], summary["arms"]
    rows = ["base"] + [f"+{x}" for x in langs[1:]]
    names = [name for name, _ in arm_order(arms)]
    # heatmap: colour = change against the language's own best so far (linear, centred on 0); text = bpb
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.4), squeeze=False)
    lim = max(0.01, max(abs(relative(a["R"][i][j], min(a["R"][k][j] for k in range(j, i + 1)) if j else a["R"][0][0]))
                        for a in arms.values() for i in range(len(rows)) for j in range(len(langs)) if i >= j))
    for ax, name in zip(axes[0], names):
        R = np.array(arms[name]["R"])
        change = np.full(R.shape, np.nan)
        for i in range(len(rows)):
            for j in range(len(langs)):
                if i >= j:
                    change[i, j] = relative(R[i, j], R[0, 0] if j == 0 else R[j:i + 1, j].min()) * 100
        im = ax.imshow(change, cmap="RdBu_r", vmin=-lim * 100, vmax=lim * 100)
        for i in range(len(rows)):
            for j in range(len(langs)):
                ax.text(j, i, f"{R[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="grey" if i < j else "black")
        ax.set_xticks(range(len(langs)), langs)
        ax.set_yticks(range(len(rows)), rows)
        ax.set_title(name, fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), label="% vs own best (red: forgotten)", shrink=0.8)
    fig.suptitle("Bits per byte after each stage (grey: not yet learned)", fontsize=10)
    write_bytes(out / "heatmap.png", png_bytes(fig))
    # one panel per language, from the stage that learned it on (before, its bpb says nothing): one line
    # per arm, the seed range as error bars, a plain linear axis
    fig, axes = plt.subplots(1, len(langs), figsize=(3.3 * len(langs), 3.3), squeeze=False)
    for j, (ax, lang) in enumerate(zip(axes[0], langs)):
        xs = range(j, len(rows))
        for name in names:
            seeds = np.array(list(arms[name]["R_seeds"].values()))[:, j:, j]
            ax.errorbar(xs, seeds.mean(axis=0), yerr=(seeds.max(0) - seeds.min(0)) / 2, marker="o", ms=3,
                        capsize=2, label=name)
        ax.set_xticks(xs, rows[j:])
        ax.set_title(f"{lang} ({summary['split']} bpb)", fontsize=9)
    axes[0][0].set_ylabel("bits per byte (lower: better)")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    write_bytes(out / "stages.png", png_bytes(fig))


@cli_entry
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m eval.continual", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="the sequence's directory (OUT of recipes/continual.sh)")
    a = ap.parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(a.out)
    if not out.is_dir():
        raise UserError(f"{out} is not a directory: run recipes/continual.sh (OUT={out}) first")
    summary = collect(out)
    write_json(out / "summary.json", summary)
    md = report(summary)
    plot(summary, out)
    write_text(out / "continual.md", md)
    print(md)
    return summary


if __name__ == "__main__":
    main()
