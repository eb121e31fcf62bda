"""The forgetting report: what each model learned and forgot, in one page.

    python -m eval.report runs/quickstart/core runs/quickstart/cpt --out runs/quickstart

Reads run directories only: config.toml, metrics.jsonl and the stage JSONs in eval/
(bpb.json is required; generations.json and lm_eval.json are used when present). Writes
OUT/report.md, OUT/report.json and OUT/plots/*.png; nothing is written unless all of it can be.

A run's stage and base come from its eval JSON (--stage/--base given to eval.bpb), else from
config.toml ([run] stage and [base] path; [base] or [lora] without a stage -> cpt; otherwise base). Cost is device-hours
(wall time x world size) x --usd-per-gpu-hour, whatever the device was.
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
from pathlib import Path

from eval.forgetting import LANGUAGES, backward_transfer, benchmark_deltas, forgetting_rows, language_of, verdict_bands
from eval.harness import chance_level
from minimodel.common.errors import UserError, cli_entry
from minimodel.common.io import atomic_dir, read_json_object, write_bytes, write_json, write_text
from minimodel.config import RunConfig, read_run_config
from minimodel.models.loading import model_shape

DEFAULT_USD_PER_GPU_HOUR = 0.3  # an RTX 4090 on a rental market (DESIGN.md)


def _json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    return read_json_object(path, "re-run the stage that wrote it")


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_stage_docs(run_dir: Path, bpb: dict, gens: dict | None, lme: dict | None) -> None:
    """The fields of the eval JSONs the report reads, checked once (they are read in many places)."""
    sets = bpb.get("sets")
    if not isinstance(sets, dict) or not all(isinstance(v, dict) and _is_num(v.get("bpb")) for v in sets.values()) \
            or not all(isinstance(bpb.get(k), (str, type(None))) for k in ("stage", "base", "command")):
        raise UserError(f"{run_dir / 'eval' / 'bpb.json'} is damaged (no sets with a numeric bpb); re-run eval.bpb")
    if gens is not None:
        samples = gens.get("samples")
        keys = ("id", "lang", "kind", "prompt", "mode", "text")
        if not isinstance(samples, list) or not all(
                isinstance(x, dict) and all(isinstance(x.get(k), str) for k in keys)
                and isinstance(x.get("repetition"), dict) for x in samples):
            raise UserError(f"{run_dir / 'eval' / 'generations.json'} is damaged (samples lack id, lang, kind, "
                            "prompt, mode, text or repetition); re-run eval.generations")
    if lme is not None and not (isinstance(lme.get("results", {}), dict)
                                and isinstance(lme.get("items", {}), (dict, type(None)))):
        raise UserError(f"{run_dir / 'eval' / 'lm_eval.json'} is damaged (results is not an object); "
                        "re-run eval.harness")


def _metrics(run_dir: Path) -> list[dict]:
    from minimodel.train.tracking import read_metrics

    path = run_dir / "metrics.jsonl"
    try:
        rows = read_metrics(run_dir)
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (bad byte at offset {e.start})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} holds a line that is not JSON ({e}); the run's log is damaged") from None
    if not all(isinstance(r, dict) for r in rows):
        raise UserError(f"{path} holds a line that is not a JSON object; the run's log is damaged")
    return rows


def data_set_dir(path: str, run_dir: Path | None = None) -> Path:
    """A data set as a run's config.toml names it. A relative path is relative to where the stage ran
    (the project root that holds runs/, e.g. data/demo_en beside runs/quickstart/core): it is taken as
    it stands when it names a prepared set (manifest.json) from here, else from the nearest ancestor of
    the run directory where it does, so the report gives the same answer from any directory."""
    p = Path(path)
    if p.is_absolute() or (p / "manifest.json").is_file() or run_dir is None:
        return p
    for root in Path(run_dir).resolve().parents:
        if (root / p / "manifest.json").is_file():
            return root / p
    return p


def training_language(data_path: str, run_dir: Path | None = None) -> str | None:
    """The language of the run's training data (the largest component of a replay mixture); relative
    paths found as data_set_dir finds them."""
    man = _json(data_set_dir(data_path, run_dir) / "manifest.json") if data_path else None
    if not man:
        return None
    if man.get("language"):
        return man["language"]
    comps = [s for s in man.get("sources", []) if s.get("kind") == "mixture"]
    if comps:
        top = max(comps, key=lambda s: s.get("weight", 0))
        sub = _json(data_set_dir(top["set"], run_dir) / "manifest.json") or {}
        return sub.get("language")
    return None


def wall_seconds(metrics: list[dict]) -> float | None:
    times = [m["time"] for m in metrics if isinstance(m.get("time"), (int, float))]
    return max(times) - min(times) if len(times) > 1 else None


def collect_run(run_dir: Path, rate: float) -> dict:
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    bpb = _json(run_dir / "eval" / "bpb.json")
    if not (run_dir / "config.toml").is_file():
        if bpb is None:
            raise UserError(f"{run_dir} has no config.toml: not a run directory (nor the eval/ of a model "
                            "evaluated with eval.bpb --out DIR/eval/bpb.json)")
        return collect_external(run_dir, bpb)
    if bpb is None:
        raise UserError(f"{run_dir} lacks the bits-per-byte stage (eval/bpb.json) the report needs; run "
                        f"python -m eval.bpb {run_dir} --data HELDOUT_SET ... first")
    record, metrics = read_run_config(run_dir), _metrics(run_dir)
    cfg, run = record.config, record.run
    gens, lme = _json(run_dir / "eval" / "generations.json"), _json(run_dir / "eval" / "lm_eval.json")
    _check_stage_docs(run_dir, bpb, gens, lme)
    # a pretrained core is the "base" row of the report
    stage = bpb.get("stage") or {"pretrain": "base"}.get(record.stage, record.stage)
    base = getattr(cfg, "base", None)
    base_ref = bpb.get("base") or (base.path if base else None)
    tokens = max((m["tokens"] for m in metrics if isinstance(m.get("tokens"), (int, float))), default=None)
    wall = wall_seconds(metrics)
    device_h = wall * run.world_size / 3600 if wall is not None else None
    tps = [m["tok_per_s"] for m in metrics if isinstance(m.get("tok_per_s"), (int, float))]
    if isinstance(cfg, RunConfig):
        shape, preset = cfg.model_config(), cfg.model.preset
    else:  # stages that load their base (CPT, SFT) have no [model]: the shape of their result
        shape, preset = model_shape(run_dir), None
    lora, replay = getattr(cfg, "lora", None), getattr(cfg, "replay", None)
    summary = {"preset": preset, "d_model": shape.d_model, "n_layers": shape.n_layers,
               "vocab_size": shape.vocab_size, "qk_norm": shape.qk_norm,
               "optimizer": cfg.optim.name, "lr": cfg.optim.lr, "steps": cfg.train.steps, "data": cfg.data.path,
               "lora_rank": lora.rank if lora and lora.enabled else None,
               "full_finetune": bool(lora) and not lora.enabled,
               "replay_ratio": replay.ratio if replay and replay.path else None}
    return {"run_dir": str(run_dir), "stage": stage, "base_ref": base_ref, "bpb_doc": bpb, "config": cfg.to_dict(),
            "metrics": metrics, "generations": gens, "lm_eval": lme, "params": run.params or None, "tokens": tokens,
            "wall_s": wall, "world_size": run.world_size, "device_hours": device_h,
            "cost_usd": device_h * rate if device_h is not None else None,
            "hardware": f"{run.world_size}x {hardware(run.device, cfg.train.device)}",
            "tok_per_s": statistics.median(tps) if tps else None, "summary": summary,
            "language": training_language(cfg.data.path, run_dir), "seed": cfg.train.seed,
            "commit": run.commit, "command": run.command}


def collect_external(eval_dir: Path, bpb: dict) -> dict:
    """A model the kit did not train (a Hugging Face base, a hub id), evaluated into eval_dir/eval/: a row
    as it is, named by what eval.bpb loaded, its shape read the way the stages read it."""
    gens, lme = _json(eval_dir / "eval" / "generations.json"), _json(eval_dir / "eval" / "lm_eval.json")
    _check_stage_docs(eval_dir, bpb, gens, lme)
    spec = bpb.get("spec") if isinstance(bpb.get("spec"), str) else None
    try:
        shape = model_shape(spec) if spec else None
    except UserError:  # moved or offline since it was evaluated: the row keeps what bpb.json says
        shape = None
    summary = {"preset": None, "d_model": getattr(shape, "d_model", None), "n_layers": getattr(shape, "n_layers", None),
               "vocab_size": getattr(shape, "vocab_size", None), "qk_norm": getattr(shape, "qk_norm", None),
               "optimizer": None, "lr": None, "steps": None, "data": None, "lora_rank": None,
               "full_finetune": False, "replay_ratio": None, "tokenizer": bpb.get("tokenizer_kind")}
    params = bpb.get("params") if _is_num(bpb.get("params")) else None
    return {"run_dir": str(eval_dir), "spec": spec, "stage": bpb.get("stage") or "base", "base_ref": bpb.get("base"),
            "bpb_doc": bpb, "config": {}, "metrics": [], "generations": gens, "lm_eval": lme, "params": params,
            "tokens": None, "wall_s": None, "world_size": 1, "device_hours": None, "cost_usd": None,
            "hardware": "(not trained here)", "tok_per_s": None, "summary": summary, "language": None,
            "seed": None, "commit": None, "command": bpb.get("command")}


def hardware(recorded: str, configured: str) -> str:
    dev = recorded or configured
    return dev if dev and dev != "auto" else "(device not logged)"


def run_names(dirs: list[Path]) -> list[str]:
    names = [d.name for d in dirs]
    return [f"{d.parent.name}/{d.name}" if names.count(d.name) > 1 else d.name for d in dirs]


def resolve_base(ref: str, runs: dict[str, dict]) -> str | None:
    """The report's name for a base reference (a run dir, its final/, a run name, or the model an
    external row evaluated: a Hugging Face directory or hub id)."""
    if ref in runs:
        return ref
    p = Path(ref).resolve()
    for name, r in runs.items():
        d = Path(r["run_dir"]).resolve()
        if p in (d, d / "final", d / "adapter") or ref == r.get("spec") or (
                r.get("spec") and Path(r["spec"]).exists() and p == Path(r["spec"]).resolve()):
            return name
    return None


def chain_to(name: str, runs: dict) -> list[str]:
    chain, seen = [name], {name}
    while runs[chain[0]]["base"] and runs[chain[0]]["base"] not in seen:
        chain.insert(0, runs[chain[0]]["base"])
        seen.add(chain[0])
    return chain


def fmt(v, spec=".3f", none="–"):
    return none if v is None else format(v, spec)


def md_cell(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    text = text if len(text) <= limit else text[:limit - 1] + "…"
    return text.replace("|", "\\|") or "(empty)"


# ---------------------------------------------------------------- plots (PNG bytes, Agg)

def png_bytes(fig) -> bytes:
    """A figure as PNG bytes, closed: every plot of eval/ goes through here (write them with write_bytes)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def plot_loss(runs: dict) -> bytes | None:
    import matplotlib.pyplot as plt

    series = {n: [(m["tokens"], m["loss"]) for m in r["metrics"] if "loss" in m and "tokens" in m]
              for n, r in runs.items()}
    series = {n: s for n, s in series.items() if s}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for n, s in series.items():
        ax.plot(*zip(*s), label=n)
    ax.set(xlabel="training tokens (this run)", ylabel="train loss (nats/token)", title="Loss curves")
    ax.legend()
    ax.grid(alpha=0.3)
    return png_bytes(fig)


