"""Fuzzed configs and overrides: a valid RunConfig or a one-line UserError, never another exception."""
import math
import re
from typing import get_type_hints

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minimodel.common.errors import UserError
from minimodel.config import CptConfig, RunConfig, build_config, load_config

SECTIONS = ["model", "optim", "data", "train", "tracking", "base", "lora", "replay", "eval", "bogus"]
KEYS = ["preset", "d_model", "n_heads", "vocab_size", "lr", "name", "schedule", "steps", "micro_batch",
        "seq_len", "path", "dtype", "wandb", "rank", "ratio", "target_modules", "qk_norm", "nope"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.lists(st.text(max_size=5), max_size=3))
tables = st.dictionaries(st.sampled_from(SECTIONS),
                         st.one_of(scalars, st.dictionaries(st.sampled_from(KEYS), scalars, max_size=4)),
                         max_size=4)


def _one_line_user_error(fn, *args, **kw):
    try:
        fn(*args, **kw)
    except UserError as e:
        assert str(e) and "\n" not in str(e)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=tables, cls=st.sampled_from([RunConfig, CptConfig]))
def test_any_table_is_valid_or_a_user_error(raw, cls):
    _one_line_user_error(build_config, raw, cls=cls)


@settings(max_examples=300, deadline=None)
@given(items=st.lists(st.one_of(st.text(max_size=20),
                                st.builds(lambda s, k, v: f"{s}.{k}={v}", st.sampled_from(SECTIONS),
                                          st.sampled_from(KEYS), st.text(max_size=10))), max_size=4))
def test_any_override_list_is_valid_or_a_user_error(items):
    _one_line_user_error(load_config, None, items)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=200))
def test_any_config_file_is_valid_or_a_user_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "c.toml"
    path.write_bytes(text.encode("utf-8", errors="replace"))
    _one_line_user_error(load_config, path, [])


# Every numeric key of every section, with the values that used to crash after loading
# (nan, inf, out-of-range, zero intervals): each must be a one-line error at load, or a config
# whose optimizer and schedule really work.
NUMERIC_KEYS = sorted({(s, k) for cls in (RunConfig, CptConfig) for s, t in get_type_hints(cls).items()
                       for k, typ in get_type_hints(t).items()
                       if typ in (int, float, int | None, float | None) and k not in ("seed",)})
BAD_NUMBERS = ["nan", "inf", "-inf", "1e400", "-5", "0", "1.5", "-0.5", str(10 ** 400)]


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(NUMERIC_KEYS), value=st.one_of(st.sampled_from(BAD_NUMBERS),
                                                           st.floats(allow_nan=True, allow_infinity=True).map(repr)))
def test_non_finite_and_out_of_range_numbers_are_errors_or_work(key, value):
    section, name = key
    cls = CptConfig if section in ("base", "lora", "replay", "eval", "plasticity") else RunConfig
    extra = ["base.path=runs/x"] if cls is CptConfig else []
    try:
        cfg = load_config(None, [f"{section}.{name}={value}", *extra], cls=cls)
    except UserError as e:
        assert str(e) and "\n" not in str(e) and name in str(e)
        return
    for sec in ("optim", "train", "data"):  # what was accepted is finite ...
        for k, v in vars(getattr(cfg, sec)).items():
            assert not isinstance(v, float) or math.isfinite(v), (sec, k, v)
    if section == "optim":  # ... and torch takes it: one real step of a tiny model
        _one_step(cfg.optim)
    if section == "train":
        tc = cfg.train
        assert min(tc.log_every, tc.eval_every, tc.ckpt_every) > 0 and tc.steps > 0


def _one_step(ocfg) -> None:
    import torch

    from minimodel.nn.model import MiniModel, model_config_from
    from minimodel.train.optim import build_optimizers, lr_multiplier, set_lr

    torch.manual_seed(0)
    model = MiniModel(model_config_from("tiny", vocab_size=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1,
                                        ffn_dim=64))
    opts = build_optimizers(model, ocfg)
    set_lr(opts, lr_multiplier(1, 10, ocfg))
    ids = torch.randint(0, 64, (2, 8))
    model(ids, ids).backward()
    for o in opts:
        o.step()


def test_the_values_that_crashed_before_are_one_line_errors():
    for item, words in [("train.steps=inf", "train.steps"), ("train.steps=nan", "train.steps"),
                        ("optim.lr=nan", "optim.lr"), ("optim.adam_lr=3.4e38", "optim.adam_lr must be <= 10"),
                        ("optim.beta1=1.5", "optim.beta1 must lie in [0, 1)"),
                        ("optim.weight_decay=-5", "optim.weight_decay must be >= 0"),
                        ("train.ckpt_every=0", "train.ckpt_every must be > 0"),
                        ("train.eval_every=0", "train.eval_every must be > 0")]:
        with pytest.raises(UserError, match=re.escape(words)):
            load_config(None, [item])
