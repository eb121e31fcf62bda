"""The forgetting report rendered from small real runs: an English core and a model trained
on Korean (a full fine-tuning stand-in for CPT), each evaluated in both languages."""
import json
import shutil

import pytest
from conftest import read_docs, tiny_overrides

from minimodel.common.errors import UserError


@pytest.fixture(scope="module")
def runs(english_set, tmp_path_factory):
    from data_prep.shards import prepare_from_docs
    from eval.bpb import main as bpb
    from eval.generations import main as generations
    from eval.harness import main as harness
    from minimodel.config import load_config
    from minimodel.pretrain import run

    root = tmp_path_factory.mktemp("report_runs")
    ko = read_docs("korean_1961.jsonl")
    korean = root / "korean_set"  # the English tokenizer (byte fallback) so both runs share it
    prepare_from_docs(korean, english_set / "tokenizer.model", {"train": ko[:40], "val": ko[40:45]},
                      extra_manifest={"language": "ko"})
    en = read_docs("english_web.jsonl")
    english = root / "english_set"  # english_set with its language stated, as data_prep.prepare writes it
    prepare_from_docs(english, english_set / "tokenizer.model", {"train": en[:80], "val": en[80:]},
                      extra_manifest={"language": "en"})
    held = {}
    for lang, docs in (("en", read_docs("english_web.jsonl")[80:83]), ("ko", ko[45:48])):
        held[lang] = root / f"{lang}_heldout.jsonl"
        held[lang].write_text("".join(json.dumps({"text": d[:1500], "lang": lang}) + "\n" for d in docs))
    core, cpt = root / "core", root / "cpt"
    run(load_config(None, tiny_overrides(english, core)))
    run(load_config(None, tiny_overrides(korean, cpt, **{"train.steps": 20, "train.seed": 7})))
    for r, extra in ((core, []), (cpt, ["--stage", "cpt", "--base", str(core)])):
        bpb([str(r), "--data", str(held["en"]), "--data", str(held["ko"]), *extra])
        generations([str(r), "--max-new-tokens", "8", *extra])
        harness([str(r), "--tasks", "minimodel_cloze_en", "--limit", "8", *extra])
    return root, core, cpt


def test_report_from_real_runs(runs, tmp_path):
    from eval.report import main

    root, core, cpt = runs
    out = tmp_path / "report"
    main([str(core), str(cpt), "--out", str(out), "--usd-per-gpu-hour", "2"])
    rep = json.loads((out / "report.json").read_text())
    bpb = {n: json.loads((r / "eval" / "bpb.json").read_text())["sets"] for n, r in (("core", core), ("cpt", cpt))}
    assert set(rep["models"]) == {"core", "cpt"}
    assert rep["models"]["core"]["stage"] == "base" and rep["models"]["core"]["base"] is None
    assert rep["models"]["cpt"]["stage"] == "cpt" and rep["models"]["cpt"]["base"] == "core"
    for name, m in rep["models"].items():
        assert m["bpb"] == {s: v["bpb"] for s, v in bpb[name].items()}
        assert all(s.split("_")[0] in ("en", "ko") for s in m["bpb"])
        assert m["params"] > 0 and m["tokens"] > 0 and m["wall_s"] > 0
        assert m["cost_usd"] == pytest.approx(m["wall_s"] / 3600 * 2)
        assert m["language"] == {"core": "en", "cpt": "ko"}[name]
        assert set(m["repetition"]) >= {"greedy_distinct_2", "sampled_distinct_2"}
    rows = {f["set"]: f for f in rep["forgetting"]}
    assert set(rows) == {"en_heldout", "ko_heldout"}
    for s, f in rows.items():
        assert (f["base"], f["adapted"]) == ("core", "cpt")
        assert f["bpb_base"] == bpb["core"][s]["bpb"] and f["bpb_adapted"] == bpb["cpt"][s]["bpb"]
        assert f["relative"] == pytest.approx((f["bpb_adapted"] - f["bpb_base"]) / f["bpb_base"])
    assert [v.split(" ")[0] for v in rep["verdicts"]["cpt"]] == ["English", "Korean"]
    bwt = rep["backward_transfer"]["cpt"]  # core's English, from after the core to after the CPT
    assert [t["set"] for t in bwt["terms"]] == ["en_heldout"]
    assert bwt["bwt"] == pytest.approx(rows["en_heldout"]["absolute"])
    assert {p["model"] for p in rep["pareto"]} == {"core", "cpt"} and any(p["pareto"] for p in rep["pareto"])
    assert rep["reproduce"]["core"]["seed"] == 1337 and rep["reproduce"]["cpt"]["seed"] == 7
    assert any("eval.bpb" in c for c in rep["reproduce"]["cpt"]["eval"])
    md = (out / "report.md").read_text()
    assert "| run | stage | base |" in md and "| cpt | cpt | core |" in md
    assert rep["verdicts"]["cpt"][0] in md and "## Generations" in md and "## Reproduce" in md
    for p in rep["plots"]:
        assert (out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"plots/loss.png", "plots/forgetting_curve.png", "plots/pareto.png"} == set(rep["plots"])
    # what a reader needs to read it: the verdict thresholds, chance on the cloze task, the words
    assert "learned <= -5%" in md and "unchanged -1% to +1%" in md and "forgot a lot > +20%" in md
    assert rep["chance"] == {"minimodel_cloze_en": 0.25}
    chance_row = next(line for line in md.splitlines() if line.startswith("| *chance* |"))
    header = next(line for line in md.splitlines() if line.startswith("| run | minimodel_cloze_en"))
    cols = [c.strip() for c in header.split("|")[2:-1]]
    cells = [c.strip() for c in chance_row.split("|")[2:-1]]
    assert {c: v for c, v in zip(cols, cells) if v} == {c: "*0.2500*" for c in cols if c.split()[-1].startswith("acc")}
    assert "(empty) = the model wrote nothing" in md and "The front is the models no other model beats" in md


