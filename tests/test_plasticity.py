"""The continual-learning mechanisms beyond replay ([plasticity]): each rule on a toy where the answer is known,
then each switch through the CPT stage on real bilingual text, resumed bitwise."""
import json

import pytest
import torch
from safetensors.torch import load_file
from test_cpt_fixtures import bilingual, stage_overrides, tiny_model_config  # noqa: F401

from minimodel.common.errors import UserError
from minimodel.common.io import tomllib  # tomli on Python 3.10
from minimodel.config import CptConfig, load_config
from minimodel.cpt import run
from minimodel.data.windows import TokenShards
from minimodel.forgetting.guard import ForgettingGuard
from minimodel.forgetting.metaplastic import Importance, Metaplasticity, inherited, lora_layers
from minimodel.forgetting.split_lora import SplitLora
from minimodel.forgetting.surprise_rank import allocate_ranks, measure_surprise, rank_pattern
from minimodel.models.causal_lm import CausalLM
from minimodel.models.lora import apply_lora, embedding_weights
from minimodel.nn.model import MiniModel

TARGETS = ["q_proj", "v_proj", "up_proj"]


def lora_model(rank: int = 4, seed: int = 0, pattern: dict | None = None) -> CausalLM:
    torch.manual_seed(seed)
    cfg = tiny_model_config(64)
    lm = CausalLM(MiniModel(cfg), "native", cfg)
    apply_lora(lm, rank, 8.0, 0.0, TARGETS, rank_pattern=pattern)
    with torch.no_grad():  # B starts at zero in peft: give it values so that every factor has a gradient
        for layer in lora_layers(lm.core()).values():
            layer.lora_B["default"].weight.normal_(0, 0.05)
    return lm


# ---- metaplasticity ----

def sgd_step(lm: CausalLM, rule: Metaplasticity, grads: dict, lr: float = 0.1) -> dict:
    """One SGD step with the given gradients, bracketed by the rule; the update each tensor took."""
    params = [p for p in lm.parameters() if p.requires_grad]
    before = {id(p): p.detach().clone() for p in params}
    for p in params:
        p.grad = grads[id(p)].clone()
    opt = torch.optim.SGD(params, lr=lr)
    rule.before_step()
    opt.step()
    rule.after_step()
    return {id(p): p.detach() - before[id(p)] for p in params}


def test_a_parameter_with_high_importance_moves_less():
    lm = lora_model()
    core = lm.core()
    emb = embedding_weights(core)["embed_tokens.weight"]
    key = "model.layers.0.self_attn.q_proj"
    layer = lora_layers(core)[key]
    b, a = layer.lora_B["default"].weight, layer.lora_A["default"].weight
    # token 3 and q_proj's output row 5 / input column 7 carried an earlier stage; nothing else did
    token_rows = torch.zeros(emb.shape[0])
    token_rows[3] = 4.0
    q_rows, q_cols = torch.zeros(b.shape[0]), torch.zeros(a.shape[1])
    q_rows[5], q_cols[7] = 4.0, 1.0
    base = Importance({"embed_tokens": (token_rows, torch.ones(emb.shape[1])), key: (q_rows, q_cols)}, stages=1)
    rule = Metaplasticity(core, embedding_weights(core), base, strength=10.0)
    ones = {id(p): torch.ones_like(p) for p in lm.parameters() if p.requires_grad}
    moved = sgd_step(lm, rule, ones)
    full = -0.1  # what an SGD step of lr 0.1 on a unit gradient moves an element without importance
    assert torch.allclose(moved[id(emb)][3], torch.full_like(emb[3], full / (1 + 10 * 4.0)))
    assert torch.allclose(moved[id(emb)][4], torch.full_like(emb[4], full))
    # the merged update: B's output row 5 and A's input column 7 move less, by their mean importance
    mean_col, mean_row = q_cols.mean(), q_rows.mean()
    assert torch.allclose(moved[id(b)][5], torch.full_like(b[5], full / (1 + 10 * 4.0 * mean_col)))
    assert torch.allclose(moved[id(b)][4], torch.full_like(b[4], full))
    assert torch.allclose(moved[id(a)][:, 7], torch.full_like(a[:, 7], full / (1 + 10 * 1.0 * mean_row)))
    assert torch.allclose(moved[id(a)][:, 6], torch.full_like(a[:, 6], full))
    other = lora_layers(core)["model.layers.0.self_attn.v_proj"].lora_B["default"].weight
    assert torch.allclose(moved[id(other)], torch.full_like(other, full))  # no importance: plain SGD


