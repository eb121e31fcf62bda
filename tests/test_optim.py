"""Optimizer groups cover every parameter once; schedules have their shapes."""
import pytest
import torch

from minimodel.config import OptimConfig
from minimodel.nn.model import MiniModel, model_config_from
from minimodel.train.optim import assert_coverage, build_optimizers, lr_multiplier


@pytest.mark.parametrize("tied", [True, False])
def test_muon_holds_only_hidden_matrices(tied):
    model = MiniModel(model_config_from("tiny", tie_embeddings=tied))
    muon, adamw = build_optimizers(model, OptimConfig(name="muon"))
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    muon_names = set(muon.param_groups[0]["param_names"])
    assert muon_names and all(n.startswith("model.layers.") and n.endswith("proj.weight") for n in muon_names)
    adam_names = {n for g in adamw.param_groups for n in g["param_names"]}
    assert "model.embed_tokens.weight" in adam_names
    assert ("lm_head.weight" in adam_names) == (not tied)
    assert all(("norm" in n) for g in adamw.param_groups if g["weight_decay"] == 0 for n in g["param_names"])
    all_names = {n for n, _ in model.named_parameters()}
    assert muon_names | adam_names == all_names and not muon_names & adam_names
    assert muon.param_groups[0]["adjust_lr_fn"] == "match_rms_adamw"


def test_adamw_baseline_is_one_optimizer_over_everything():
    model = MiniModel(model_config_from("tiny"))
    (opt,) = build_optimizers(model, OptimConfig(name="adamw", lr=1e-3))
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    assert {g["lr"] for g in opt.param_groups} == {1e-3}


def test_coverage_assertion_catches_gaps_and_embeddings_in_muon():
    model = MiniModel(model_config_from("tiny"))
    muon, adamw = build_optimizers(model, OptimConfig(name="muon"))
    adamw.param_groups[1]["params"].pop()  # drop a norm gain
    with pytest.raises(AssertionError, match="no optimizer group"):
        assert_coverage(model, [muon, adamw])
    bad = torch.optim.Muon(list(model.named_parameters())[:1], lr=0.01)  # the embedding
    with pytest.raises(AssertionError, match="Muon must hold only"):
        assert_coverage(model, [bad])


def test_schedules():
    cos = OptimConfig(schedule="cosine", warmup_steps=10, min_lr_frac=0.1)
    assert lr_multiplier(0, 100, cos) == pytest.approx(0.1)
    assert lr_multiplier(9, 100, cos) == pytest.approx(1.0)
    assert lr_multiplier(55, 100, cos) == pytest.approx(0.55, abs=0.01)
    assert lr_multiplier(99, 100, cos) == pytest.approx(0.1, abs=0.01)
    wsd = OptimConfig(schedule="wsd", warmup_steps=10, decay_frac=0.2, min_lr_frac=0.0)
    assert [lr_multiplier(s, 100, wsd) for s in (10, 50, 79)] == [1.0, 1.0, 1.0]
    assert lr_multiplier(89, 100, wsd) == pytest.approx(0.5)
    assert lr_multiplier(99, 100, wsd) == pytest.approx(0.0)
    values = [lr_multiplier(s, 100, cos) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(values, values[1:]))
