"""Every recipe parses, and every shipped config loads under the stage that reads it."""
import subprocess

import pytest
from conftest import ROOT

from minimodel.config import CptConfig, RunConfig, StageConfig, load_config

RECIPES = sorted((ROOT / "recipes").glob("*.sh"))
CONFIGS = sorted((ROOT / "recipes" / "configs").glob("*.toml"))


def test_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"quickstart.sh", "pretrain_core.sh", "ablation.sh", "cpt_lora.sh", "sft.sh",
            "eval_forgetting.sh"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_parses(recipe):
    r = subprocess.run(["bash", "-n", str(recipe)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_loads(config):
    cls = CptConfig if config.name.startswith("cpt_") else StageConfig if config.name.startswith("sft_") else RunConfig
    cfg = load_config(config, [], cls=cls)
    assert cfg.train.steps > 0 and cfg.data.seq_len > 0
    assert not cfg.train.out_dir.startswith("runs/quickstart")  # the quick start's results stay its own
