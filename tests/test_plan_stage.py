"""Planning adapter stages (CPT/SFT) and the ablation: counts checked against peft, memory sane."""
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from minimodel.common.errors import UserError
from minimodel.config import CptConfig, load_config
from minimodel.nn.model import MiniModel, model_config_from
from scripts.plan import estimate
from scripts.plan_stage import base_model_config, lora_params

MISTRAL_7B = {"model_type": "mistral", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
              "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 14336, "vocab_size": 32768,
              "tie_word_embeddings": False, "max_position_embeddings": 32768}


@pytest.fixture
def tiny_run(tmp_path):
    cfg = model_config_from("tiny", vocab_size=1024, d_model=64, n_layers=2, ffn_dim=192)
    (tmp_path / "run" / "final").mkdir(parents=True)
    (tmp_path / "run" / "final" / "minimodel.json").write_text(json.dumps(cfg.to_dict()))
    return tmp_path / "run", cfg


def test_lora_count_matches_peft(tiny_run):
    from peft import LoraConfig, get_peft_model

    run, cfg = tiny_run
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(MiniModel(cfg), LoraConfig(r=8, target_modules=targets))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert lora_params(base_model_config(str(run)), 8, targets) == trainable


def test_lora_plan_needs_less_memory_than_full_finetuning(tiny_run):
    run, cfg = tiny_run
    common = [f"base.path={run}", "data.seq_len=128", "train.micro_batch=4", "lora.rank=8"]
    lora = estimate(load_config(None, common, cls=CptConfig))
    full = estimate(load_config(None, common + ["lora.enabled=false"], cls=CptConfig))
    n = MiniModel(cfg).num_params()
    assert lora["params"] == full["params"] == n
    embed = cfg.vocab_size * cfg.d_model
    assert lora["stage"]["trainable"] == lora["stage"]["lora"] + embed  # tied: one matrix
    assert full["stage"]["trainable"] == n
    mem = lambda p, k: p["memory_per_gpu_gib"][k]  # noqa: E731
    assert mem(lora, "optimizer") < mem(full, "optimizer") and mem(lora, "grads") < mem(full, "grads")
    assert lora["flops_per_token"] < full["flops_per_token"]


def test_7b_recipe_fits_a_24gb_card_only_with_4bit_and_checkpointing(tmp_path):
    (tmp_path / "m7b").mkdir()
    (tmp_path / "m7b" / "config.json").write_text(json.dumps(MISTRAL_7B))
    cfg_path = ROOT / "recipes" / "configs" / "cpt_7b_unsloth.toml"
    qlora = estimate(load_config(cfg_path, [f"base.path={tmp_path / 'm7b'}"], cls=CptConfig), "4090")
    assert 7.0e9 < qlora["params"] < 7.4e9 and qlora["fits"]
    assert 14 < qlora["memory_per_gpu_gib"]["total"] < 24
    peft_fp32 = estimate(load_config(cfg_path, [f"base.path={tmp_path / 'm7b'}", "lora.backend=peft",
                                                "lora.load_in_4bit=false"],
                                     cls=CptConfig), "4090")
    assert not peft_fp32["fits"]


def test_hub_base_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="point base.path at a local directory"):
        base_model_config("someone/some-model")


def test_hub_failures_are_user_errors_and_bugs_keep_their_traceback(monkeypatch):
    """model_shape turns what hf_hub_download raises for a hub it cannot use (no such repo, the network)
    into the config.json error; anything else (a bug) is not dressed up as a hub problem."""
    import httpx
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    response = httpx.Response(404, request=httpx.Request("GET", "https://huggingface.co/someone/some-model"))
    raised = [RepositoryNotFoundError("404 Client Error", response=response), httpx.ProxyError("no proxy")]

    def fake_download(*args, **kwargs):
        raise raised.pop(0)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    for name in ("RepositoryNotFoundError", "ProxyError"):
        with pytest.raises(UserError, match=rf"cannot read its config.json from the hub \({name}\)"):
            base_model_config("someone/some-model")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: None + 1)
    with pytest.raises(TypeError):
        base_model_config("someone/some-model")


