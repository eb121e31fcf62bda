"""Config loading: TOML + overrides, validation messages that name the bad key."""
import pytest

from minimodel.common.errors import UserError
from minimodel.common.io import tomllib  # tomli on Python 3.10
from minimodel.config import dump_toml, load_config


def test_toml_and_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[model]\npreset = "26m"\nqk_norm = false\n[optim]\nname = "adamw"\nlr = 1e-3\n')
    cfg = load_config(path, ["optim.lr=3e-4", "train.steps=7", "train.compile=true", 'data.path="x y"',
                             "tracking.run_name=2024", "train.out_dir=runs/1e3"])
    assert cfg.optim.name == "adamw" and cfg.optim.lr == 3e-4
    assert cfg.train.steps == 7 and cfg.train.compile is True and cfg.data.path == "x y"
    assert cfg.tracking.run_name == "2024" and cfg.train.out_dir == "runs/1e3"
    m = cfg.model_config()
    assert m.d_model == 512 and m.qk_norm is False and m.vocab_size == 6400


def test_resolved_dump_round_trips(tmp_path):
    cfg = load_config(None, ["model.preset=tiny", "model.d_model=64", "optim.schedule=wsd"])
    text = dump_toml(cfg.to_dict())
    again = tomllib.loads(text)
    assert again["model"]["d_model"] == 64 and again["model"]["head_dim"] == 16
    reloaded = load_config(None, [])
    assert reloaded.to_dict() != cfg.to_dict()
    path = tmp_path / "resolved.toml"
    path.write_text(text)
    assert load_config(path).to_dict() == cfg.to_dict()


@pytest.mark.parametrize("override,message", [
    (["optim.lrr=0.1"], r"unknown config key optim\.lrr; valid keys in \[optim\]: \[.*'lr'"),
    (["model.dmodel=3"], r"model\.dmodel; valid model keys"),
    (["trian.steps=3"], r"unknown config section\(s\) \['trian'\]"),
    (["train.steps=many"], r"train\.steps must be an integer"),
    (["train.steps=2.5"], r"train\.steps must be an integer"),
    (["train.compile=maybe"], r"train\.compile must be true or false"),
    (["optim.name=sgd"], r"optim\.name must be one of \('muon', 'adamw'\)"),
    (["model.preset=1b"], r"unknown model\.preset '1b'"),
    (["model.n_heads=3"], r"n_heads=3 must be a multiple of n_kv_heads=2"),
    (["train.steps=0"], r"train\.steps must be > 0"),
    (["steps=3"], r"write section\.key=value"),
    (["data.seq_len=99999"], r"exceeds model\.max_seq_len"),
])
def test_bad_keys_and_values_are_named(override, message):
    with pytest.raises(UserError, match=message):
        load_config(None, override)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\npreset=")
    with pytest.raises(UserError, match="not valid TOML"):
        load_config(bad)


def test_toml_loader_falls_back_to_tomli(tmp_path, monkeypatch):
    """On Python 3.10 (no stdlib tomllib) the package reads TOML with tomli, the declared backport:
    load a fresh copy of common/io.py with `tomllib` unimportable and a stand-in `tomli`."""
    import importlib.util
    import sys
    import types

    import minimodel.common.io as io_module

    tomli = types.ModuleType("tomli")
    tomli.TOMLDecodeError = tomllib.TOMLDecodeError
    tomli.loads = lambda text: {"via": "tomli", **tomllib.loads(text)}
    monkeypatch.setitem(sys.modules, "tomllib", None)  # `import tomllib` raises ModuleNotFoundError
    monkeypatch.setitem(sys.modules, "tomli", tomli)
    spec = importlib.util.spec_from_file_location("_io_py310", io_module.__file__)
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    assert fresh.tomllib is tomli
    path = tmp_path / "c.toml"
    path.write_text("[train]\nsteps = 3\n")
    assert fresh.read_toml(path) == {"via": "tomli", "train": {"steps": 3}}
    path.write_text("[train\n")
    with pytest.raises(UserError, match="not valid TOML"):
        fresh.read_toml(path)