def test_importance_is_the_path_integral_of_the_updates():
    """With SGD the update is -lr g, so -g x update = lr g^2: summed over B's columns onto W's rows, over A's
    rows onto W's columns, over both for an embedding."""
    lm = lora_model(seed=1)
    core = lm.core()
    rule = Metaplasticity(core, embedding_weights(core), Importance(), strength=10.0)
    torch.manual_seed(2)
    grads = {id(p): torch.randn_like(p) for p in lm.parameters() if p.requires_grad}
    sgd_step(lm, rule, grads, lr=0.1)
    sgd_step(lm, rule, grads, lr=0.1)  # twice: it accumulates
    state = dict(rule.named_buffers())
    for key, role, p, i in rule.tracked:
        g2 = 2 * 0.1 * grads[id(p)] ** 2
        if role in ("B", "E"):
            assert torch.allclose(state[f"row_{i}"], g2.sum(1), rtol=1e-5), key
        if role in ("A", "E"):
            assert torch.allclose(state[f"col_{i}"], g2.sum(0), rtol=1e-5), key
    stage = rule.stage_importance()
    # normalised: the mean importance of an element over every tracked matrix is 1
    sizes = {k: r.numel() * c.numel() for k, (r, c) in stage.factors.items()}
    mean = sum(float(r.mean() * c.mean()) * sizes[k] for k, (r, c) in stage.factors.items()) / sum(sizes.values())
    assert mean == pytest.approx(1.0, rel=1e-5)


def test_importance_of_stages_adds_up():
    row, col = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 0.0, 1.0])
    one = Importance({"w": (row, col)}, stages=1)
    two = one.plus(Importance({"w": (row, col), "v": (col, row)}, stages=1))
    r, c = two.factors["w"]
    assert torch.allclose(torch.outer(r, c), 2 * torch.outer(row, col))  # the same matrix twice: exactly twice
    assert two.stages == 2 and torch.equal(two.factors["v"][0], col)
    # a grown vocabulary: the old stage's new tokens count zero, the total is kept
    grown = Importance({"embed_tokens": (row, col)}, 1).plus(
        Importance({"embed_tokens": (torch.tensor([1.0, 1.0, 4.0]), col)}, 1))
    r, c = grown.factors["embed_tokens"]
    assert r.shape == (3,) and float(torch.outer(r, c).sum()) == pytest.approx(float(col.sum()) * (4 + 6))
    with pytest.raises(UserError, match="another model shape"):
        one.plus(Importance({"w": (torch.ones(5), col)}, 1))


def test_importance_round_trips_and_a_damaged_state_is_named(tmp_path):
    imp = Importance({"w": (torch.tensor([1.0, 2.0]), torch.tensor([0.5]))}, stages=2)
    imp.save(tmp_path, {"strength": 3.0})
    back = inherited(tmp_path)
    assert back.stages == 2 and torch.equal(back.factors["w"][0], imp.factors["w"][0])
    assert inherited(tmp_path / "elsewhere").stages == 0  # a base no metaplastic stage trained: nothing
    (tmp_path / "plasticity" / "importance.json").write_text("{")
    with pytest.raises(UserError, match="importance.json is missing or damaged"):
        inherited(tmp_path)


# ---- surprise-placed ranks ----

def test_a_more_surprised_module_gets_more_rank_at_the_same_budget():
    shapes = {"a": (64, 64), "b": (64, 64), "c": (192, 64), "d": (64, 64)}
    surprise = {"a": 1.0, "b": 4.0, "c": 2.0, "d": 1.0}
    ranks = allocate_ranks(surprise, shapes, rank=8)
    assert ranks["b"] > ranks["c"] > ranks["a"] == ranks["d"]
    width = {n: sum(s) for n, s in shapes.items()}
    budget = 8 * sum(width.values())
    spent = sum(ranks[n] * width[n] for n in shapes)
    assert budget - min(width.values()) < spent <= budget  # the uniform rank's parameters, to a rank
    assert all(2 <= r <= 32 for r in ranks.values())  # within [rank / 4, 4 rank]
    assert allocate_ranks({n: 1.0 for n in shapes}, shapes, rank=8) == {n: 8 for n in shapes}
    bigger = allocate_ranks(surprise, shapes, rank=8, scale=1.5)
    assert sum(bigger[n] * width[n] for n in shapes) > spent


