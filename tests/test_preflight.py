"""Before the first step: the run directory must be writable and hold two checkpoints; otherwise
one clear error, and no run directory left behind."""
import shutil
from collections import namedtuple

import pytest
from conftest import tiny_overrides

from minimodel.common.errors import UserError
from minimodel.config import load_config
from minimodel.pretrain import run

Usage = namedtuple("Usage", "total used free")


def test_an_unwritable_run_directory_is_named(english_set, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(UserError, match=r"run directory .*a_file/run is not writable .*choose another train.out_dir"):
        run(load_config(None, tiny_overrides(english_set, blocker / "run")))


def test_a_full_disk_stops_before_any_work(english_set, tmp_path, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(real(p).total, real(p).total - (10 << 20), 10 << 20))
    out = tmp_path / "run"
    with pytest.raises(UserError, match=r"has 0\.01 GiB free; two checkpoints need about 0\.07 GiB"):
        run(load_config(None, tiny_overrides(english_set, out)))
    assert not out.exists()
    monkeypatch.setattr(shutil, "disk_usage", real)
    assert run(load_config(None, tiny_overrides(english_set, out, **{"train.steps": 5})))["step"] == 5
