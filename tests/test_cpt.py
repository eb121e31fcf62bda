"""The continued-pretraining stage on real bilingual text: replay mixing, both languages' bits per
byte logged, LoRA vs full fine-tuning, vocabulary extension, outputs, resume, bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT
from safetensors.torch import load_file
from test_cpt_fixtures import bilingual, stage_overrides  # noqa: F401

from minimodel.common.errors import UserError
from minimodel.common.io import tomllib  # tomli on Python 3.10
from minimodel.config import CptConfig, load_config
from minimodel.cpt import run
from minimodel.data.replay import ReplayStream
from minimodel.data.windows import TokenShards
from minimodel.models.loading import load
from minimodel.train.tracking import read_metrics


def cfg_for(base, data, out, **extra):
    return load_config(None, stage_overrides(base, data, out, **extra), cls=CptConfig)


@pytest.mark.parametrize("ratio", [0.05, 0.25, 0.5])
def test_replay_ratio_is_exact_and_resumable(bilingual, ratio):
    ko = TokenShards(bilingual["ko"], "train", 32)
    en = TokenShards(bilingual["en"], "train", 32)
    en_windows = {tuple(en.window(k)) for k in range(en.n_windows)}
    stream = ReplayStream(ko, en, ratio, seed=3)
    rows = []
    for _ in range(25):
        x, y = stream.next_batch(8)
        rows += [tuple(np.concatenate([r[:1], s])) for r, s in zip(x.numpy(), y.numpy())]
    replayed = [r in en_windows for r in rows]
    for n in (20, 100, 200):  # exact in every prefix, not only on average
        assert sum(replayed[:n]) == int(n * ratio)
    # resume at a position, and two ranks together, give the same windows
    resumed = ReplayStream(ko, en, ratio, seed=3, position=80)
    x, _ = resumed.next_batch(8)
    assert [tuple(r) for r in x.numpy()] == [r[:-1] for r in rows[80:88]]
    r0, r1 = (ReplayStream(ko, en, ratio, seed=3, rank=k, world_size=2) for k in (0, 1))
    both = torch.stack([r0.next_batch(4)[0], r1.next_batch(4)[0]], dim=1).reshape(8, -1)
    assert [tuple(r) for r in both.numpy()] == [r[:-1] for r in rows[:8]]


def test_lora_cpt_with_replay_end_to_end(bilingual, tmp_path):
    out = tmp_path / "cpt"
    result = run(cfg_for(bilingual["core"], bilingual["ko"], out, **{
        "replay.path": str(bilingual["en"]), "replay.ratio": 0.25}))
    assert result["step"] == 12
    metrics = read_metrics(out)
    evals = [m for m in metrics if "val_bpb_ko" in m]
    assert [m["step"] for m in evals] == [0, 6, 12]
    assert all("val_bpb_en" in m and m["val_bpb"] == m["val_bpb_ko"] for m in evals)
    assert evals[-1]["val_bpb_ko"] < evals[0]["val_bpb_ko"] - 0.3  # it learns the new language
    assert {"adapter_config.json", "adapter_model.safetensors", "embeddings.safetensors", "tokenizer.model",
            "minimodel_adapter.json"} <= {p.name for p in (out / "adapter").iterdir()}
    resolved = tomllib.loads((out / "config.toml").read_text())
    assert resolved["run"]["stage"] == "cpt" and resolved["run"]["tokenizer"] == "same"
    assert resolved["replay"]["ratio"] == 0.25 and resolved["lora"]["rank"] == 8
    assert resolved["run"]["trainable_params"] < resolved["run"]["params"] / 2
    # checkpoints hold the trainable tensors only (the base is reloaded from its source)
    ckpt = load_file(next((out / "checkpoints").iterdir()) / "model.safetensors")
    assert all("lora_" in k or "embed_tokens" in k for k in ckpt)
    # the adapter on its base gives the merged model's logits; the merged final/ is a base again
    x = torch.randint(4, 1024, (2, 20))
    merged = load(str(out)).eval()
    adapted = load(out / "adapter", merge=False)
    with torch.no_grad():
        assert torch.allclose(adapted(x), merged(x), atol=1e-5)
    assert merged.core().lm_head.weight is merged.core().model.embed_tokens.weight  # the tie survives


def test_full_finetune_and_resume_is_exact(bilingual, tmp_path):
    """lora.enabled=false trains every weight; a stopped run resumes to the same result."""
    extra = {"lora.enabled": False, "optim.lr": 1e-3, "replay.path": str(bilingual["en"]), "replay.ratio": 0.05}
    run(cfg_for(bilingual["core"], bilingual["ko"], tmp_path / "a", **extra))
    first = run(cfg_for(bilingual["core"], bilingual["ko"], tmp_path / "b", **extra, **{"train.stop_at_step": 6}))
    assert first["step"] == 6 and not (tmp_path / "b" / "final").exists()
    run(cfg_for(bilingual["core"], bilingual["ko"], tmp_path / "b", **extra))
    a, b = (load_file(tmp_path / d / "final" / "model.safetensors") for d in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    base = load_file(bilingual["core"] / "final" / "model.safetensors")
    assert all(not torch.equal(base[k], a[k]) for k in base)  # every tensor moved
    assert not (tmp_path / "a" / "adapter").exists()


def test_vocabulary_extension_in_cpt(bilingual, tmp_path):
    out = tmp_path / "ext"
    run(cfg_for(bilingual["core_en"], bilingual["ko_ext"], out, **{
        "replay.path": str(bilingual["en_ext"]), "replay.ratio": 0.05, "train.steps": 6}))
    resolved = tomllib.loads((out / "config.toml").read_text())["run"]
    assert resolved["tokenizer"] == "extended" and resolved["vocab_old_vocab"] == 512
    final = json.loads((out / "final" / "minimodel.json").read_text())
    assert final["vocab_size"] == resolved["vocab_new_vocab"] > 512
    assert (out / "final" / "tokenizer.model").read_bytes() == bilingual["tok_ext"].read_bytes()
    x = torch.randint(4, final["vocab_size"], (1, 16))
    with torch.no_grad():
        assert torch.allclose(load(out / "adapter", merge=False)(x), load(str(out)).eval()(x), atol=1e-5)
    # evaluated through its adapter (trained embeddings, grown vocabulary), or through a run directory
    # without final/, the model is the merged final/: same logits, same bits per byte
    from eval.bpb import bits_per_byte, parse_set
    from eval.models import load_model

    held = parse_set(f"ko={bilingual['ko_ext']}:val")
    merged = load_model(out, device="cpu", context=64)
    via_adapter = load_model(out / "adapter", device="cpu", context=64)
    assert via_adapter.source.kind == "adapter" and via_adapter.config.vocab_size == final["vocab_size"]
    assert torch.allclose(via_adapter.logits(x), merged.logits(x), atol=1e-5)
    want = bits_per_byte(merged, held)["bpb"]
    assert bits_per_byte(via_adapter, held)["bpb"] == pytest.approx(want, rel=1e-5)
    (out / "final").rename(out / "final_moved")
    via_run = load_model(out, device="cpu")
    assert via_run.source.kind == "adapter" and via_run.context == 64  # the run's own seq_len
    assert bits_per_byte(via_run, held)["bpb"] == pytest.approx(want, rel=1e-5)


def test_bad_input_fails_before_training(bilingual, tmp_path):
    core, ko = bilingual["core"], bilingual["ko"]
    with pytest.raises(UserError, match="replay set .* another tokenizer"):
        run(cfg_for(core, ko, tmp_path / "r", **{"replay.path": str(bilingual["en_base"]), "replay.ratio": 0.05}))
    with pytest.raises(UserError, match="does not match base"):
        run(cfg_for(core, bilingual["ko_ext"], tmp_path / "t"))
    with pytest.raises(UserError, match=r"\['qkv'\] do not exist in the base; its linear layers are \['down_proj'"):
        run(cfg_for(core, ko, tmp_path / "m", **{"lora.target_modules": "q_proj,qkv"}))
    with pytest.raises(UserError, match="lora.rank must be > 0"):
        cfg_for(core, ko, tmp_path / "k", **{"lora.rank": 0})
    with pytest.raises(UserError, match="replay.path is empty"):
        cfg_for(core, ko, tmp_path / "p", **{"replay.ratio": 0.05})
    assert not any((tmp_path / d / "checkpoints").exists() for d in "rtm")


def test_cli_reports_bad_input_in_one_line(bilingual, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "minimodel.cpt",
                        *stage_overrides(bilingual["core"], bilingual["ko"], tmp_path / "x", **{"lora.rank": -4})],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == "error: config key lora.rank must be > 0, got -4"


def test_a_cpt_run_opens_the_data_tokenizer_once(bilingual, tmp_path, monkeypatch):
    """The data's tokenizer travels as one opened object (StageData.tokenizer): the stage, the vocabulary
    check, bits per byte, the adapter and the merged export all use it, none re-reads the file."""
    import sentencepiece as spm

    opened, real_load = [], spm.SentencePieceProcessor.Load

    def load(self, model_file=None, model_proto=None):
        opened.append(Path(model_file).resolve() if model_file else None)
        return real_load(self, model_file=model_file, model_proto=model_proto)

    monkeypatch.setattr(spm.SentencePieceProcessor, "Load", load)
    data_tok = (bilingual["ko"] / "tokenizer.model").resolve()
    run(cfg_for(bilingual["core"], bilingual["ko"], tmp_path / "cpt", **{
        "replay.path": str(bilingual["en"]), "replay.ratio": 0.25, "train.steps": 2, "train.eval_every": 2}))
    assert (tmp_path / "cpt" / "final").is_dir() and (tmp_path / "cpt" / "adapter").is_dir()
    assert opened.count(data_tok) == 1, opened
