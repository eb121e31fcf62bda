"""The prepared GPU check: its CPU dry run end to end with only the GPU machine's packages importable,
the section runner's failure handling and budgets, the 24 GB search, and the rendered tables."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT

from minimodel.common.errors import UserError
from scripts import gpu_check
from scripts.gpu_sections import largest_fitting
from scripts.gpu_tables import BEGIN, END, NONE_YET, render

HIDDEN = ["datasets", "wandb", "lm_eval", "gguf", "unsloth", "bitsandbytes", "google.protobuf"]


def records_of(out_dir):
    (path,) = out_dir.glob("*.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_cpu_dry_run_with_only_the_gpu_machines_packages(tmp_path):
    doc = tmp_path / "benchmarks.md"
    shutil.copyfile(ROOT / "docs" / "benchmarks.md", doc)
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests' / 'gpu_machine_env'}{os.pathsep}{ROOT}"}
    r = subprocess.run([sys.executable, "-m", "scripts.gpu_check", "--device", "cpu", "--quick", "--out",
                        str(tmp_path / "out"), "--doc", str(doc)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    recs = records_of(tmp_path / "out")
    env_rec = recs[0]
    assert env_rec["section"] == "env" and all(env_rec["packages"][m] is None for m in HIDDEN)  # really hidden
    assert not [x for x in recs if "error" in x], [x for x in recs if "error" in x]
    by = {s: [x for x in recs if x["section"] == s] for s in gpu_check.SECTIONS}
    tests = by["gpu_tests"][0]
    assert tests["passed"] >= 5 and tests["failed"] == tests["test_errors"] == 0, tests
    eager = [x for x in by["bench_train"] if not x["compile"]]
    assert len(eager) == 2 and all(x["native_tok_s"] > 0 and x["hf_tok_s"] > 0 for x in eager)
    assert all("skipped" in x for x in by["bench_train"] if x["compile"])  # each skip says why
    assert by["muon_share"][0]["muon_ms"] > 0 and 0 < by["muon_share"][0]["muon_share"] < 1
    assert "needs CUDA" in by["microbatch_24gb"][0]["skipped"]
    lora = [x for x in by["lora_7b"] if "skipped" not in x]
    assert [(x["grad_ckpt"], x["micro_batch"]) for x in lora] == [(True, 1), (True, 2), (False, 1)]
    assert all(0 < x["loss"] < 10 and x["trainable"] < x["params"] for x in lora)
    assert all(x["peak_gib"] > 0 and x["planned_gib"] > 0 for x in lora)  # built by the stage code, planned
    assert "bitsandbytes" in [x for x in by["lora_7b"] if "skipped" in x][0]["skipped"]
    pre = by["pretrain_300"][0]
    assert pre["last_loss"] < pre["first_loss"] and pre["val_loss_end"] < pre["val_loss_start"] and pre["exported"]
    assert [x["batch"] for x in by["dream_replay"]] == [4, 16] and all(x["tok_s"] > 0 for x in by["dream_replay"])
    assert recs[-1]["section"] == "summary" and set(recs[-1]["outcomes"].values()) <= {"ok", "skipped"}
    text, original = doc.read_text(), (ROOT / "docs" / "benchmarks.md").read_text()
    assert text.split(BEGIN)[0] == original.split(BEGIN)[0] and text.split(END)[1] == original.split(END)[1]
    tables = text.split(BEGIN)[1].split(END)[0]
    assert tables.count("| cpu |") >= 8 and "needs CUDA" in tables


def test_largest_fitting_finds_the_edge():
    for edge in (1, 7, 8, 37, 300):
        tried = []
        best, failed = largest_fitting(lambda b: tried.append(b) or b <= edge)  # noqa: B023 (called here)
        assert (best, failed) == (edge, edge + 1) and len(tried) < 20
    assert largest_fitting(lambda b: False) == (0, 1)
    assert largest_fitting(lambda b: True, limit=64) == (64, None)


def test_a_failing_or_overrunning_section_is_recorded_and_the_rest_still_run(tmp_path, monkeypatch):
    def broken(ck):
        ck.emit(part=1)
        raise RuntimeError("boom\nsecond line")

    def slow(ck):
        ck.emit(started=True)
        time.sleep(5)

    def fine(ck):
        ck.emit(value=ck.left() > 0)

    monkeypatch.setattr(gpu_check, "SECTIONS", {"a": (broken, 10, 0), "b": (slow, 0.3, 0), "c": (fine, 10, 0),
                                                "d": (fine, 10, 50)})
    ck = gpu_check.Check(torch.device("cpu"), True, tmp_path / "r.jsonl", "2026-01-01T00:00:00Z", "cpu")
    t0 = time.monotonic()
    gpu_check.run_sections(ck, ["a", "b", "c", "d"], budget=60)
    assert time.monotonic() - t0 < 4  # the sleeping section was cut at its 0.3 s budget
    recs = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [(r["section"], next(k for k in ("error", "skipped", "part", "started", "value") if k in r))
            for r in recs] == [("a", "part"), ("a", "error"), ("b", "started"), ("b", "error"), ("c", "value"),
                               ("d", "skipped")]
    assert recs[1]["error"] == "RuntimeError: boom" and "timed out" in recs[3]["error"]
    assert "50 s needed" in recs[5]["skipped"]  # d needs more than the run has left
    assert [ck.outcome(s) for s in "abcd"] == ["error", "error", "ok", "skipped"]


def fake_run(path, run, gpu="NVIDIA H100 80GB HBM3"):
    rows = [{"section": "env", "torch": "2.11.0", "packages": {"transformers": "5.17.0", "peft": "0.17.0",
                                                               "bitsandbytes": None}},
            {"section": "bench_train", "params": 104_000_000, "seq": 1024, "batch": 16, "compile": True,
             "native_tok_s": 500000.0, "hf_tok_s": 350000.0, "ratio_vs_hf": 1.43, "mfu": 0.47,
             "native_step_peak_gib": 9.5, "hf_step_peak_gib": 12.25},
            {"section": "lora_7b", "model": "Mistral-7B", "backend": "peft", "base_dtype": "nf4",
             "skipped": "bitsandbytes does not import here"},
            {"section": "summary", "wall_s": 431.0, "outcomes": {"bench_train": "ok", "lora_7b": "skipped"}}]
    with open(path, "a") as f:
        for r in rows:
            f.write(json.dumps({**r, "run": run, "gpu": gpu}) + "\n")
        f.write('{"section": "muon_sh')  # a run cut off mid-line


def test_tables_render_every_run_in_place(tmp_path):
    doc = tmp_path / "b.md"
    doc.write_text(f"# Benchmarks\n\nintro\n\n{BEGIN}\nold text\n{END}\n\nafter\n")
    out = tmp_path / "gpu"
    out.mkdir()
    render(out, doc)
    assert doc.read_text().count(NONE_YET) == 9 and "old text" not in doc.read_text()
    fake_run(out / "2026-12-01-nvidia-h100.jsonl", "2026-12-01T10:00:00Z")
    fake_run(out / "2026-12-02-nvidia-h200.jsonl", "2026-12-02T09:30:00Z", gpu="NVIDIA H200")
    render(out, doc)
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nintro\n\n") and text.endswith(f"{END}\n\nafter\n")
    assert "| 2026-12-01 10:00 | NVIDIA H100 80GB HBM3 | 104.0M | 1024 x 16 | compiled | 500,000 | 350,000 | " \
           "**1.43x** | 47.0% | 9.50 / 12.25 |" in text
    assert "| 2026-12-02 09:30 | NVIDIA H200 |" in text and "skipped: bitsandbytes does not import here" in text
    render(out, doc)
    assert doc.read_text() == text  # rendering again changes nothing


def test_bad_invocations_are_one_line_errors(tmp_path):
    doc = tmp_path / "no_markers.md"
    doc.write_text("# nothing here\n")
    with pytest.raises(UserError, match="marker lines"):
        render(tmp_path, doc)
    with pytest.raises(UserError, match="pass --out DIR"):
        gpu_check.parse_args(["--device", "cpu"])
    with pytest.raises(UserError, match="unknown section"):
        gpu_check.parse_args(["--device", "cpu", "--out", str(tmp_path), "--sections", "bench,nope"])
    with pytest.raises(UserError, match="budget must be > 0"):
        gpu_check.parse_args(["--device", "cpu", "--out", str(tmp_path), "--budget", "0"])
    with pytest.raises(UserError, match="not a prepared set"):
        gpu_check.parse_args(["--device", "cpu", "--out", str(tmp_path), "--data", str(tmp_path)])
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            gpu_check.parse_args(["--device", "cuda"])


def test_the_gpu_budget_fits_the_shell_scripts_limit():
    import re

    limit = int(re.search(r"timeout .* (\d+) \"\$PY\"", (ROOT / "scripts" / "gpu_check.sh").read_text()).group(1))
    assert limit <= 8 * 60 and gpu_check.GPU_BUDGET_S + 20 <= limit  # start-up and rendering fit the rest
    assert sum(need for _, _, need in gpu_check.SECTIONS.values()) <= gpu_check.GPU_BUDGET_S
