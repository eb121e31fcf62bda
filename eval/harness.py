"""Run lm-eval tasks on a model and keep per-item scores for the forgetting report.

    python -m eval.harness runs/quickstart/core --tasks minimodel_ppl_en,minimodel_cloze_en,minimodel_cloze_ko
    python -m eval.harness runs/cpt --tasks hellaswag,arc_easy,kobest_copa --limit 500   # needs the hub

Local tasks (eval/tasks/*.yaml) run offline: minimodel_ppl_LANG (bits per byte of held-out
text; its file defaults to the quickstart's data/demo_LANG/heldout.jsonl, --heldout LANG=FILE
points it elsewhere) and minimodel_cloze_LANG (multiple choice from eval/tasks/data/). The
standard tasks in HUB_TASKS download their data from the Hugging Face hub.
Backend: the kit's `minimodel` LM for native run dirs and directories with a sentencepiece
tokenizer.model only; lm-eval's `hf` backend (peft adapter passed through) for Hugging Face
directories with tokenizer files. The JSON goes to --out, else RUN_DIR/eval/lm_eval.json for a run
directory, else to stdout.
"""
from __future__ import annotations

import difflib
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

import yaml

from eval.models import model_cli, save_output
from minimodel.common.errors import UserError, cli_entry

TASK_DIR = Path(__file__).resolve().parent / "tasks"
# Standard tasks selectable by name; every one downloads its dataset from the hub.
HUB_TASKS = ("hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande", "lambada_openai", "wikitext",
             "kobest_boolq", "kobest_copa", "kobest_hellaswag", "kobest_sentineg", "kobest_wic", "kobest")


# Accuracy of a uniform guess on the standard multiple-choice tasks (2 or 4 choices per item).
HUB_CHANCE = {"hellaswag": 0.25, "arc_easy": 0.25, "arc_challenge": 0.25, "piqa": 0.5, "winogrande": 0.5,
              "kobest_boolq": 0.5, "kobest_copa": 0.5, "kobest_hellaswag": 0.25, "kobest_sentineg": 0.5,
              "kobest_wic": 0.5}


def chance_level(task: str) -> float | None:
    """Accuracy of a uniform guess: for a local multiple-choice task, the mean of 1/choices over the
    items of its data file (0.25 on the cloze tasks); None for tasks that have no such level."""
    if task in HUB_CHANCE:
        return HUB_CHANCE[task]
    path = local_tasks().get(task)
    if path is None:
        return None
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    files = list(cfg.get("dataset_kwargs", {}).get("data_files", {}).values())
    if cfg.get("output_type") != "multiple_choice" or not files or not (path.parent / files[0]).is_file():
        return None
    items = [json.loads(line) for line in (path.parent / files[0]).read_text(encoding="utf-8").splitlines() if line]
    return sum(1 / len(i["choices"]) for i in items) / len(items) if items else None


def local_tasks() -> dict[str, Path]:
    return {p.stem: p for p in sorted(TASK_DIR.glob("*.yaml"))}


def hub_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def check_tasks(names: list[str]) -> tuple[list[str], list[str]]:
    """Split into (local, hub) task names; an unknown name lists the close matches."""
    local = local_tasks()
    known = [*local, *HUB_TASKS]
    for n in names:
        if n not in known:
            close = difflib.get_close_matches(n, known, n=4, cutoff=0.5)
            raise UserError(f"unknown task {n!r}" + (f"; did you mean {', '.join(close)}?" if close else "")
                            + f" (local: {', '.join(local)}; hub: {', '.join(HUB_TASKS)})")
    hub = [n for n in names if n not in local]
    if hub and hub_offline():
        raise UserError(f"task(s) {', '.join(hub)} need the Hugging Face hub for their data, and offline mode is on "
                        "(HF_HUB_OFFLINE/HF_DATASETS_OFFLINE); run them with network, or use the local tasks "
                        f"{', '.join(local)}")
    return [n for n in names if n in local], hub


def materialise(names: list[str], heldout: dict[str, str], into: Path) -> None:
    """Copy the local task YAMLs into `into` with their data files as absolute paths."""
    for name in names:
        src = local_tasks()[name]
        cfg = yaml.safe_load(src.read_text(encoding="utf-8"))
        files = cfg.get("dataset_kwargs", {}).get("data_files", {})
        lang = name.rsplit("_", 1)[-1]
        for split, rel in files.items():
            if name.startswith("minimodel_ppl_") and lang in heldout:
                rel = heldout[lang]
            found = next((p for p in (src.parent / rel, Path.cwd() / rel) if p.is_file()), None)
            if found is None:
                hint = (f"prepare it (python -m data_prep.demo --out data) or pass --heldout {lang}=FILE"
                        if name.startswith("minimodel_ppl_") else "make it with python -m eval.cloze")
                raise UserError(f"task {name}: data file {rel} not found; {hint}")
            files[split] = str(found.resolve())
        (into / src.name).write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")