def forgetting_curves(runs: dict) -> dict[str, dict[str, list]]:
    """{run: {set: [(step, bpb)]}}: per-set val_bpb_<set> logged along CPT, else the run's val_bpb
    (labelled with its training language) for adapted runs."""
    out = {}
    for n, r in runs.items():
        curves: dict[str, list] = {}
        for m in r["metrics"]:
            for k, v in m.items():
                if k.startswith("val_bpb_") and isinstance(v, (int, float)):
                    curves.setdefault(k[len("val_bpb_"):], []).append((m["step"], v))
        if not curves and r["base"]:
            label = f"{r['language'] or 'train'}_val"
            curves[label] = [(m["step"], m["val_bpb"]) for m in r["metrics"]
                             if isinstance(m.get("val_bpb"), (int, float))]
        if r["base"] and r["metrics"]:
            # held-out endpoints for every language: the base at the run's first step, the result at its last
            steps = [m["step"] for m in r["metrics"] if "step" in m]
            base_bpb = runs[r["base"]]["bpb_doc"]["sets"]
            for s, v in r["bpb_doc"]["sets"].items():
                if s in base_bpb:
                    curves[f"{s} (held-out, base -> end)"] = [(min(steps), base_bpb[s]["bpb"]), (max(steps), v["bpb"])]
        if any(curves.values()):
            out[n] = curves
    return out


