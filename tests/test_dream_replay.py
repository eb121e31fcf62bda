"""Generated ("dream") replay, self-distillation on replay windows and the Fisher anchor
(minimodel.dream, minimodel.forgetting.distill, minimodel.forgetting.anchor, minimodel.forgetting.guard),
on the tiny English core of the bilingual fixtures: the set the base writes, the teacher's logits,
the KL term and its gradient, a CPT run that uses both and resumes exactly, and the bad inputs."""
import json
import os
import subprocess
import sys
import unicodedata

import numpy as np
import pytest
import torch
from conftest import ROOT
from safetensors.torch import load_file
from test_cpt_fixtures import bilingual, stage_overrides  # noqa: F401

from data_prep.shards import check_prepared, read_tokens
from minimodel.common.errors import UserError
from minimodel.config import CptConfig, load_config
from minimodel.cpt import run
from minimodel.data.windows import TokenShards
from minimodel.forgetting.anchor import FisherAnchor, estimate_fisher
from minimodel.forgetting.dream import DreamSettings, write_dream_set
from minimodel.forgetting.guard import ForgettingGuard
from minimodel.models.loading import load
from minimodel.models.lora import apply_lora, full_finetune


def settings(base, **kw) -> DreamSettings:
    return DreamSettings(**{"base": str(base), "tokens": 800, "seq_len": 64, "seed": 0, "batch": 16, **kw})