def per_item(samples: list[dict]) -> dict[str, dict]:
    """{metric: {doc_id: score}} for the numeric per-item metrics (acc, acc_norm, ...)."""
    out: dict[str, dict] = {}
    for s in samples:
        for k, v in s.items():
            if k not in ("doc_id", "target") and isinstance(v, (int, float)) and not isinstance(v, bool):
                out.setdefault(k, {})[str(s["doc_id"])] = float(v)
    return out


def pick_backend(model: str, adapter: str | None, backend: str) -> str:
    if backend != "auto":
        return backend
    p = Path(model)
    hf_tok = any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    return "hf" if p.is_dir() and (p / "config.json").is_file() and hf_tok else "minimodel"


def evaluate(model: str, tasks: list[str], adapter: str | None = None, limit: int | None = None,
             heldout: dict[str, str] | None = None, backend: str = "auto", batch_size: int = 16,
             device: str = "auto", max_length: int | None = None) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    local, hub = check_tasks(tasks)
    with tempfile.TemporaryDirectory(prefix="minimodel_tasks_") as tmp:
        materialise(local, heldout or {}, Path(tmp))
        manager = TaskManager(include_path=tmp, include_defaults=bool(hub))  # built-ins only when asked
        kind = pick_backend(model, adapter, backend)
        if kind == "minimodel":
            from eval.lm_adapter import MiniModelLM

            lm = MiniModelLM(model, adapter, batch_size, max_length, device=device)
            name, run_dir = lm.lm.name, lm.lm.run_dir
        else:
            import torch

            args = {"pretrained": model, "dtype": "float32", "device": "cuda" if torch.cuda.is_available() else "cpu"}
            if adapter:
                args["peft"] = adapter
            if max_length:
                args["max_length"] = max_length
            lm, name, run_dir = "hf", Path(model).name, None
        res = lm_eval.simple_evaluate(model=lm, model_args=args if kind == "hf" else None, tasks=tasks,
                                      limit=limit, batch_size=batch_size, log_samples=True,
                                      task_manager=manager, bootstrap_iters=0)
    results = {t: {k.split(",")[0]: v for k, v in m.items()
                   if isinstance(v, (int, float)) and not k.startswith(("alias", "sample_len"))}
               for t, m in res["results"].items()}
    items = {t: per_item(s) for t, s in res.get("samples", {}).items()}
    return {"model": name, "run_dir": str(run_dir) if run_dir else None, "backend": kind, "tasks": tasks,
            "limit": limit, "results": results, "items": items}


@cli_entry
def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = model_cli("python -m eval.harness", __doc__, "lm_eval.json")
    ap.add_argument("--tasks", required=True, help="comma-separated task names")
    ap.add_argument("--limit", type=int, help="first N items of each task")
    ap.add_argument("--heldout", action="append", default=[], help="LANG=FILE for minimodel_ppl_LANG")
    ap.add_argument("--backend", choices=("auto", "minimodel", "hf"), default="auto")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, help="context (default: the run's training seq_len)")
    args = ap.parse_args(argv)
    heldout = {}
    for spec in args.heldout:
        lang, sep, path = spec.partition("=")
        if not sep:
            raise UserError(f"--heldout {spec!r}: expected LANG=FILE, e.g. ko=data/demo_ko/heldout.jsonl")
        heldout[lang] = path
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    check_tasks(tasks)  # before loading anything
    run_dir = (Path(args.model) / "config.toml").is_file()
    out = Path(args.out) if args.out else Path(args.model) / "eval" / "lm_eval.json" if run_dir else None
    doc = evaluate(args.model, tasks, args.adapter, args.limit, heldout, args.backend, args.batch_size,
                   args.device, args.max_length)
    doc.update(stage=args.stage, base=args.base, command=shlex.join(["python", "-m", "eval.harness", *argv]))
    for t, m in doc["results"].items():
        print(f"{doc['model']}  {t:<22} " + "  ".join(f"{k} {v:.4f}" for k, v in m.items()), file=sys.stderr)
    save_output(out, doc)
    return doc


if __name__ == "__main__":
    main()
