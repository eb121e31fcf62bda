"""Bad input through each command-line entry point: exit status 2, exactly one stderr line
`error: ...` naming the problem, no traceback, no output left behind.

The readers behind these commands are fuzzed in tests/test_bad_inputs.py; here one real
damaged input per command checks the whole path from argv to the exit status. The commands
run concurrently (each pays a torch import of a few seconds).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _core(root: Path, tok: Path) -> Path:
    """A minimodel run directory holding a tiny model (final/ as a stage exports it)."""
    from safetensors.torch import save_file

    from minimodel.nn.model import MiniModel, model_config_from
    from minimodel.nn.weights import model_tensors

    torch.manual_seed(0)
    cfg = model_config_from("tiny", vocab_size=1024, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64,
                            max_seq_len=128)
    final = root / "final"
    final.mkdir(parents=True)
    save_file(model_tensors(MiniModel(cfg)), str(final / "model.safetensors"))
    (final / "minimodel.json").write_text(json.dumps(cfg.to_dict()))
    shutil.copy2(tok, final / "tokenizer.model")
    (root / "config.toml").write_text('[train]\nsteps = 1\n')
    return root


def _cases(english_set: Path, tmp: Path) -> dict[str, tuple[list[str], str, Path | None]]:
    """name -> (argv after python, a word the error line must contain, an output that must not appear)."""
    tok = english_set / "tokenizer.model"
    null_manifest = tmp / "null_manifest"
    shutil.copytree(english_set, null_manifest)
    (null_manifest / "manifest.json").write_text("null")
    cut_shard = tmp / "cut_shard"
    shutil.copytree(english_set, cut_shard)
    shard = cut_shard / "val" / "shard_00000.bin"
    shard.write_bytes(shard.read_bytes()[:-3])
    bad_cfg_base = _core(tmp / "bad_cfg_base", tok)
    (bad_cfg_base / "final" / "minimodel.json").write_text('{"d_model": "wide"}')
    cut_weights = _core(tmp / "cut_weights", tok)
    w = cut_weights / "final" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    not_utf8 = tmp / "latin1.jsonl"
    not_utf8.write_bytes(b'{"text": "caf\xe9"}\n')
    bad_sft = tmp / "sft.jsonl"
    bad_sft.write_text(json.dumps({"instruction": "hi", "output": ["not", "text"]}) + "\n")
    prompts = tmp / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "a", "lang": "en", "kind": "poem", "prompt": "x"}) + "\n")
    report_run = _core(tmp / "report_run", tok)
    (report_run / "eval").mkdir()
    (report_run / "eval" / "bpb.json").write_text('{"sets": {"en_heldout": {"bpb": "low"}}}')
    tiny = ["model.preset=tiny", "model.vocab_size=1024", "model.d_model=32", "model.n_layers=1", "model.n_heads=2",
            "model.n_kv_heads=1", "model.ffn_dim=64", "train.steps=2", "train.progress=false", "data.seq_len=32"]
    out = tmp / "outs"
    return {
        "minimodel.pretrain": (["-m", "minimodel.pretrain", f"data.path={null_manifest}",
                                f"train.out_dir={out / 'pretrain'}", *tiny], "manifest.json", out / "pretrain"),
        "minimodel.cpt": (["-m", "minimodel.cpt", f"base.path={bad_cfg_base}", f"data.path={english_set}",
                           f"train.out_dir={out / 'cpt'}", "train.steps=2", "data.seq_len=32"],
                          "minimodel.json", out / "cpt"),
        "minimodel.sft": (["-m", "minimodel.sft", f"base.path={bad_cfg_base}", f"data.path={english_set}",
                           f"train.out_dir={out / 'sft'}", "train.steps=2", "data.seq_len=32"],
                          "minimodel-sft-v1", out / "sft"),
        "minimodel.export": (["-m", "minimodel.export", str(cut_weights), str(out / "export")],
                             "model.safetensors", out / "export"),
        "data_prep.prepare": (["-m", "data_prep.prepare", "--out", str(out / "prepared"), "--files", str(not_utf8),
                               "--tokenizer", str(tok), "--num-proc", "1"], "UTF-8", out / "prepared"),
        "data_prep.verify": (["-m", "data_prep.verify", str(cut_shard)], "shard_00000.bin", None),
        "data_prep.sft": (["-m", "data_prep.sft", "--out", str(out / "sft_set"), "--files", str(bad_sft),
                           "--tokenizer", str(tok)], "output", out / "sft_set"),
        "eval.bpb": (["-m", "eval.bpb", str(cut_weights), "--data", f"en_x={english_set}:val",
                      "--out", str(out / "bpb.json"), "--device", "cpu"], "model.safetensors", out / "bpb.json"),
        "eval.generations": (["-m", "eval.generations", str(bad_cfg_base), "--prompts", str(prompts),
                              "--out", str(out / "gen.json")], "poem", out / "gen.json"),
        "eval.report": (["-m", "eval.report", str(report_run), "--out", str(out / "report")], "bpb.json",
                        out / "report"),
    }


@pytest.fixture(scope="module")
def cli_results(english_set, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_cli")
    cases = _cases(english_set, tmp)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
           "OMP_NUM_THREADS": "1"}

    def run(item):
        name, (argv, _, _) = item
        p = subprocess.run([sys.executable, *argv], cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
        return name, p

    with ThreadPoolExecutor(max_workers=4) as pool:
        done = dict(pool.map(run, cases.items()))
    return cases, done


CLIS = ["minimodel.pretrain", "minimodel.cpt", "minimodel.sft", "minimodel.export", "data_prep.prepare",
        "data_prep.verify", "data_prep.sft", "eval.bpb", "eval.generations", "eval.report"]


@pytest.mark.parametrize("name", CLIS)
def test_bad_input_exits_2_with_one_error_line(cli_results, name):
    cases, done = cli_results
    _, must_name, output = cases[name]
    p = done[name]
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert p.returncode == 2, f"exit {p.returncode}; stderr:\n{p.stderr[-3000:]}"
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    assert lines == errors and len(errors) == 1 and must_name in errors[0], p.stderr[-3000:]
    if output is not None:
        assert not output.exists() or (output.is_dir() and not any(output.rglob("*.safetensors"))
                                       and not (output / "manifest.json").exists()), sorted(output.rglob("*"))
        assert not [q.name for q in output.parent.glob(f".{output.name}*")] if output.parent.is_dir() else True