def test_surprise_is_measured_on_real_text_and_reaches_peft(bilingual):
    from minimodel.models.loading import load

    lm = load(str(bilingual["core"]))
    ko, en = TokenShards(bilingual["ko"], "train", 64), TokenShards(bilingual["en"], "train", 64)
    measured = measure_surprise(lm, lm.core(), TARGETS, ko, en, n_windows=3)
    assert len(measured["surprise"]) == 3 * 2  # three targets in two blocks
    assert all(s > 0 for s in measured["surprise"].values())
    assert measured["loss_new"] > measured["loss_known"]  # the English core finds Korean harder
    assert all(not p.requires_grad or p.grad is None for p in lm.parameters())  # measuring leaves no trace
    ranks = allocate_ranks(measured["surprise"], measured["shapes"], rank=8)
    apply_lora(lm, 8, 16.0, 0.0, TARGETS, rank_pattern=rank_pattern(ranks))
    got = {n: layer.lora_A["default"].out_features for n, layer in lora_layers(lm.core()).items()}
    assert got == ranks and len(set(got.values())) > 1


# ---- split LoRA ----

def split_grads(lm: CausalLM, x: torch.Tensor, replay_rows: torch.Tensor) -> dict:
    split = SplitLora(lm.core())
    guard = ForgettingGuard(lm, split=split).train()
    lm.zero_grad(set_to_none=True)
    guard(x[:, :-1], x[:, 1:], replay_rows=replay_rows).backward()
    split.remove()
    return {n: p.grad.clone() for n, p in lm.named_parameters() if p.grad is not None and "lora_" in n}


