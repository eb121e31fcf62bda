"""bitsandbytes paths on the CPU (bitsandbytes >= 0.48 runs them there): a 4-/8-bit frozen base
(base.quantize) trained through the CPT stage, its gradients against the dequantised weights, its
final model exported unquantised, and 8-bit AdamW states for the trained embeddings
(lora.embedding_optim=adamw8bit): states in uint8, the plan's bytes, a bitwise resume."""
import json
from pathlib import Path

import bitsandbytes as bnb  # the quant extra: scripts/test.sh installs it
import pytest
import torch
from safetensors.torch import load_file
from test_base_memory import built_model, cpt, ko_set
from test_cpt_fixtures import bilingual, stage_overrides  # noqa: F401
from test_hf_tokenizer_bases import llama_base  # noqa: F401

from minimodel.common.errors import UserError
from minimodel.config import CptConfig, load_config
from minimodel.models.loading import load
from minimodel.models.memory import dtype_census

QUANT = {"base.quantize": None, "train.dtype": "bf16", "train.steps": 3, "train.eval_every": 3,
         "train.ckpt_every": 3}


@pytest.mark.parametrize("quantize,stored", [("nf4", "uint8"), ("int8", "int8")])
def test_a_quantised_base_trains_and_exports_unquantised(llama_base, tmp_path, quantize, stored):  # noqa: F811
    data = ko_set(llama_base, tmp_path)
    settings = {**QUANT, "base.quantize": quantize}
    census = dtype_census(built_model(llama_base, data, tmp_path / "b", **settings))
    assert set(census["trainable"]) == {"float32"}  # LoRA factors, embeddings, lm_head: fp32 masters
    assert stored in census["frozen"]  # the projections are held in 4 or 8 bits
    out = cpt(llama_base, data, tmp_path / "r", **settings)
    losses = [json.loads(x)["loss"] for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in x]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    # the final model is the unquantised base with the adapter merged: plain transformers loads it, and
    # it computes what the base + adapter computes
    config = json.loads((tmp_path / "r" / "final" / "config.json").read_text())
    assert "quantization_config" not in config
    final = load(out["final"])
    with_adapter = load(out["adapter"])
    ids = torch.randint(0, final.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = final.core()(ids).logits, with_adapter.core()(ids).logits
    assert torch.allclose(a, b, atol=1e-4)
    base = load(llama_base)
    with torch.no_grad():
        assert not torch.allclose(base.core()(ids).logits, a, atol=1e-3)  # it learned something


def test_nf4_lora_gradients_match_the_dequantised_base(llama_base, tmp_path):  # noqa: F811
    """bitsandbytes' 4-bit matmul backward on the CPU: the LoRA gradients equal those of the same model
    holding the dequantised weights in bf16 (up to bf16 rounding), through every layer."""
    data = ko_set(llama_base, tmp_path)
    quantised = built_model(llama_base, data, tmp_path / "q", **{**QUANT, "base.quantize": "nf4"})
    reference = built_model(llama_base, data, tmp_path / "r", **{**QUANT, "base.quantize": "none",
                                                                  "base.dtype": "bf16"})
    layers = dict(reference.named_modules())
    for name, module in quantised.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            w = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
            layers[name].weight.data = w.to(torch.bfloat16)
    reference.load_state_dict({k: v for k, v in quantised.state_dict().items() if "lora_" in k}, strict=False)
    ids = torch.randint(0, 1000, (2, 33), generator=torch.Generator().manual_seed(1))
    grads = []
    for model in (quantised, reference):
        model.eval()  # an evaluation first, as the stage runs one before training (bitsandbytes repacks
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # 4-bit weights for CPU inference
            model(ids[:, :-1], ids[:, 1:])
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(ids[:, :-1], ids[:, 1:])
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if "lora_B" in n})
    assert len(grads[0]) >= 8 and grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        ref = grads[1][name]
        assert ref.norm() > 0 and (g - ref).norm() / ref.norm() < 0.06, name


def test_8bit_adamw_for_the_embeddings(bilingual, tmp_path):  # noqa: F811
    from minimodel.cpt import run

    def stage(out, **extra):
        over = {"lora.embedding_optim": "adamw8bit", **extra}
        return run(load_config(None, stage_overrides(bilingual["core"], bilingual["ko"], out, **over), cls=CptConfig))

    stage(tmp_path / "whole")
    stage(tmp_path / "split", **{"train.stop_at_step": 6})
    state = torch.load(next((tmp_path / "split" / "checkpoints").rglob("*optim*")), weights_only=True)
    eight_bit = [s for s in _states(state) if s.dtype == torch.uint8]
    assert len(eight_bit) >= 2  # both moments of the embeddings, quantised
    stage(tmp_path / "split")
    a, b = (load_file(tmp_path / d / "final" / "model.safetensors") for d in ("whole", "split"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # resumed bitwise
    plain = load_file(bilingual["core"] / "final" / "model.safetensors")
    emb = [k for k in a if "embed" in k]
    assert emb and any(not torch.equal(plain[k], a[k]) for k in emb)  # the embeddings trained
    with pytest.raises(UserError, match="lora.embedding_optim=adamw8bit is the optimizer of the trained embeddings"):
        load_config(None, ["base.path=x", "lora.embedding_optim=adamw8bit", "lora.train_embeddings=false"],
                    cls=CptConfig)


def _states(obj):
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _states(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from _states(v)


def test_the_plan_counts_8bit_states():
    """The 7B reference recipe (Mistral-7B, untied 32768 x 4096 embeddings trained): AdamW8bit keeps 2 bytes
    and two fp32 absmax per 256 values instead of 8 bytes per embedding parameter, and no foreach temporary."""
    from scripts.plan import estimate

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "cpt_7b.toml"
    plans = [estimate(load_config(recipe, extra, cls=CptConfig))["memory_per_gpu_gib"]
             for extra in ([], ["lora.embedding_optim=adamw8bit"])]
    embed = 32768 * 4096 * 2
    saved = (plans[0]["optimizer"] - plans[1]["optimizer"]) * 2 ** 30
    assert saved == pytest.approx(embed * (8 - 2 - 8 / 256), rel=1e-6)
    assert plans[1]["total"] < plans[0]["total"] - 1.4
