"""The pretraining stage on real text: learning, exact resume, DDP, bad input."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, read_docs, tiny_overrides
from safetensors.torch import load_file

from minimodel.common.errors import UserError
from minimodel.config import load_config
from minimodel.nn.model import MiniModel, model_config_from
from minimodel.nn.weights import load_model_weights
from minimodel.pretrain import run
from minimodel.train.tracking import read_metrics


def cli(*args, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=timeout)


def test_loss_falls_and_run_dir_is_complete(english_set, tmp_path):
    out = tmp_path / "run"
    run(load_config(None, tiny_overrides(english_set, out, **{"train.steps": 60, "train.eval_every": 30})))
    metrics = read_metrics(out)
    val = [m["val_loss"] for m in metrics if "val_loss" in m]
    train_loss = [m["loss"] for m in metrics if "loss" in m]
    assert len(val) == 3 and val[-1] < val[0] - 1.0 and val[-1] < val[1]
    assert train_loss[-1] < np.log(1024) - 1.5  # well below a uniform guess over the vocab
    assert all(m["val_bpb"] > 0 for m in metrics if "val_bpb" in m)
    assert any("max_attn_logit" in m for m in metrics)
    assert (out / "config.toml").is_file() and "commit" in (out / "config.toml").read_text()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_50", "step_60"]  # keep_last=2
    assert {"config.json", "model.safetensors", "tokenizer.model"} <= {p.name for p in (out / "final").iterdir()}


@pytest.mark.parametrize("optim", ["muon", "adamw"])
def test_resume_is_exact(english_set, tmp_path, optim):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    extra = {"train.steps": 20, "optim.name": optim, "optim.lr": 0.01 if optim == "muon" else 3e-3}
    run(load_config(None, tiny_overrides(english_set, straight, **extra)))
    first = run(load_config(None, tiny_overrides(english_set, resumed, **extra, **{"train.stop_at_step": 10})))
    assert first["step"] == 10 and not (resumed / "final").exists()
    second = run(load_config(None, tiny_overrides(english_set, resumed, **extra)))
    assert second["step"] == 20
    a = load_file(straight / "final" / "model.safetensors")
    b = load_file(resumed / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la = [m["loss"] for m in read_metrics(straight) if "loss" in m]
    lb = [m["loss"] for m in read_metrics(resumed) if "loss" in m]
    assert la == lb


def test_corrupted_checkpoint_falls_back_to_previous(english_set, tmp_path):
    out = tmp_path / "run"
    ov = tiny_overrides(english_set, out, **{"train.steps": 30, "train.stop_at_step": 20, "train.keep_last": 3})
    run(load_config(None, ov))
    weights = out / "checkpoints" / "step_20" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated by a crash
    result = run(load_config(None, [o for o in ov if not o.startswith("train.stop_at_step")]))
    assert result["step"] == 30
    log = (out / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in log if '"loss"' in line]
    assert steps == [5, 10, 15, 20, 25, 30]  # steps 11-20 were redone from step_10; their rows replaced


def test_torchrun_two_ranks_end_identical(english_set, tmp_path):
    out = tmp_path / "run"
    args = tiny_overrides(english_set, out, **{"train.steps": 12, "train.micro_batch": 4, "train.grad_accum": 2})
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "tests/dist_worker.py", str(tmp_path), *args],
                       capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "world_size = 2" in (out / "config.toml").read_text()
    init = MiniModel(model_config_from("tiny", vocab_size=1024, d_model=64, n_layers=2, ffn_dim=192))
    up = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(a[up], init.state_dict()[up])


def _copy_set(src, dst):
    shutil.copytree(src, dst)
    return dst


def _expect_clean_failure(args, out, pattern):
    r = cli("-m", "minimodel.pretrain", *args)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert pattern in lines[0], lines[0]
    assert "Traceback" not in r.stderr
    return lines[0]


def test_bad_inputs_fail_cleanly(english_set, tmp_path):
    out = tmp_path / "run"
    _expect_clean_failure(tiny_overrides(tmp_path / "missing", out), out, "data path not found")
    assert not out.exists()

    big_ids = _copy_set(english_set, tmp_path / "big_ids")
    shard = big_ids / "train" / "shard_00000.bin"
    arr = np.fromfile(shard, dtype="<u2")
    arr[123] = 5000
    arr.tofile(shard)
    _expect_clean_failure(tiny_overrides(big_ids, out), out, "token id 5000 >= model vocab_size 1024")
    assert not out.exists()

    other_tok = _copy_set(english_set, tmp_path / "other_tok")
    from data_prep.tokenizer import train_tokenizer
    train_tokenizer(read_docs("english_web.jsonl")[:30], other_tok / "tokenizer.model", vocab_size=1024)
    _expect_clean_failure(tiny_overrides(other_tok, out), out, "made with another tokenizer")

    _expect_clean_failure(tiny_overrides(english_set, out, **{"model.vocab_size": 512}), out,
                          "set model.vocab_size=1024")
    _expect_clean_failure(tiny_overrides(english_set, out, **{"optim.bogus": 1}), out,
                          "unknown config key optim.bogus")
    assert not out.exists()


def test_checkpoint_of_another_shape_is_named(english_set, tmp_path):
    out = tmp_path / "run"
    run(load_config(None, tiny_overrides(english_set, out, **{"train.steps": 10})))
    msg = _expect_clean_failure(tiny_overrides(english_set, out, **{"model.d_model": 32}), out,
                                "holds a run with another config")
    assert "model.d_model: 64 -> 32" in msg
    other = MiniModel(model_config_from("tiny", vocab_size=1024, d_model=32, n_layers=2, ffn_dim=192))
    with pytest.raises(UserError, match=r"tensor model\.embed_tokens\.weight has shape \(1024, 64\)"):
        load_model_weights(other, out / "checkpoints" / "step_10" / "model.safetensors")


def test_wandb_offline_needs_no_network(english_set, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    run(load_config(None, tiny_overrides(english_set, out, **{"train.steps": 10, "tracking.wandb": True})))
    offline_runs = list((out / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and any(offline_runs[0].glob("*.wandb"))
    assert len([m for m in read_metrics(out) if "loss" in m]) == 2  # metrics.jsonl is kept as well