def test_plan_recipes_touch_nothing(tiny_run, tmp_path):
    run, _ = tiny_run
    env = {**os.environ, "PLAN": "1", "PY": sys.executable, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "DATA_DIR": str(tmp_path / "data"), "OUT": str(tmp_path / "out")}
    r = subprocess.run(["bash", "recipes/cpt_lora.sh"], env={**env, "BASE": str(run)}, cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "adapter" in r.stdout and "fits" in r.stdout
    r = subprocess.run(["bash", "recipes/ablation.sh"], env={**env, "DATA": str(tmp_path / "data" / "x")},
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout.strip().splitlines()[-1])
    assert plan["runs"] == 4 * (5 + 1) and plan["fits"]
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()


def test_a_base_that_is_not_there_is_named_at_once(tmp_path, monkeypatch):
    """A local path that does not exist yet, or a hub id with the hub offline: 'base not found
    locally', without asking the hub (the no_network fixture would turn any attempt into another error)."""
    from minimodel.models.loading import resolve

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"^base not found locally: runs/core_104m \(runs/ exists here"):
        base_model_config("runs/core_104m")
    with pytest.raises(UserError, match=r"^model not found locally: runs/core_104m"):
        resolve("runs/core_104m")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"^base not found locally: someone/some-model \(no such directory, and the "
                                        r"hub is offline"):
        base_model_config("someone/some-model")
    env = {**os.environ, "PLAN": "1", "PY": sys.executable, "PYTHONPATH": str(ROOT), "OUT": str(tmp_path / "out")}
    env.pop("HF_HUB_OFFLINE")
    for recipe, extra, named in (("cpt_lora.sh", {}, tmp_path / "out" / "core_104m"),
                                 ("sft.sh", {"BASE": "runs/cpt_x"}, "runs/cpt_x")):
        r = subprocess.run(["bash", str(ROOT / "recipes" / recipe)], env={**env, **extra}, cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and r.stderr.startswith(f"error: base not found locally: {named} ("), r.stderr


REFERENCE_BASES = ["mistralai/Mistral-7B-v0.3", "meta-llama/Llama-3.2-1B", "Qwen/Qwen3-0.6B",
                   "HuggingFaceTB/SmolLM2-360M", "google/gemma-3-270m"]


@pytest.mark.parametrize("base", REFERENCE_BASES)
def test_reference_bases_plan_offline_with_peak_and_fits(base, monkeypatch, capsys):
    """The kit carries the reference bases' config.json: `scripts.plan CONFIG --gpu 4090 --json` works with the
    hub offline, and base.dtype=auto plans their frozen weights in bf16 (their checkpoints' dtype)."""
    from scripts.plan import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    main([str(ROOT / "recipes" / "configs" / "cpt_hf_base.toml"), f"base.path={base}", "--gpu", "4090", "--json"])
    plan = json.loads(capsys.readouterr().out)
    assert plan["stage"]["frozen_bytes_per_param"] == 2.0 and isinstance(plan["fits"], bool)
    assert 0 < plan["peak_gib"] == pytest.approx(plan["memory_per_gpu_gib"]["total"])
    fp32 = estimate(load_config(ROOT / "recipes" / "configs" / "cpt_hf_base.toml",
                                [f"base.path={base}", "base.dtype=fp32"], cls=CptConfig))
    assert fp32["memory_per_gpu_gib"]["weights"] > plan["memory_per_gpu_gib"]["weights"]


def test_the_7b_recipe_fits_24gb_in_nf4_with_checkpointing_and_not_in_bf16(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg_path = ROOT / "recipes" / "configs" / "cpt_7b.toml"
    nf4 = estimate(load_config(cfg_path, cls=CptConfig), "4090")
    assert nf4["fits"] and nf4["grad_checkpoint"] and 3 < nf4["margin_gib"] < 10  # auto switched it on
    assert 7.0e9 < nf4["params"] < 7.4e9 and nf4["stage"]["trainable"] == pytest.approx(604e6, rel=0.01)
    bf16 = estimate(load_config(cfg_path, ["base.quantize=none"], cls=CptConfig), "4090")
    assert not bf16["fits"] and bf16["grad_checkpoint"] and bf16["peak_gib"] > 24
    off = estimate(load_config(cfg_path, ["train.grad_checkpoint=false"], cls=CptConfig), "4090")
    assert not off["fits"] and off["memory_per_gpu_gib"]["activations"] > 10


def test_recipe_mistral7b_plans_the_peft_path_offline(tmp_path):
    env = {**os.environ, "PLAN": "1", "PY": sys.executable, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "RECIPE": "mistral7b", "PLAN_ARGS": "--json", "MISTRAL_CONFIG": "recipes/configs/cpt_7b.toml",
           "DATA_DIR": str(tmp_path / "data"), "OUT": str(tmp_path / "out")}
    r = subprocess.run(["bash", "recipes/cpt_lora.sh"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout.strip().splitlines()[-1])
    assert plan["config"] == "recipes/configs/cpt_7b.toml" and plan["fits"] and plan["peak_gib"] < 24
    assert not (tmp_path / "data").exists()


# published parameter counts of the reference bases (their model cards / safetensors metadata)
PUBLISHED_PARAMS = {"mistralai/Mistral-7B-v0.3": 7_248_023_552, "meta-llama/Llama-3.2-1B": 1_235_814_400,
                    "Qwen/Qwen3-0.6B": 596_049_920, "HuggingFaceTB/SmolLM2-360M": 361_821_120,
                    "HuggingFaceTB/SmolLM2-135M": 134_515_008, "google/gemma-3-270m": 268_098_176}


@pytest.mark.parametrize("base", sorted(PUBLISHED_PARAMS))
def test_carried_reference_shapes_are_the_published_models(base):
    """The carried config.json builds (on the meta device) the model transformers would load, with its
    published parameter count; the planner's count of the same shape is within 0.1% (Gemma's extra norms)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from minimodel.models.loading import reference_config

    raw = json.loads(reference_config(base).read_text())
    with torch.device("meta"):
        net = AutoModelForCausalLM.from_config(AutoConfig.for_model(**raw))
    assert sum(p.numel() for p in net.parameters()) == PUBLISHED_PARAMS[base]
    planned = estimate(load_config(None, [f"base.path={base}"], cls=CptConfig))["params"]
    assert planned == pytest.approx(PUBLISHED_PARAMS[base], rel=1e-3)
