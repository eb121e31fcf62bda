"""Turn the ablation's run directories into summary.json, a markdown table and plots.

summary.json: {"plan": {...}, "target_loss": float, "arms": {ARM: {
    best_lr, final_val_loss_mean, final_val_loss_std, final_val_bpb_mean, final_val_bpb_std,
    tokens_ratio_to_best_adamw, tokens_to_target, tokens, max_attn_logit, diverged_lrs,
    smallest_diverged_lr, sweep: {lr: final_val_loss | null}, seeds: [...]}}}
"target_loss" is the final validation loss of the AdamW baseline (no QK-norm) at its best
lr, averaged over seeds; tokens_ratio_to_best_adamw = tokens an arm needs to reach it
(first crossing of its seed-averaged validation curve, linearly interpolated between
evaluations) / tokens it trained on; null when it never gets there.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from minimodel.common.io import write_json, write_text
from minimodel.train.tracking import read_metrics


def val_curve(run_dir: Path) -> list[tuple[int, float, float]]:
    """(tokens, val_loss, val_bpb) at each evaluation, in order."""
    return [(m["tokens"], m["val_loss"], m["val_bpb"]) for m in read_metrics(run_dir)
            if "val_loss" in m and m.get("tokens") is not None]


def diverged(run_dir: Path) -> bool:
    curve = val_curve(run_dir)
    if not curve:
        return True
    last, first = curve[-1][1], curve[0][1]
    skipped = max((m.get("skipped_steps", 0) for m in read_metrics(run_dir)), default=0)
    return last is None or not math.isfinite(last) or last > first or skipped > 0


def final_val_loss(run_dir: Path) -> float:
    curve = val_curve(run_dir)
    if not curve or diverged(run_dir):
        return math.inf
    return curve[-1][1]


def tokens_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    for (t0, l0), (t1, l1) in zip(curve, curve[1:]):
        if l1 <= target:
            if l0 <= target:
                return float(t0)
            return t0 + (t1 - t0) * (l0 - target) / (l0 - l1)
    return float(curve[0][0]) if curve and curve[0][1] <= target else None


def mean_curve(run_dirs: list[Path]) -> list[tuple[int, float]]:
    curves = [val_curve(d) for d in run_dirs]
    n = min(len(c) for c in curves)
    return [(curves[0][i][0], statistics.fmean(c[i][1] for c in curves)) for i in range(n)]


def _std(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def run_name(arm: str, lr: float, seed: int) -> str:
    return f"{arm}/lr{lr:g}_seed{seed}"


def summarize(out: Path, plan: dict, write: bool = True) -> dict:
    runs = out / "runs"
    arms = {}
    for arm in plan["arms"]:
        sweep = {lr: final_val_loss(runs / run_name(arm, lr, 0)) for lr in plan["lrs"]}
        best = min(sweep, key=lambda lr: sweep[lr])
        seed_dirs = [runs / run_name(arm, best, s) for s in range(plan["seeds"])]
        seed_dirs = [d for d in seed_dirs if val_curve(d)]
        finals = [val_curve(d)[-1] for d in seed_dirs]
        logits = [m["max_attn_logit"] for d in seed_dirs for m in read_metrics(d) if "max_attn_logit" in m]
        div = [lr for lr in plan["lrs"] if diverged(runs / run_name(arm, lr, 0))]
        arms[arm] = {
            "best_lr": best,
            "final_val_loss_mean": statistics.fmean(f[1] for f in finals),
            "final_val_loss_std": _std([f[1] for f in finals]),
            "final_val_bpb_mean": statistics.fmean(f[2] for f in finals),
            "final_val_bpb_std": _std([f[2] for f in finals]),
            "tokens": finals[0][0],
            "seeds": len(finals),
            "max_attn_logit": max(logits) if logits else None,
            "diverged_lrs": div,
            "smallest_diverged_lr": min(div) if div else None,
            "sweep": {f"{lr:g}": (None if math.isinf(v) else v) for lr, v in sweep.items()},
            "curve": mean_curve(seed_dirs),
        }
    baseline = arms.get("adamw")
    target = baseline["final_val_loss_mean"] if baseline else None
    for a in arms.values():
        reach = tokens_to_reach(a["curve"], target) if target is not None else None
        a["tokens_to_target"] = reach
        a["tokens_ratio_to_best_adamw"] = None if reach is None else reach / a["tokens"]
    summary = {"plan": plan, "target_loss": target, "arms": arms}
    if not write:  # non-zero ranks under torchrun
        return summary
    write_json(out / "summary.json", summary)
    write_text(out / "ablation.md", markdown_table(summary))
    plot(out, summary)
    return summary


def markdown_table(summary: dict) -> str:
    def f(x, fmt="{:.4f}"):
        return "—" if x is None else fmt.format(x)

    rows = ["| arm | best lr | final val loss (mean ± std) | val bpb | tokens to AdamW's final loss | "
            "max attn logit | diverged at lr |", "|---|---|---|---|---|---|---|"]
    for name, a in summary["arms"].items():
        rows.append(f"| {name} | {a['best_lr']:g} | {f(a['final_val_loss_mean'])} ± {f(a['final_val_loss_std'])} "
                    f"| {f(a['final_val_bpb_mean'])} | {f(a['tokens_ratio_to_best_adamw'], '{:.2f}x')} "
                    f"| {f(a['max_attn_logit'], '{:.1f}')} | {f(a['smallest_diverged_lr'], '{:g}')} |")
    plan = summary["plan"]
    note = (f"\n{plan['notes']}; learning rates {plan['lrs']}, {plan['seeds']} seeds at each arm's best lr. "
            f"Target = AdamW baseline's final val loss {f(summary['target_loss'])}.\n")
    return "\n".join(rows) + "\n" + note


def plot(out: Path, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "plots").mkdir(exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, a in summary["arms"].items():
        ax.plot([t / 1e6 for t, _ in a["curve"]], [v for _, v in a["curve"]], label=f"{name} (lr {a['best_lr']:g})")
    if summary["target_loss"] is not None:
        ax.axhline(summary["target_loss"], color="grey", ls=":", lw=1, label="AdamW final")
    ax.set(xlabel="tokens (M)", ylabel="validation loss", title="Validation loss at each arm's best lr")
    curves = [v for a in summary["arms"].values() for _, v in a["curve"][1:]]
    if curves:
        ax.set_ylim(min(curves) - 0.1, sorted(curves)[int(len(curves) * 0.9)] + 0.2)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "plots" / "loss_curves.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, a in summary["arms"].items():
        pts = [(float(lr), v) for lr, v in a["sweep"].items()]
        ax.plot([p[0] for p in pts if p[1] is not None], [p[1] for p in pts if p[1] is not None], "o-", label=name)
        for lr, v in pts:
            if v is None:
                ax.plot([lr], [max(curves) if curves else 0], "x", color="red")
    ax.set_xscale("log")
    ax.set(xlabel="learning rate", ylabel="final validation loss", title="Learning-rate sweep (x = diverged)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "plots" / "lr_sweep.png", dpi=120)
    plt.close(fig)