def latin_share(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    return sum("LATIN" in unicodedata.name(c, "") for c in letters) / max(len(letters), 1)


def test_generated_set_is_a_valid_deterministic_shard_set(bilingual, tmp_path):
    lm = load(bilingual["core"])
    m = write_dream_set(lm, settings(bilingual["core"]), tmp_path / "a", bilingual["tok_shared"])
    check_prepared(tmp_path / "a")  # the loaders' own validation: manifest, tokenizer, shard sizes, ids < vocab
    ids = read_tokens(tmp_path / "a", "train")
    assert m["splits"]["train"]["tokens"] == len(ids) >= 800
    assert m["generator"]["seed"] == 0 and m["generator"]["temperature"] == 1.0
    eos = lm.tokenizer.eos_id
    assert ids[-1] == eos and np.count_nonzero(ids == eos) == m["splits"]["train"]["docs"]  # one EOS per document
    text = lm.tokenizer.decode(ids[ids != eos].tolist())
    assert m["splits"]["train"]["bytes"] > len(ids)  # decodes to real text, not a run of control tokens
    assert latin_share(text) > 0.8  # an English core dreams in Latin script (its Korean pieces stay rare)
    assert m["sample"] and m["sample"][:40] in text
    # the same settings and seed: the same ids; another seed: other ids
    write_dream_set(load(bilingual["core"]), settings(bilingual["core"]), tmp_path / "b", bilingual["tok_shared"])
    assert np.array_equal(read_tokens(tmp_path / "b", "train"), ids)
    write_dream_set(lm, settings(bilingual["core"], seed=1), tmp_path / "c", bilingual["tok_shared"])
    assert not np.array_equal(read_tokens(tmp_path / "c", "train")[:200], ids[:200])
    # a second call with the same settings reuses the set (nothing sampled); other settings are refused
    again = write_dream_set(lm, settings(bilingual["core"]), tmp_path / "a", bilingual["tok_shared"])
    assert again["generation"] == m["generation"]
    with pytest.raises(UserError, match="temperature differ"):
        write_dream_set(lm, settings(bilingual["core"], temperature=0.7), tmp_path / "a", bilingual["tok_shared"])


def test_a_killed_generation_leaves_nothing_and_restarts_to_the_same_set(bilingual, tmp_path, monkeypatch):
    import minimodel.forgetting.dream as dream

    real, calls = dream._continue, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C in the middle of sampling
        return real(*args, **kwargs)

    monkeypatch.setattr(dream, "_continue", interrupted)
    lm = load(bilingual["core"])
    two_batches = settings(bilingual["core"], tokens=1200, batch=8)
    with pytest.raises(KeyboardInterrupt):
        write_dream_set(lm, two_batches, tmp_path / "set", bilingual["tok_shared"])
    assert list(tmp_path.iterdir()) == []  # no set, no temp directory
    monkeypatch.setattr(dream, "_continue", real)
    write_dream_set(lm, two_batches, tmp_path / "set", bilingual["tok_shared"])
    write_dream_set(lm, two_batches, tmp_path / "again", bilingual["tok_shared"])
    assert np.array_equal(read_tokens(tmp_path / "set", "train"), read_tokens(tmp_path / "again", "train"))


def test_prefix_prompts_start_every_sample(bilingual, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("In the beginning\nAnd God said\n\n", encoding="utf-8")
    lm = load(bilingual["core"])
    m = write_dream_set(lm, settings(bilingual["core"], prompts=str(prompts), tokens=400, batch=4),
                        tmp_path / "set", bilingual["tok_shared"])
    ids = read_tokens(tmp_path / "set", "train").tolist()
    docs, cur = [], []
    for i in ids:
        cur.append(i)
        if i == lm.tokenizer.eos_id:
            docs.append(lm.tokenizer.decode(cur[:-1]))
            cur = []
    assert len(docs) == m["splits"]["train"]["docs"] >= 4
    assert [d.startswith(("In the beginning", "And God said")) for d in docs] == [True] * len(docs)
    assert docs[0].startswith("In the beginning") and docs[1].startswith("And God said")


def test_distillation_is_zero_at_the_base_and_its_gradient_reaches_only_trainable_tensors(bilingual):
    torch.manual_seed(0)
    lm = apply_lora(load(bilingual["core"]), 8, 16, 0.0, ["q_proj", "v_proj", "down_proj"])
    model = ForgettingGuard(lm, 1.0, lora=True)
    x = torch.from_numpy(read_tokens(bilingual["en"], "val")[:4 * 33].astype(np.int64)).view(4, 33)
    assert model.distill_loss(x[:, :-1]).item() == 0.0  # fresh LoRA (B = 0), embeddings untouched: the base
    base_logits = load(bilingual["core"]).logits(x[:, :-1])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):  # move adapter and embeddings away from the base
        model(x[:, :-1], x[:, 1:]).backward()
        opt.step()
        opt.zero_grad()
    assert model.distill_loss(x[:, :-1]).item() > 1e-4
    # the teacher (adapter off, embeddings swapped back) is still exactly the base, and the student is restored
    assert torch.equal(model.teacher(x[:, :-1]), base_logits)
    student = lm(x[:, :-1])
    assert not torch.allclose(student, base_logits)
    rows = torch.tensor([True, False, True, False])
    plain = lm(x[:, :-1], x[:, 1:])
    loss = model(x[:, :-1], x[:, 1:], replay_rows=rows)
    assert loss.item() > plain.item()  # CE + weight x KL on the two replay rows
    loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    assert any("lora_" in n for n, p in model.named_parameters() if p.grad is not None)
    assert torch.equal(lm(x[:, :-1]), student)  # the swap left the trained embeddings in place


def test_full_finetuning_distils_from_a_frozen_copy(bilingual):
    lm = full_finetune(load(bilingual["core"]))
    model = ForgettingGuard(lm, 0.5, lora=False)
    x = torch.from_numpy(read_tokens(bilingual["en"], "val")[:2 * 33].astype(np.int64)).view(2, 33)
    assert model.distill_loss(x[:, :-1]).item() == 0.0
    model(x[:, :-1], x[:, 1:], replay_rows=torch.tensor([True, True])).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert all(p.grad is not None for p in lm.parameters())
    torch.optim.SGD(lm.parameters(), lr=0.5).step()
    assert model.distill_loss(x[:, :-1]).item() > 0


def test_fisher_anchor_is_zero_at_the_base_and_holds_important_weights(bilingual, tmp_path):
    write_dream_set(load(bilingual["core"]), settings(bilingual["core"]), tmp_path / "dream", bilingual["tok_shared"])
    dream = TokenShards(tmp_path / "dream", "train", 64)
    torch.manual_seed(0)
    lm = apply_lora(load(bilingual["core"]), 8, 16, 0.0, ["q_proj", "v_proj"])
    fisher = estimate_fisher(lm, dream, 8)
    assert list(fisher) == [n for n, p in lm.named_parameters() if p.requires_grad and "lora_" not in n]
    assert len(fisher) == 1 and all(bool((f >= 0).all()) and f.sum() > 0 for f in fisher.values())  # tied: one
    anchor = FisherAnchor(lm, fisher, 10.0)
    norm = anchor.fisher_0
    assert abs(norm.float().mean().item() - 1) < 1e-4  # normalised: the weight reads like a decay strength
    assert anchor.penalty().item() == 0.0
    model = ForgettingGuard(lm, anchor=anchor)
    ko = TokenShards(bilingual["ko"], "train", 64)

    def trained_embedding_change(m) -> torch.Tensor:
        emb = next(p for n, p in m.named_parameters() if "embed_tokens" in n)
        start = emb.detach().clone()
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=3e-3)
        for k in range(6):
            x, y = ko.batch(list(range(8 * k, 8 * k + 8)))
            m(x, y).backward()
            opt.step()
            opt.zero_grad()
        return (emb.detach() - start).pow(2)

    moved = trained_embedding_change(model)
    assert anchor.penalty().item() > 0
    torch.manual_seed(0)
    free = trained_embedding_change(apply_lora(load(bilingual["core"]), 8, 16, 0.0, ["q_proj", "v_proj"]))
    important = norm > norm.median()  # where the Fisher is high, the anchored run moved less than a free one
    assert moved[important].sum() < 0.8 * free[important].sum()
    model.eval()  # validation: the plain next-token loss, no penalty
    x, y = ko.batch([0, 1])
    assert torch.equal(model(x, y), lm(x, y))


