"""The planner (scripts/plan.py, scripts/gpus.py) and the pretraining recipe's wiring
(recipes/lib.sh, recipes/pretrain_core.sh): PLAN=1 offline, and a tiny CPU run through torchrun."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minimodel.common.errors import UserError
from minimodel.common.io import tomllib  # tomli on Python 3.10
from minimodel.config import load_config
from minimodel.nn.flops import flops_per_token
from minimodel.nn.model import MiniModel, model_config_from
from scripts import plan
from scripts.gpus import GPUS, get_gpu

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "recipes" / "configs" / "core_104m.toml"
BASELINE = ROOT / "recipes" / "configs" / "core_104m_baseline.toml"
FIXTURE = ROOT / "tests" / "fixtures" / "english_web.jsonl"


def small(**extra):
    base = {"model.preset": "tiny", "model.vocab_size": 512, "data.seq_len": 64, "train.steps": 7,
            "train.micro_batch": 3, "train.grad_accum": 5, "train.eval_every": 1000}
    base.update(extra)
    return load_config(None, [f"{k}={v}" for k, v in base.items()])


@pytest.mark.parametrize("tie,qk", [(True, True), (False, False)])
def test_params_equal_the_models_count(tie, qk):
    cfg = small(**{"model.tie_embeddings": str(tie).lower(), "model.qk_norm": str(qk).lower()})
    p = plan.estimate(cfg, "4090", 1)
    real = MiniModel(cfg.model_config())
    assert p["params"] == real.num_params()
    assert p["params_hidden"] + p["params_other"] == p["params"]
    assert p["params_hidden"] == sum(t.numel() for n, t in real.named_parameters()
                                     if t.ndim == 2 and "embed_tokens" not in n and "lm_head" not in n)


def test_tokens_and_flops_arithmetic():
    cfg = small()
    p = plan.estimate(cfg, "h100", 4)
    assert p["tokens_per_step"] == 3 * 64 * 5 * 4
    assert p["total_tokens"] == 7 * 3 * 64 * 5 * 4
    m = cfg.model_config()
    assert p["train_flops"] == flops_per_token(m, p["params"], 64) * p["total_tokens"]
    # Muon runs Newton-Schulz on every hidden matrix each step; AdamW adds no matmul FLOPs
    assert p["optimizer_flops_per_gpu"] > 0
    assert plan.estimate(small(**{"optim.name": "adamw"}), "h100", 4)["optimizer_flops_per_gpu"] == 0
    # more GPUs: same tokens per step when grad_accum shrinks, less time each, plus all-reduce
    one = plan.estimate(small(**{"train.grad_accum": 20}), "h100", 1)
    assert one["total_tokens"] == p["total_tokens"]
    assert p["hours"] < one["hours"]
    h100 = next(r for r in p["gpus"] if r["gpu"] == "h100")
    assert h100["comm_hours"] > 0 and next(r for r in one["gpus"] if r["gpu"] == "h100")["comm_hours"] == 0
    assert h100["usd"] == pytest.approx(h100["hours"] * 4 * GPUS["h100"].usd_per_hour)


def test_mfu_and_price_overrides():
    cfg = small()
    base = plan.estimate(cfg, "4090", 2)
    slow = plan.estimate(cfg, "4090", 2, mfu=base["gpus"][1]["mfu"] / 2, usd_per_gpu_hour=1.0)
    r0 = next(r for r in base["gpus"] if r["gpu"] == "4090")
    r1 = next(r for r in slow["gpus"] if r["gpu"] == "4090")
    assert r1["compute_hours"] == pytest.approx(2 * r0["compute_hours"])
    assert r1["usd"] == pytest.approx(r1["hours"] * 2 * 1.0)
    with pytest.raises(UserError, match="--mfu"):
        plan.estimate(cfg, "4090", 1, mfu=1.5)


def test_memory_grows_with_micro_batch():
    cfg = load_config(CORE)
    m, counts = cfg.model_config(), plan.count_params(cfg.model_config())
    totals = [plan.memory_bytes(cfg, m, counts, mb, 1) for mb in (1, 2, 4, 8, 16)]
    assert all(a["total"] < b["total"] for a, b in zip(totals, totals[1:]))
    assert totals[4]["activations"] == 16 * totals[0]["activations"]  # per-token cost, linear
    assert totals[4]["weights"] == totals[0]["weights"] == 4 * counts.params
    # a second GPU adds DDP's gradient buckets and NCCL buffers
    assert plan.memory_bytes(cfg, m, counts, 4, 2)["total"] > totals[2]["total"]
    # AdamW keeps two states for every parameter, Muon one momentum for hidden matrices
    adamw = load_config(BASELINE)
    assert plan.memory_bytes(adamw, adamw.model_config(), counts, 4, 1)["optimizer"] == 8 * counts.params
    assert totals[2]["optimizer"] == 4 * counts.hidden + 8 * counts.other


@pytest.mark.parametrize("qk_norm", [True, False])
@pytest.mark.parametrize("bf16", [True, False])
def test_activation_formula_matches_what_autograd_saves(qk_norm, bf16):
    """The per-layer formula against the tensors one real decoder layer saves for backward
    (unique storages, parameters excluded); two batch sizes cancel the per-layer constants
    (bf16 weight copies, RoPE tables)."""
    cfg = model_config_from("tiny", d_model=64, n_heads=4, n_kv_heads=2, ffn_dim=192, n_layers=1,
                            qk_norm=qk_norm)
    model = MiniModel(cfg)
    layer, T = model.model.layers[0], 32
    cos, sin = model.model.rotary_emb(torch.arange(T))
    params = {p.untyped_storage().data_ptr() for p in layer.parameters()}

    def saved_bytes(batch):
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        x = torch.randn(batch, T, cfg.d_model, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                layer(x, cos, sin)
        return sum(n for ptr, n in storages.items() if ptr not in params)

    per_token = (saved_bytes(6) - saved_bytes(2)) / (4 * T)
    assert per_token == plan.activation_bytes_per_token_layer(cfg, 2 if bf16 else 4)


def test_104m_at_micro_batch_64_seq_2048_does_not_fit_a_4090(capsys):
    args = [str(CORE), "--gpu", "4090", "train.micro_batch=64", "train.grad_accum=1", "data.seq_len=2048"]
    p = plan.main(args)
    out = capsys.readouterr().out
    assert not p["fits"] and "WILL NOT FIT" in out
    s = p["suggestion"]
    assert 1 <= s["micro_batch"] < 64 and s["micro_batch"] * s["grad_accum"] == 64  # same global batch
    assert f"train.micro_batch={s['micro_batch']} train.grad_accum={s['grad_accum']}" in out
    # the suggestion fits, and it is the largest divisor of 64 that does
    cfg = load_config(CORE, [f"train.micro_batch={s['micro_batch']}", f"train.grad_accum={s['grad_accum']}",
                             "data.seq_len=2048"])
    assert plan.estimate(cfg, "4090", 1)["fits"]
    bigger = load_config(CORE, [f"train.micro_batch={2 * s['micro_batch']}", "data.seq_len=2048"])
    assert not plan.estimate(bigger, "4090", 1)["fits"]
    # an 80 GB card holds more of it than a 24 GB one
    rows = {r["gpu"]: r for r in p["gpus"]}
    assert rows["h100"]["max_micro_batch"] > rows["4090"]["max_micro_batch"]


def test_default_104m_config_fits_one_24gb_card():
    p = plan.estimate(load_config(CORE), "4090", 1)
    assert p["fits"] and p["tokens_per_step"] == 512 * 1024
    assert 100e6 < p["params"] < 110e6  # MiniMind2's 104M shape
    assert not plan.estimate(load_config(CORE, ["train.micro_batch=32"]), "4090", 1)["fits"]


def test_json_line(capsys):
    plan.main([str(CORE), "--gpu", "a100", "--n", "8", "--json", "train.grad_accum=4"])
    line = capsys.readouterr().out.strip()
    assert "\n" not in line
    got = json.loads(line)
    assert got["gpu"] == "a100-80gb" and got["n_gpus"] == 8 and got["tokens_per_step"] == 16 * 1024 * 4 * 8
    assert {r["gpu"] for r in got["gpus"]} == set(GPUS)


def test_unknown_gpu_and_bad_config():
    with pytest.raises(UserError, match="known GPUs: 3090, 4090"):
        get_gpu("5090")
    assert get_gpu("RTX 4090").name == "4090" and get_gpu("A100-40GB").name == "a100-40gb"
    r = subprocess.run([sys.executable, "-m", "scripts.plan", str(CORE), "--gpu", "5090"], cwd=ROOT,
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and r.stderr.startswith("error: unknown GPU '5090'")
    with pytest.raises(SystemExit) as e:
        plan.main([str(CORE), "train.micro_batch=0"])
    assert e.value.code == 2


def recipe_env(tmp_path, **extra):
    env = {**os.environ, "PY": sys.executable, "PYTHONPATH": str(ROOT), "OUT": str(tmp_path / "runs"),
           "DATA_DIR": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "WANDB_MODE": "disabled"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.update(extra)
    return env


def test_plan_mode_prints_a_plan_and_touches_nothing(tmp_path):
    repo_run_existed = (ROOT / "runs" / "core_104m").exists()
    r = subprocess.run(["bash", "recipes/pretrain_core.sh"], cwd=ROOT, capture_output=True, text=True,
                       env=recipe_env(tmp_path, PLAN="1", NPROC="1"), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "plan: recipes/configs/core_104m.toml on 1 x 4090" in r.stdout and "fits" in r.stdout
    assert list(tmp_path.iterdir()) == []  # no data prepared, no run directory
    assert (ROOT / "runs" / "core_104m").exists() == repo_run_existed
    # 8 GPUs x 2 nodes: grad_accum shrinks so the global batch stays 512 x 1024 tokens
    r = subprocess.run(["bash", "recipes/pretrain_core.sh"], cwd=ROOT, capture_output=True, text=True,
                       env=recipe_env(tmp_path, PLAN="1", NPROC="4", NNODES="2", GPU="h100",
                                      PLAN_ARGS="--json"), timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert (got["gpu"], got["n_gpus"], got["grad_accum"], got["tokens_per_step"]) == ("h100", 8, 4, 512 * 1024)
    assert list(tmp_path.iterdir()) == []
    r = subprocess.run(["bash", "recipes/pretrain_core.sh"], cwd=ROOT, capture_output=True, text=True,
                       env=recipe_env(tmp_path, PLAN="1", NPROC="3"), timeout=120)
    assert r.returncode == 2 and "GLOBAL_BATCH=512 is not a multiple" in r.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_recipe_runs_its_stages_on_a_local_corpus_under_torchrun(tmp_path):
    """The real wiring on CPU: data_prep.prepare on a local file, then torchrun with 2 processes,
    grad_accum derived from GLOBAL_BATCH, the run directory with config and export."""
    env = recipe_env(tmp_path, NPROC="2", MASTER_PORT=str(free_port()), CORPUS=str(FIXTURE),
                     VOCAB_SIZE="512", VAL_FRACTION="0.1", MICRO_BATCH="2", GLOBAL_BATCH="8", NAME="wired")
    overrides = ["model.preset=tiny", "model.d_model=64", "model.n_layers=2", "model.ffn_dim=192",
                 "data.seq_len=64", "train.steps=4", "train.compile=false", "train.eval_every=2",
                 "train.eval_batches=1", "train.ckpt_every=2", "train.log_every=1", "train.progress=false",
                 "optim.warmup_steps=1"]
    r = subprocess.run(["bash", "recipes/pretrain_core.sh", *overrides], cwd=ROOT, capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    data = tmp_path / "data" / "local"
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["vocab_size"] == 512 and manifest["splits"]["val"]["docs"] > 0
    run = tmp_path / "runs" / "wired"
    resolved = tomllib.loads((run / "config.toml").read_text())
    assert resolved["train"]["grad_accum"] == 2 and resolved["train"]["micro_batch"] == 2  # 8 / (2 x 2)
    assert resolved["run"]["world_size"] == 2 and "commit" in resolved["run"]
    assert resolved["data"]["path"] == str(data) and resolved["model"]["vocab_size"] == 512
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [m for m in metrics if "loss" in m][-1]
    assert last["step"] == 4 and last["tokens"] == 4 * 2 * 64 * 2 * 2  # steps x micro x seq x accum x ranks
    assert any("val_bpb" in m for m in metrics)
    assert (run / "final" / "model.safetensors").is_file() and (run / "final" / "config.json").is_file()


def test_one_meaning_of_the_global_batch(tmp_path, capsys):
    """micro_batch x grad_accum is per GPU everywhere: `--n 8` plans what torchrun runs (8x the
    one-GPU batch, and says so); `--n 8 --global-batch 512` plans what the recipe runs on 8 GPUs."""
    one, eight = plan.main([str(CORE), "--n", "1"]), plan.main([str(CORE), "--n", "8"])
    assert one["global_batch"] == 512 and eight["global_batch"] == 8 * 512
    assert eight["tokens_per_step"] == 8 * one["tokens_per_step"]
    table = capsys.readouterr().out
    assert "= 4,096 seqs" in table and "add --global-batch 512" in table
    kept = plan.main([str(CORE), "--n", "8", "--global-batch", "512"])
    assert (kept["global_batch"], kept["grad_accum"], kept["tokens_per_step"]) == (512, 4, one["tokens_per_step"])
    r = subprocess.run(["bash", "recipes/pretrain_core.sh"], cwd=ROOT, capture_output=True, text=True,
                       env=recipe_env(tmp_path, PLAN="1", NPROC="8", PLAN_ARGS="--json"), timeout=120)
    assert r.returncode == 0, r.stderr
    recipe = json.loads(r.stdout)
    same = ("global_batch", "grad_accum", "tokens_per_step", "total_tokens", "hours", "memory_per_gpu_gib")
    assert {k: recipe[k] for k in same} == {k: kept[k] for k in same}
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        plan.main([str(CORE), "--n", "3", "--global-batch", "512"])
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith("error: --global-batch 512 is not a positive multiple")