def test_forgetting_curve_is_small_multiples_with_the_legend_outside(runs, monkeypatch):
    import eval.report as report

    figs = []
    monkeypatch.setattr(report, "png_bytes", lambda fig: figs.append(fig) or b"png")
    root, core, cpt = runs
    rep, _ = report.build([core, cpt])
    fig = next(f for f in figs if "forgetting curve" in f.get_suptitle())
    assert sorted(ax.get_title() for ax in fig.axes) == ["English", "Korean"]  # one panel per language
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1
    fig.canvas.draw()
    legend = fig.legends[0].get_window_extent()
    assert not any(legend.overlaps(ax.get_window_extent()) for ax in fig.axes)  # outside every panel
    for ax in fig.axes:  # one line per run at most; the held-out endpoints are markers
        assert len(ax.get_lines()) <= len(rep["forgetting_curves"])


def test_report_refuses_incomplete_input(runs, tmp_path, capsys):
    from eval.report import build, main

    root, core, cpt = runs
    bare = tmp_path / "bare"
    shutil.copytree(core, bare, ignore=shutil.ignore_patterns("eval", "checkpoints"))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main([str(core), str(bare), "--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "eval/bpb.json" in err and "bits-per-byte" in err and str(bare) in err
    assert not out.exists()  # nothing written
    with pytest.raises(UserError, match="base .* is not among the report's runs"):
        build([cpt])
    with pytest.raises(UserError, match="not a run directory"):
        build([tmp_path])


def test_eval_forgetting_scores_each_run_at_its_training_context(runs, tmp_path):
    """recipes/eval_forgetting.sh: no CTX means the seq_len each run was trained with (64 here, not
    1024); CTX=N still goes to eval.bpb and lm-eval (checked with a stand-in interpreter that logs)."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    from minimodel.config import read_run_config

    root, core, _ = runs
    run = tmp_path / "core"
    shutil.copytree(core, run, ignore=shutil.ignore_patterns("eval", "checkpoints"))
    assert read_run_config(run).config.data.seq_len == 64
    env = {**os.environ, "PY": sys.executable, "PYTHONPATH": str(ROOT), "RUNS": str(run), "TASKS": "",
           "HELDOUT": f"{root / 'en_heldout.jsonl'} {root / 'ko_heldout.jsonl'}", "OUT": str(tmp_path / "out")}
    env.pop("CTX", None)
    r = subprocess.run(["bash", "recipes/eval_forgetting.sh"], cwd=ROOT, capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    sets = json.loads((run / "eval" / "bpb.json").read_text())["sets"]
    assert {s: v["context"] for s, v in sets.items()} == {"en_heldout": 64, "ko_heldout": 64}
    assert (tmp_path / "out" / "report" / "report.md").is_file()
    log, fake = tmp_path / "calls.log", tmp_path / "fakepy"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    fake.chmod(0o755)
    for ctx in (None, "32"):
        log.write_text("")
        extra = {"PY": str(fake), "TASKS": "minimodel_cloze_en", **({"CTX": ctx} if ctx else {})}
        r = subprocess.run(["bash", "recipes/eval_forgetting.sh"], cwd=ROOT, capture_output=True, text=True,
                           env={**env, **extra}, timeout=60)
        assert r.returncode == 0, r.stderr
        calls = {c.split()[1]: c for c in log.read_text().splitlines()}
        assert ("--ctx 32" in calls["eval.bpb"]) == bool(ctx)
        assert ("--max-length 32" in calls["eval.harness"]) == bool(ctx)
        assert ctx or "--ctx" not in calls["eval.bpb"] and "--max-length" not in calls["eval.harness"]


def test_relative_data_paths_resolve_from_any_directory(tmp_path, monkeypatch):
    """A run's config.toml records data.path as the stage was given it (relative to the project root
    that holds runs/): the report finds the set's manifest from another working directory too."""
    from eval.report import data_set_dir, training_language

    project = tmp_path / "project"
    for name, manifest in (("demo_ko", {"language": "ko"}), ("demo_en", {"language": "en"}),
                           ("mix", {"sources": [{"kind": "mixture", "set": "data/demo_en", "weight": 0.2},
                                                {"kind": "mixture", "set": "data/demo_ko", "weight": 0.8}]})):
        (project / "data" / name).mkdir(parents=True)
        (project / "data" / name / "manifest.json").write_text(json.dumps(manifest))
    run_dir = project / "runs" / "quickstart" / "cpt"
    run_dir.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert data_set_dir("data/demo_ko", run_dir) == project / "data" / "demo_ko"
    assert training_language("data/demo_ko", run_dir) == "ko"
    assert training_language("data/mix", run_dir) == "ko"  # the mixture's largest component, found the same way
    assert training_language("data/demo_ko") is None  # without the run directory: relative to here only
    monkeypatch.chdir(project / "runs")  # a relative run directory works as well
    assert training_language("data/mix", run_dir.relative_to(project / "runs")) == "ko"
    monkeypatch.chdir(project)  # from the project root, as the stage ran
    assert data_set_dir("data/demo_en", run_dir).as_posix() == "data/demo_en"
    assert training_language("data/demo_en") == "en"
