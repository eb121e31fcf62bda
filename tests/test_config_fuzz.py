"""Fuzzed configs and overrides: a valid RunConfig or a one-line UserError, never another exception."""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minimodel.config import CptConfig, RunConfig, build_config, load_config
from minimodel.errors import UserError

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
