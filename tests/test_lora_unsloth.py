"""The unsloth backend on a small local Qwen3 model. unsloth 2026.10 imports on a CPU with
UNSLOTH_ALLOW_CPU=1, but FastLanguageModel.from_pretrained queries a CUDA device, so this runs only
where unsloth is installed (pip install 'minimodel[unsloth]') and a GPU is visible."""
import importlib.util
import shutil

import pytest
import torch
from test_cpt_fixtures import bilingual, stage_overrides  # noqa: F401

from minimodel.config import CptConfig, load_config

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("unsloth") is None,
                       reason="unsloth is not installed (pip install 'minimodel[unsloth]' on a GPU machine)"),
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="unsloth's FastLanguageModel needs a CUDA device (no CPU path in 2026.10)"),
]


def test_unsloth_cpt_trains_and_merges(bilingual, tmp_path):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from minimodel.cpt import run
    from minimodel.models.loading import load

    base = tmp_path / "qwen3"
    Qwen3ForCausalLM(Qwen3Config(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                 max_position_embeddings=256, tie_word_embeddings=True)).save_pretrained(base)
    shutil.copy2(bilingual["tok_shared"], base / "tokenizer.model")
    out = tmp_path / "cpt"
    run(load_config(None, stage_overrides(base, bilingual["ko"], out, **{
        "lora.backend": "unsloth", "train.device": "cuda", "train.dtype": "bf16",
        "replay.path": str(bilingual["en"]), "replay.ratio": 0.05}), cls=CptConfig))
    x = torch.randint(4, 1024, (1, 16))
    merged = load(str(out / "final")).eval()
    adapted = load(out / "adapter", merge=False)
    with torch.no_grad():
        assert torch.allclose(adapted(x), merged(x), atol=1e-3)