def halves(name: str, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(new-language half, replay half) of a LoRA factor's gradient: A's rank rows, B's rank columns."""
    h = (g.shape[0] if "lora_A" in name else g.shape[1]) // 2
    return (g[:h], g[h:]) if "lora_A" in name else (g[:, :h], g[:, h:])


def test_split_lora_halves_learn_only_from_their_own_rows():
    lm = lora_model(rank=8, seed=3)
    torch.manual_seed(4)
    x = torch.randint(0, 64, (4, 17))
    on_replay = split_grads(lm, x, torch.ones(4, dtype=torch.bool))
    on_new = split_grads(lm, x, torch.zeros(4, dtype=torch.bool))
    assert len(on_replay) == 2 * 3 * 2
    for name, g in on_replay.items():
        new_half, replay_half = halves(name, g)
        assert torch.count_nonzero(new_half) == 0 and torch.count_nonzero(replay_half) > 0, name
        new_half, replay_half = halves(name, on_new[name])
        assert torch.count_nonzero(replay_half) == 0 and torch.count_nonzero(new_half) > 0, name
    # a mixed batch: each half's gradient is its own rows' share of the plain rank-8 LoRA's gradient
    mixed = torch.tensor([True, False, False, True])
    got = split_grads(lm, x, mixed)
    lm.zero_grad(set_to_none=True)
    guard = ForgettingGuard(lm).train()
    per_row = {}
    for rows in (mixed, ~mixed):  # the loss is a mean over the batch's tokens: each row set's share of it
        lm.zero_grad(set_to_none=True)
        (guard(x[rows, :-1], x[rows, 1:]) * rows.sum() / 4).backward()
        per_row[bool(rows[0])] = {n: p.grad.clone() for n, p in lm.named_parameters() if p.grad is not None
                                  and "lora_" in n}
    for name, g in got.items():
        assert torch.allclose(halves(name, g)[1], halves(name, per_row[True][name])[1], atol=1e-6), name
        assert torch.allclose(halves(name, g)[0], halves(name, per_row[False][name])[0], atol=1e-6), name
    # the model computed is unchanged: the same loss with and without the split
    split = SplitLora(lm.core())
    with torch.no_grad(), split.rows(mixed):
        split_loss = lm(x[:, :-1], x[:, 1:])
    split.remove()
    with torch.no_grad():
        assert torch.equal(split_loss, lm(x[:, :-1], x[:, 1:]))


# ---- through the stage: every switch resumes bitwise ----

SWITCHES = {"metaplastic": {"plasticity.metaplastic": 10.0}, "surprise_rank": {"plasticity.surprise_rank": True,
            "plasticity.surprise_windows": 3}, "split_lora": {"plasticity.split_lora": True}}


def cpt(bilingual, base, out, **extra):
    over = {"replay.path": str(bilingual["en"]), "replay.ratio": 0.25, **extra}
    return run(load_config(None, stage_overrides(base, bilingual["ko"], out, **over), cls=CptConfig))


@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_each_switch_trains_and_resumes_bitwise(bilingual, tmp_path, switch):
    on = SWITCHES[switch]
    whole = tmp_path / "whole"
    cpt(bilingual, bilingual["core"], whole, **on)
    cpt(bilingual, bilingual["core"], tmp_path / "split", **on, **{"train.stop_at_step": 6})
    assert not (tmp_path / "split" / "final").exists()
    cpt(bilingual, bilingual["core"], tmp_path / "split", **on)
    a, b = (load_file(tmp_path / d / "final" / "model.safetensors") for d in ("whole", "split"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    plain = load_file(bilingual["core"] / "final" / "model.safetensors")
    assert any(not torch.equal(plain[k], a[k]) for k in plain)  # it trained
    record = tomllib.loads((whole / "config.toml").read_text())
    if switch == "surprise_rank":
        ranks = {s.split("=")[0]: int(s.split("=")[1]) for s in record["run"]["lora_ranks"]}
        adapter = json.loads((whole / "adapter" / "adapter_config.json").read_text())
        assert len(set(ranks.values())) > 1 and len(adapter["rank_pattern"]) == len(ranks)
    if switch == "metaplastic":
        x, y = (inherited(tmp_path / d) for d in ("whole", "split"))
        assert x.stages == y.stages == 1 and all(torch.equal(x.factors[k][0], y.factors[k][0]) for k in x.factors)
        # the next stage inherits it: it moves its merged matrices less than the same stage without it
        second = {}
        for strength in (0.0, 10.0):
            out = tmp_path / f"next_{strength:g}"
            extra = {"plasticity.metaplastic": strength} if strength else {}
            cpt(bilingual, whole, out, **extra)
            after = load_file(out / "final" / "model.safetensors")
            second[strength] = sum(float((after[k] - a[k]).pow(2).sum()) for k in a if "embed" not in k)
        assert second[10.0] < second[0.0]
        assert inherited(tmp_path / "next_10").stages == 2


def test_bad_plasticity_settings_are_one_clear_line(bilingual, tmp_path):
    def cfg(**extra):
        return load_config(None, stage_overrides(bilingual["core"], bilingual["ko"], tmp_path / "r", **extra),
                           cls=CptConfig)
    with pytest.raises(UserError, match="plasticity.split_lora trains half the ranks on replay windows"):
        cfg(**{"plasticity.split_lora": True})
    with pytest.raises(UserError, match="plasticity.metaplastic acts on a peft LoRA stage"):
        cfg(**{"plasticity.metaplastic": 1.0, "lora.enabled": False})
    with pytest.raises(UserError, match="plasticity.metaplastic must be >= 0"):
        cfg(**{"plasticity.metaplastic": -1.0})
    with pytest.raises(UserError, match="unknown config key plasticity.viscosity"):
        cfg(**{"plasticity.viscosity": 1.0})


# ---- the report: a mechanism arm against its baseline ----

def test_a_mechanism_arm_is_scored_against_the_same_replay_without_it():
    from eval.continual import against_baseline, baseline_of

    def arm(bwt, spread, new_bpb, mechanism=None, ratio=0.25, wall=(100.0, 100.0)):
        return {"source": "data", "ratio": ratio, "distill": 0.0, "anchor": 0.0, "mechanism": mechanism,
                "bwt": bwt, "spread": {"bwt": spread, "en_relative": 0.0}, "en_relative": bwt,
                "final_new_bpb": new_bpb, "wall_s": list(wall)}
    arms = {"real5": arm(0.07, 0.002, 2.3, ratio=0.05), "real25": arm(0.04, 0.002, 2.30),
            "metaplastic_real25": arm(0.03, 0.001, 2.31, "metaplastic", wall=(105.0, 110.0)),
            "split_lora_real25": arm(0.039, 0.001, 2.30, "split_lora"),
            "surprise_rank_real25": arm(0.02, 0.001, 2.40, "surprise_rank")}
    assert baseline_of("metaplastic_real25", arms["metaplastic_real25"], arms) == "real25"
    beats = against_baseline(arms["metaplastic_real25"], arms["real25"])
    assert beats["bwt_gain_pp"] == pytest.approx(1.0) and beats["spread_pp"] == pytest.approx(0.3)
    assert beats["final_new_bpb"] == pytest.approx(0.01 / 2.3) and beats["wall"] == pytest.approx(0.075)
    assert beats["beats"]
    within_noise = against_baseline(arms["split_lora_real25"], arms["real25"])
    assert within_noise["bwt_gain_pp"] < within_noise["spread_pp"] and not within_noise["beats"]
    learns_less = against_baseline(arms["surprise_rank_real25"], arms["real25"])  # +4% new-language bpb
    assert learns_less["bwt_gain_pp"] > learns_less["spread_pp"] and not learns_less["beats"]