def plot_forgetting(curves: dict) -> bytes | None:
    """One panel per language (small multiples), one colour per run: the held-out bpb logged along
    training as a line, the base before and the result after each run as hollow and filled markers;
    one legend under the panels, outside the data."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    panels: dict[str, list] = {}
    for n, sets in curves.items():
        for s, pts in sets.items():
            lang = language_of(s)
            if lang in LANGUAGES:  # other sets (SFT answers, ...) stay in report.json
                panels.setdefault(lang, []).append((n, "held-out" in s, pts))
    if not panels:
        return None
    colours = {n: f"C{i}" for i, n in enumerate(curves)}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (lang, series) in zip(axes[0], sorted(panels.items())):
        for n, endpoints, pts in series:
            xs, ys = zip(*pts)
            if endpoints:
                ax.scatter(xs[:1], ys[:1], facecolors="none", edgecolors=colours[n], s=36, zorder=3)
                ax.scatter(xs[-1:], ys[-1:], color=colours[n], s=36, zorder=3)
            else:
                ax.plot(xs, ys, color=colours[n], lw=1.5)
        ax.set(title=LANGUAGES[lang], xlabel="step of the run", ylabel="bits per byte (lower is better)")
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=c, lw=1.5, label=n) for n, c in colours.items()] + [
        Line2D([], [], color="gray", lw=1.5, label="logged along the run (val split)"),
        Line2D([], [], ls="", marker="o", mfc="none", mec="gray", label="held-out: the base, before the run"),
        Line2D([], [], ls="", marker="o", color="gray", label="held-out: the run's result")]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    fig.suptitle("Both languages along training (forgetting curve)")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return png_bytes(fig)


def pareto_points(models: dict, orig: str, new: str) -> list[dict]:
    def pick(bpb: dict, lang: str):
        sets = sorted(s for s in bpb if language_of(s) == lang)
        best = f"{lang}_heldout" if f"{lang}_heldout" in sets else (sets[0] if sets else None)
        return bpb.get(best) if best else None

    pts = [{"model": n, "x": pick(m["bpb"], orig), "y": pick(m["bpb"], new), "stage": m["stage"]}
           for n, m in models.items()]
    pts = [p for p in pts if p["x"] is not None and p["y"] is not None]
    for p in pts:  # lower is better on both axes
        p["pareto"] = not any(q["x"] <= p["x"] and q["y"] <= p["y"] and (q["x"], q["y"]) != (p["x"], p["y"])
                              for q in pts)
    return pts


def plot_pareto(pts: list[dict], orig: str, new: str) -> bytes | None:
    import matplotlib.pyplot as plt

    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for p in pts:
        ax.scatter(p["x"], p["y"], s=40, marker="o" if p["pareto"] else "x")
        ax.annotate(f"{p['model']} ({p['stage']})", (p["x"], p["y"]), fontsize=8, xytext=(4, 4),
                    textcoords="offset points")
    front = sorted((p["x"], p["y"]) for p in pts if p["pareto"])
    if len(front) > 1:
        ax.plot(*zip(*front), ls="--", lw=1, color="gray")
    ax.set(xlabel=f"{orig} bits per byte (original language, lower is better)",
           ylabel=f"{new} bits per byte (new language)", title="New vs original language")
    ax.grid(alpha=0.3)
    return png_bytes(fig)


# ---------------------------------------------------------------- assembling

def build(run_dirs: list[Path], rate: float = DEFAULT_USD_PER_GPU_HOUR) -> tuple[dict, dict[str, bytes]]:
    if not run_dirs:
        raise UserError("give at least one run directory")
    runs = {n: collect_run(d, rate) for n, d in zip(run_names(run_dirs), run_dirs)}
    for n, r in runs.items():
        r["base"] = None
        if r["base_ref"]:
            r["base"] = resolve_base(r["base_ref"], runs)
            if r["base"] is None:
                raise UserError(f"run {n}'s base {r['base_ref']} is not among the report's runs; add its run "
                                "directory to the command line")
    models = {n: {"stage": r["stage"], "base": r["base"], "bpb": {s: v["bpb"] for s, v in r["bpb_doc"]["sets"].items()},
                  "run_dir": r["run_dir"], "params": r["params"], "tokens": r["tokens"], "wall_s": r["wall_s"],
                  "hardware": r["hardware"], "device_hours": r["device_hours"], "cost_usd": r["cost_usd"],
                  "tok_per_s": r["tok_per_s"], "language": r["language"], "config": r["summary"],
                  "benchmarks": (r["lm_eval"] or {}).get("results", {}),
                  "repetition": repetition_summary(r["generations"])} for n, r in runs.items()}
    forgetting, verdicts, deltas, bwt = [], {}, [], {}
    for n, r in runs.items():
        if not r["base"]:
            continue
        rows = forgetting_rows(r["base"], n, models[r["base"]]["bpb"], models[n]["bpb"])
        forgetting += rows
        verdicts[n] = [row["verdict"] for row in rows]
        b_items, a_items = (runs[r["base"]]["lm_eval"] or {}).get("items"), (r["lm_eval"] or {}).get("items")
        if b_items and a_items:
            deltas += benchmark_deltas(r["base"], n, b_items, a_items)
        chain = chain_to(n, runs)
        got = backward_transfer([{"name": c, "language": runs[c]["language"], "bpb": models[c]["bpb"]} for c in chain])
        if got:
            bwt[n] = got
    roots = [n for n in runs if not runs[n]["base"]]
    orig = next((runs[n]["language"] for n in roots if runs[n]["language"]), None) or "en"
    langs = sorted({language_of(s) for m in models.values() for s in m["bpb"]} - {orig})
    new = langs[0] if langs else None
    pts = pareto_points(models, orig, new) if new else []
    curves = forgetting_curves(runs)
    plots = {"loss.png": plot_loss(runs), "forgetting_curve.png": plot_forgetting(curves),
             "pareto.png": plot_pareto(pts, orig, new) if new else None}
    plots = {k: v for k, v in plots.items() if v}
    warnings = []
    for s in sorted({s for r in runs.values() for s in r["bpb_doc"]["sets"]}):
        ctxs = {n: r["bpb_doc"]["sets"][s].get("context") for n, r in runs.items() if s in r["bpb_doc"]["sets"]}
        if len(set(ctxs.values())) > 1:
            where = ", ".join(f"{n}: {c}" for n, c in ctxs.items())
            warnings.append(f"{s} was scored at different contexts ({where}); "
                            "re-run python -m eval.bpb with the same --ctx for a like-for-like comparison")
    report = {"warnings": warnings, "models": models, "forgetting": forgetting, "verdicts": verdicts,
              "benchmark_deltas": deltas,
              "backward_transfer": bwt, "languages": {"original": orig, "new": new},
              "chance": {t: chance_level(t) for t in sorted({t for m in models.values() for t in m["benchmarks"]})},
              "pareto": pts, "forgetting_curves": {n: {s: [list(p) for p in c] for s, c in sets.items()}
                                                  for n, sets in curves.items()},
              "generations": {n: r["generations"]["samples"] for n, r in runs.items() if r["generations"]},
              "plots": [f"plots/{k}" for k in plots], "usd_per_gpu_hour": rate,
              "reproduce": {n: {"commit": r["commit"], "command": r["command"], "seed": r["seed"],
                                "eval": [d["command"] for d in (r["bpb_doc"], r["generations"], r["lm_eval"])
                                         if d and d.get("command")]} for n, r in runs.items()}}
    return report, plots


def repetition_summary(gens: dict | None) -> dict | None:
    if not gens:
        return None
    out = {}
    for mode in ("greedy", "sampled"):
        reps = [s["repetition"] for s in gens["samples"] if s["mode"] == mode]
        for key in ("distinct_2", "rep_4"):
            vals = [r[key] for r in reps if r.get(key) is not None]
            if vals:
                out[f"{mode}_{key}"] = sum(vals) / len(vals)
    return out


def render_md(rep: dict) -> str:
    models, L = rep["models"], []
    sets = sorted({s for m in models.values() for s in m["bpb"]})
    L += ["# minimodel report", "",
          "What each model learned and forgot. Bits per byte (bpb) of held-out text, lower is better; "
          "comparable across tokenizers and languages.", ""]
    for w in rep["warnings"]:
        L += [f"> **Note:** {w}", ""]
    if rep["verdicts"]:
        L += ["## Verdict", ""]
        for n, lines in rep["verdicts"].items():
            L.append(f"- **{n}** (vs {models[n]['base']}): " + "; ".join(lines))
        L += ["", f"Each verdict is the held-out bpb change relative to the base: {verdict_bands()} "
              "(bpb varies by ~0.5% between seeds at demo size).", ""]
    L += ["## Runs", "",
          "| run | stage | base | model | optimizer | params | tokens | wall | hardware | device-h | est. cost | "
          + " | ".join(f"{s} bpb" for s in sets) + " |",
          "|" + "---|" * (11 + len(sets))]
    for n, m in models.items():
        c = m["config"]
        shape = (f"{c['preset'] + ' ' if c['preset'] else ''}d{c['d_model']} L{c['n_layers']}"
                 + (f", {c['tokenizer']} tokenizer" if c.get("tokenizer") else "")
                 + (f", LoRA r{c['lora_rank']}" if c["lora_rank"] else "")
                 + (", full FT" if c["full_finetune"] else "")
                 + (f", replay {c['replay_ratio']:.0%}" if c["replay_ratio"] else ""))
        L.append(f"| {n} | {m['stage']} | {m['base'] or '–'} | {shape} | {c['optimizer'] or '–'} | "
                 f"{fmt(m['params'] and m['params'] / 1e6, '.2f')}M | "
                 f"{fmt(m['tokens'] and m['tokens'] / 1e6, '.2f')}M | "
                 f"{fmt(m['wall_s'] and m['wall_s'] / 60, '.1f')} min | {m['hardware']} | "
                 f"{fmt(m['device_hours'], '.3f')} | "
                 f"${fmt(m['cost_usd'], '.3f')} | " + " | ".join(fmt(m["bpb"].get(s), ".4f") for s in sets) + " |")
    L += ["", f"Cost = device-hours x ${rep['usd_per_gpu_hour']}/GPU-hour (`--usd-per-gpu-hour`), applied to "
          "whatever device the run used.", ""]
    if rep["forgetting"]:
        L += ["## Forgetting (adapted vs base, bits per byte)", "",
              "| base | adapted | set | bpb base | bpb adapted | change | relative | verdict |",
              "|---|---|---|---|---|---|---|---|"]
        for f in rep["forgetting"]:
            L.append(f"| {f['base']} | {f['adapted']} | {f['set']} | {f['bpb_base']:.4f} | {f['bpb_adapted']:.4f} | "
                     f"{f['absolute']:+.4f} | {f['relative'] * 100:+.1f}% | {f['verdict'].split(': ')[-1]} |")
        L.append("")
    for n, b in rep["backward_transfer"].items():
        L.append(f"Backward transfer along {' -> '.join([t['stage'] for t in b['terms']] + [n])}: "
                 f"{b['bwt']:+.4f} bpb (positive = earlier languages got worse).")
        L.append("")
    if rep["benchmark_deltas"]:
        L += ["## Benchmarks (adapted - base, 95% bootstrap CI over paired items)", "",
              "| base | adapted | task | metric | base | adapted | delta | CI | items |",
              "|---|---|---|---|---|---|---|---|---|"]
        for d in rep["benchmark_deltas"]:
            L.append(f"| {d['base']} | {d['adapted']} | {d['task']} | {d['metric']} | {d['base_mean']:.3f} | "
                     f"{d['adapted_mean']:.3f} | {d['delta']:+.3f} | [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] | "
                     f"{d['items']} |")
        L.append("")
    bench = sorted({(t, k) for m in models.values() for t, ms in m["benchmarks"].items() for k in ms})
    if bench:
        L += ["| run | " + " | ".join(f"{t} {k}" for t, k in bench) + " |", "|" + "---|" * (1 + len(bench))]
        for n, m in models.items():
            L.append(f"| {n} | " + " | ".join(fmt(m["benchmarks"].get(t, {}).get(k), ".4f") for t, k in bench) + " |")
        chance = [rep["chance"].get(t) if k.startswith("acc") else None for t, k in bench]
        if any(c is not None for c in chance):
            L += ["| *chance* | " + " | ".join(f"*{c:.4f}*" if c is not None else "" for c in chance) + " |", "",
                  "*chance*: the accuracy of a uniform guess among each item's choices (0.25 on the cloze tasks, "
                  "4 endings); an accuracy near it means the model does not tell the true answer apart."]
        L.append("")
    titles = {"loss.png": "Loss curves", "forgetting_curve.png": "Forgetting curve",
              "pareto.png": "Pareto: new vs original language"}
    if rep["plots"]:
        L += ["## Plots", ""]
        for p in rep["plots"]:
            L += [f"![{titles[p.split('/')[-1]]}]({p})", ""]
    if rep["pareto"]:
        front = [p["model"] for p in rep["pareto"] if p["pareto"]]
        L += [f"Pareto front ({rep['languages']['original']} vs {rep['languages']['new']} bpb): {', '.join(front)}. "
              "The front is the models no other model beats in both languages at once (lower bpb in each); "
              "every model off it is worse than some other model in both, so it is never the one to pick.", ""]
    if rep["generations"]:
        L += generation_tables(rep)
    L += ["## Reproduce", ""]
    for n, r in rep["reproduce"].items():
        L += [f"**{n}** (commit `{r['commit'] or '?'}`, seed {r['seed']})", "", "```",
              *(x for x in [r["command"], *r["eval"]] if x), "```", ""]
    return "\n".join(L)


def generation_tables(rep: dict) -> list[str]:
    gens = rep["generations"]
    names = list(gens)
    L = ["## Generations", "",
         "The 2x2 prompt table (new language / English x encyclopedia / instruction) at every stage. "
         "rep4 = share of repeated word 4-grams (0 = no loop). (empty) = the model wrote nothing: its first "
         "token was end-of-text (or only whitespace), common for a core that never saw an instruction.", ""]
    for mode in ("greedy", "sampled"):
        rows = {}
        for n in names:
            for s in gens[n]:
                if s["mode"] == mode:
                    rows.setdefault(s["id"], {"s": s})[n] = s
        if mode == "sampled":
            L += ["<details><summary>Sampled outputs</summary>", ""]
        L += [f"**{mode}**", "", "| prompt | " + " | ".join(names) + " |", "|" + "---|" * (1 + len(names))]
        for row in rows.values():
            s = row["s"]
            cells = [md_cell(row[n]["text"]) + f" *(rep4 {fmt(row[n]['repetition'].get('rep_4'), '.2f')})*"
                     if n in row else "–" for n in names]
            L.append(f"| {s['lang']} {s['kind']}: {md_cell(s['prompt'], 60)} | " + " | ".join(cells) + " |")
        L.append("")
        if mode == "sampled":
            L += ["</details>", ""]
    return L


@cli_entry
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m eval.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run directories (each with eval/bpb.json)")
    ap.add_argument("--out", required=True, help="directory for report.md, report.json, plots/")
    ap.add_argument("--usd-per-gpu-hour", type=float, default=DEFAULT_USD_PER_GPU_HOUR)
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    import matplotlib

    matplotlib.use("Agg")
    rep, plots = build([Path(r) for r in args.runs], args.usd_per_gpu_hour)
    md = render_md(rep)  # everything computed before the first write
    out = Path(args.out)
    if plots:
        with atomic_dir(out / "plots") as tmp:
            for name, png in plots.items():
                write_bytes(tmp / name, png)
    write_json(out / "report.json", rep)
    write_text(out / "report.md", md)
    print(f"report: {out / 'report.md'}", file=sys.stderr)
    return rep


if __name__ == "__main__":
    main()
