"""The SFT stage: loss only on assistant tokens, full fine-tuning of a core (Muon), LoRA on top of a
CPT result (the reference recipe's second stage)."""
import pytest
import torch
import torch.nn.functional as F
from conftest import read_docs
from test_cpt_fixtures import bilingual, stage_overrides  # noqa: F401

from data_prep.sft import prepare_sft, read_sft
from minimodel.common.errors import UserError
from minimodel.common.io import tomllib  # tomli on Python 3.10
from minimodel.config import CptConfig, StageConfig, load_config
from minimodel.data.windows import SFTExamples
from minimodel.models.loading import load
from minimodel.sft import run
from minimodel.train.tracking import read_metrics


@pytest.fixture(scope="module")
def sft_set(bilingual, tmp_path_factory):
    """Alpaca-style records from real verses: continue a passage (Korean and English)."""
    recs = []
    for lang, name in (("ko", "korean_1961.jsonl"), ("en", "english_web.jsonl")):
        for i, doc in enumerate(read_docs(name)[:40]):
            lines = [line for line in doc.split("\n") if line.strip()]
            recs.append((f"{lang}{i}", {"id": f"{lang}{i}", "instruction": "Continue the passage.",
                                        "input": lines[0][:40], "output": " ".join(lines[1:3])[:80]}))
    out = tmp_path_factory.mktemp("sft") / "set"
    prepare_sft(out, bilingual["tok_shared"], recs, val_fraction=0.15)
    return out


def test_targets_cover_assistant_tokens_only(sft_set, bilingual):
    data = SFTExamples(sft_set, "train", 128)
    examples = read_sft(sft_set, "train")
    x, y = data.batch([0, 1, 2])
    for row, (ids, mask) in enumerate(examples[:3]):
        n = min(len(ids), 129)
        assert torch.equal(x[row, :n - 1], torch.as_tensor(ids[:n - 1], dtype=torch.long))
        want = torch.where(torch.as_tensor(mask[1:n]) == 1, torch.as_tensor(ids[1:n], dtype=torch.long), -100)
        assert torch.equal(y[row, :n - 1], want)
        assert (y[row, n - 1:] == -100).all()  # padding never counts
        assert 0 < (want != -100).sum() < n - 1  # some, not all, tokens carry loss
    # the model's loss is the mean cross-entropy over exactly those positions
    base = load(str(bilingual["core"]))
    with torch.no_grad():
        logits = base(x)
        loss = base(x, y)
    keep = y != -100
    assert torch.allclose(loss, F.cross_entropy(logits[keep], y[keep]), atol=1e-5)


def test_batches_pad_only_as_far_as_their_longest_example(sft_set, bilingual):
    """A batch is as wide as its longest example needs (in steps of PAD_TO), and its loss is the loss of
    the same rows padded to seq_len: right padding is neither a target nor seen by a real token."""
    from minimodel.data.windows import IGNORE, PAD_TO

    data = SFTExamples(sft_set, "train", 512)
    lengths = [len(ids) for ids, _ in read_sft(sft_set, "train")]
    ks = [0, 1, 2, 3]
    x, y = data.batch(ks)
    need = max(lengths[k] for k in ks) - 1
    assert x.shape[1] % PAD_TO == 0 and need <= x.shape[1] < need + PAD_TO and x.shape[1] < 512
    full = [data.example(k) for k in ks]  # the rows as padded to seq_len+1
    fx = torch.stack([torch.as_tensor(i[:-1]) for i, _ in full])
    fy = torch.stack([torch.as_tensor(i[1:]).masked_fill(torch.as_tensor(m[1:]) == 0, IGNORE) for i, m in full])
    assert torch.equal(fx[:, :x.shape[1]], x) and torch.equal(fy[:, :y.shape[1]], y)
    assert (fy[:, y.shape[1]:] == IGNORE).all()  # nothing cut carried loss
    base = load(str(bilingual["core"]))
    with torch.no_grad():
        assert torch.allclose(base(x, y), base(fx, fy), atol=1e-5)


def test_full_finetune_sft_of_a_core_with_muon(sft_set, bilingual, tmp_path):
    out = tmp_path / "sft"
    cfg = load_config(None, stage_overrides(bilingual["core"], sft_set, out, **{
        "lora.enabled": False, "optim.name": "muon", "optim.lr": 0.01, "optim.adam_lr": 3e-3,
        "data.seq_len": 128, "eval.sets": str(bilingual["en"]), "train.steps": 16, "train.eval_every": 8}),
        cls=StageConfig)
    run(cfg)
    evals = [m for m in read_metrics(out) if "val_bpb_sft" in m]
    assert [m["step"] for m in evals] == [0, 8, 16] and all("val_bpb_en" in m for m in evals)
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.3
    assert (out / "final" / "minimodel.json").is_file() and not (out / "adapter").exists()
    assert tomllib.loads((out / "config.toml").read_text())["run"]["stage"] == "sft"


def test_lora_sft_on_top_of_a_cpt_result(sft_set, bilingual, tmp_path):
    from minimodel.cpt import run as cpt_run

    cpt = tmp_path / "cpt"
    cpt_run(load_config(None, stage_overrides(bilingual["core"], bilingual["ko"], cpt, **{
        "replay.path": str(bilingual["en"]), "replay.ratio": 0.05, "train.steps": 6}), cls=CptConfig))
    out = tmp_path / "sft"
    run(load_config(None, stage_overrides(cpt, sft_set, out, **{"data.seq_len": 128, "train.steps": 8,
                                                                "train.eval_every": 8}), cls=StageConfig))
    evals = [m for m in read_metrics(out) if "val_bpb_sft" in m]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert tomllib.loads((out / "config.toml").read_text())["run"]["base_kind"] == "native"


def test_sft_rejects_pretraining_shards(bilingual, tmp_path):
    with pytest.raises(UserError, match="expected 'minimodel-sft-v1'"):
        run(load_config(None, stage_overrides(bilingual["core"], bilingual["en"], tmp_path / "x"), cls=StageConfig))