def cpt_cfg(bilingual, out, **extra):
    over = {"replay.source": "generated", "replay.ratio": 0.25, "replay.tokens": 2500, "replay.distill": 1.0,
            "eval.sets": f'["{bilingual["en"]}"]', **extra}
    return load_config(None, stage_overrides(bilingual["core"], bilingual["ko"], out, **over), cls=CptConfig)


def test_cpt_with_generated_replay_distillation_and_anchor_resumes_exactly(bilingual, tmp_path):
    whole = run(cpt_cfg(bilingual, tmp_path / "whole", **{"replay.anchor": 1.0, "replay.fisher_windows": 4}))
    assert whole["step"] == 12
    record = (tmp_path / "whole" / "config.toml").read_text()
    assert "dream_tokens" in record and 'source = "generated"' in record
    m = json.loads((tmp_path / "whole" / "dream" / "manifest.json").read_text())
    assert m["sources"] == [{"generated_by": str(bilingual["core"])}]  # the base, never an English set
    # stopped after step 6 and resumed: the set is reused, the weights are bitwise those of the whole run
    both = {"replay.anchor": 1.0, "replay.fisher_windows": 4}
    run(cpt_cfg(bilingual, tmp_path / "split", **both, **{"train.stop_at_step": 6}))
    made = (tmp_path / "split" / "dream" / "manifest.json").stat().st_mtime_ns
    run(cpt_cfg(bilingual, tmp_path / "split", **both))
    assert (tmp_path / "split" / "dream" / "manifest.json").stat().st_mtime_ns == made
    a = load_file(str(tmp_path / "whole" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_generated_replay_input_fails_before_any_work(bilingual, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(UserError, match=r"replay.tokens > 0 .* replay.tokens=\d+"):
        cpt_cfg(bilingual, out, **{"replay.tokens": 0})
    with pytest.raises(UserError, match="replay.anchor=1.0 estimates its Fisher on a replay set"):
        load_config(None, stage_overrides(bilingual["core"], bilingual["ko"], out, **{"replay.anchor": 1.0}),
                    cls=CptConfig)
    with pytest.raises(UserError, match="replay.distill=0.5 needs replay windows"):
        load_config(None, stage_overrides(bilingual["core"], bilingual["ko"], out, **{"replay.distill": 0.5}),
                    cls=CptConfig)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(UserError, match="holds no prefix"):
        run(cpt_cfg(bilingual, out, **{"replay.prompts": str(empty)}))
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Café au lait\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        run(cpt_cfg(bilingual, out, **{"replay.prompts": str(latin1)}))
    with pytest.raises(UserError, match="prepared data set, not a generated one"):
        run(cpt_cfg(bilingual, out, **{"replay.path": str(bilingual["en"])}))
    assert not out.exists()  # nothing half-written
    no_tok = tmp_path / "no_tok"
    (no_tok / "final").mkdir(parents=True)
    for f in ("model.safetensors", "minimodel.json"):
        (no_tok / "final" / f).write_bytes((bilingual["core"] / "final" / f).read_bytes())
    with pytest.raises(UserError, match="has no tokenizer"):
        write_dream_set(load(no_tok), settings(no_tok), tmp_path / "set")
    assert not (tmp_path / "set").exists()


def test_dream_cli(bilingual, tmp_path):
    cmd = [sys.executable, "-m", "minimodel.dream", "--base", str(bilingual["core"]), "--out",
           str(tmp_path / "d"), "--tokens", "300", "--seq-len", "64", "--batch", "8"]
    ok = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "d" / "manifest.json").read_text())["splits"]["train"]["tokens"] >= 300
    bad = subprocess.run([*cmd[:-4], "--tokens", "0"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: --tokens must be > 0")


def test_forgetting_methods_recipe_on_the_fixtures(bilingual, tmp_path):
    """recipes/forgetting_methods.sh end to end on the tiny base: arms, evaluation, summary, table, plot."""
    config = tmp_path / "cpt.toml"
    config.write_text("""
[lora]
rank = 8
alpha = 16.0
[optim]
lr = 2e-3
warmup_steps = 2
[data]
seq_len = 64
[train]
micro_batch = 8
eval_every = 10
eval_batches = 2
ckpt_every = 10
dtype = "fp32"
progress = false
""")
    out = tmp_path / "methods"
    env = {**os.environ, "PY": sys.executable, "OUT": str(out), "CONFIG": str(config),
           "BASE": str(bilingual["core"]), "EN": str(bilingual["en"]), "KO": str(bilingual["ko"]), "CTX": "64",
           "KO_STEPS": "10", "SEEDS": "0 1", "ARMS": "none data5 gen5 gen5d",
           "EN_HELDOUT": f"{bilingual['en']}:val", "KO_HELDOUT": f"{bilingual['ko']}:val"}  # no heldout.jsonl here
    r = subprocess.run(["bash", "recipes/forgetting_methods.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["arms"]) == {"none", "data 5%", "generated 5%", "generated 5% + distill 1"}
    for a in summary["arms"].values():
        assert a["seeds"] == [0, 1] and len(a["en_bpb_by_seed"]) == 2
        assert a["en_relative"] == pytest.approx(a["en_bpb"] / summary["base"]["en_bpb"] - 1)
        assert a["ko_bpb"] < summary["base"]["ko_bpb"]  # every arm learned some Korean
    gen = summary["arms"]["generated 5%"]
    assert gen["source"] == "generated" and gen["ratio"] == 0.05 and 0 < gen["generation_share"] < 1
    steps = {json.loads(line)["step"] for line in (out / "arms" / "gen5_s0" / "metrics.jsonl").read_text().splitlines()}
    assert max(steps) == 11  # 10 / (1 - 0.05): the same Korean token budget as the no-replay arm's 10 steps
    # the 5% arms with and without distillation shared one dreamed set per seed
    assert sorted(p.name for p in (out / "dream").iterdir()) == ["ratio0.05_s0", "ratio0.05_s1"]
    assert {"generated_vs_real_en_gap_pp", "distill_en_gain_pp", "generation_share_of_wall_time_5pct"} <= set(
        summary["targets"])
    md = (out / "report.md").read_text()
    assert "| generated 5% + distill 1 | generated | 0.05 | 1 | 2 |" in md and "methods.png" in md
    assert (out / "methods.png").stat().st_size > 10_000
