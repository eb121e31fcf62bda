"""What a base costs in memory: base.dtype (frozen weights in the checkpoint's dtype, trainable tensors
as fp32 masters), train.grad_checkpoint (same loss and gradients, fewer saved tensors), base.quantize
(bitsandbytes, or one clear error naming the extra)."""
import shutil
import sys

import pytest
import torch
from hf_helpers import tiny_native
from test_cpt_fixtures import bilingual  # noqa: F401
from test_hf_tokenizer_bases import llama_base  # noqa: F401

from minimodel.common.errors import UserError
from minimodel.config import DEFAULT_LORA_TARGETS, CptConfig, load_config
from minimodel.models.causal_lm import CausalLM, shape_of_hf_config
from minimodel.models.lora import apply_lora
from minimodel.models.memory import dtype_census, fp32_masters, quantization_config, set_grad_checkpointing


@pytest.fixture(scope="module")
def llama_bf16(llama_base, tmp_path_factory):  # noqa: F811
    """The tiny Llama base saved in bf16, as hub checkpoints are (config.json's dtype says so)."""
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("bf16") / "llama_bf16"
    shutil.copytree(llama_base, out)
    AutoModelForCausalLM.from_pretrained(llama_base, dtype=torch.bfloat16).save_pretrained(out)
    return out


def ko_set(base, tmp_path):
    from hf_helpers import fixture_docs

    from data_prep.shards import prepare_from_docs

    docs = fixture_docs("korean_1961.jsonl")
    prepare_from_docs(tmp_path / "ko", base, {"train": docs[:-6], "val": docs[-6:]}, extra_manifest={"language": "ko"})
    return tmp_path / "ko"


def cpt(base, data, out, **extra):
    from test_cpt_fixtures import stage_overrides

    from minimodel.cpt import run

    settings = {"train.steps": 2, "train.eval_every": 2, "train.ckpt_every": 2, "train.log_every": 1, **extra}
    return run(load_config(None, stage_overrides(base, data, out, **settings), cls=CptConfig))


def built_model(base, data, out, **extra):
    """The model the CPT stage trains, as built (before training and the final merge)."""
    from test_cpt_fixtures import stage_overrides

    from minimodel.cpt import ContinuedPretraining

    cfg = load_config(None, stage_overrides(base, data, out, **extra), cls=CptConfig)
    stage = ContinuedPretraining()
    return stage.model(cfg, stage.data(cfg, None), None).model


def test_a_bf16_checkpoint_trains_with_a_bf16_frozen_base_and_fp32_masters(llama_bf16, tmp_path, capsys):
    data = ko_set(llama_bf16, tmp_path)
    lm = built_model(llama_bf16, data, tmp_path / "built", **{"train.dtype": "bf16"})
    census = dtype_census(lm)
    assert set(census["frozen"]) == {"bfloat16"} and set(census["trainable"]) == {"float32"}
    trainable = {n for n, p in lm.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and any("embed_tokens" in n for n in trainable)
    attn = lm.core().model.layers[0].self_attn.q_proj
    assert attn.base_layer.weight.dtype == torch.bfloat16 and attn.lora_A["default"].weight.dtype == torch.float32
    # it trains, and the first log line says what was chosen and why
    result = cpt(llama_bf16, data, tmp_path / "auto", **{"train.dtype": "bf16", "train.grad_checkpoint": "true"})
    assert result["step"] == 2 and (tmp_path / "auto" / "final" / "config.json").is_file()
    first = capsys.readouterr().err
    assert "bfloat16 frozen base (base.dtype=auto: the checkpoint's torch_dtype is bfloat16" in first
    assert "activation checkpointing on (train.grad_checkpoint=true)" in first
    # base.dtype=fp32 keeps the old behaviour: everything in fp32
    full = built_model(llama_bf16, data, tmp_path / "fp32", **{"base.dtype": "fp32", "train.dtype": "bf16"})
    assert set(dtype_census(full)["frozen"]) == {"float32"}


def test_a_bf16_base_without_autocast_is_refused(llama_bf16, tmp_path):
    with pytest.raises(UserError, match="train.dtype=fp32 runs without autocast; set train.dtype=bf16"):
        cpt(llama_bf16, ko_set(llama_bf16, tmp_path), tmp_path / "out", **{"train.dtype": "fp32"})


def test_a_native_base_stays_fp32_under_auto(bilingual):  # noqa: F811
    from minimodel.stages.on_base import load_base

    cfg = load_config(None, [f"base.path={bilingual['core']}"], cls=CptConfig)
    lm = load_base(cfg)
    assert {p.dtype for p in lm.parameters()} == {torch.float32}
    assert "float32 frozen base (base.dtype=auto: a minimodel base" in lm.precision
    bf16 = load_base(load_config(None, [f"base.path={bilingual['core']}", "base.dtype=bf16"], cls=CptConfig))
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    assert bf16.core().model.rotary_emb.inv_freq.dtype == torch.float32  # buffers keep their precision


def _hf_tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    net = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128))
    return CausalLM(net, "hf", shape_of_hf_config(net.config))


def _native_tiny():
    net = tiny_native(300, qk_norm=True)
    return CausalLM(net, "native", net.config)


@pytest.mark.parametrize("make", [_native_tiny, _hf_tiny], ids=["native", "hf"])
def test_checkpointing_gives_the_same_loss_and_gradients_with_fewer_saved_tensors(make):
    lm = apply_lora(make(), rank=4, alpha=8.0, dropout=0.0, targets=DEFAULT_LORA_TARGETS)
    fp32_masters(lm)
    lm.train()
    x = torch.randint(0, 300, (2, 48), generator=torch.Generator().manual_seed(1))

    def step(on: bool):
        set_grad_checkpointing(lm.core(), on)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = lm(x, x)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in lm.named_parameters() if p.requires_grad}
        lm.zero_grad(set_to_none=True)
        return loss.detach(), grads, sum(saved)

    loss0, grads0, saved0 = step(False)
    loss1, grads1, saved1 = step(True)
    assert torch.equal(loss0, loss1)
    assert grads0.keys() == grads1.keys() and all(torch.equal(grads0[k], grads1[k]) for k in grads0)
    assert saved1 < saved0 / 2  # the blocks' activations were not kept: recomputed in backward


def test_grad_checkpoint_takes_toml_booleans_and_names_bad_values(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[base]\npath = "x"\n[train]\ngrad_checkpoint = true\n')
    assert load_config(path, cls=CptConfig).train.grad_checkpoint == "true"
    assert load_config(path, ["train.grad_checkpoint=auto"], cls=CptConfig).train.grad_checkpoint == "auto"
    with pytest.raises(UserError, match=r"train.grad_checkpoint must be one of \('false', 'true', 'auto'\)"):
        load_config(path, ["train.grad_checkpoint=sometimes"], cls=CptConfig)


def test_quantize_without_bitsandbytes_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what an environment without it raises
    with pytest.raises(UserError) as e:
        quantization_config("nf4")
    msg = str(e.value)
    assert "\n" not in msg and "base.quantize=nf4 needs bitsandbytes" in msg
    assert "pip install 'minimodel[quant]'" in msg and "base.quantize=none" in msg


def test_quantize_without_bitsandbytes_from_the_command_line(bilingual, llama_base, tmp_path, monkeypatch,  # noqa: F811
                                                            capsys):
    from test_cpt_fixtures import stage_overrides

    from minimodel.cpt import main

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    args = stage_overrides(llama_base, ko_set(llama_base, tmp_path), tmp_path / "q", **{"base.quantize": "int8",
                                                                                        "train.dtype": "bf16"})
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: base.quantize=int8 needs bitsandbytes") and "minimodel[quant]" in err[-1]


def test_quantize_is_refused_where_it_cannot_apply(bilingual):  # noqa: F811
    from minimodel.stages.on_base import load_base

    with pytest.raises(UserError, match="needs a Hugging Face base"):
        load_base(load_config(None, [f"base.path={bilingual['core']}", "base.quantize=nf4"], cls=CptConfig))
    with pytest.raises(UserError, match="with lora.backend=unsloth use lora.load_in_4bit"):
        load_config(None, ["base.path=x", "base.quantize=nf4", "lora.backend=unsloth"], cls=CptConfig)
    with pytest.raises(UserError, match="full fine-tuning"):
        load_config(None, ["base.path=x", "base.quantize=nf4", "lora.enabled=false"], cls=CptConfig)


def test_auto_checkpointing_follows_the_plan_of_the_built_model(llama_bf16, tmp_path, monkeypatch):
    """train.grad_checkpoint=auto: off on a CPU; on a GPU, on exactly when the plan of the model as built
    (its real frozen bytes and trainable count) exceeds the card's memory."""
    from types import SimpleNamespace

    from minimodel.stages.checkpointing import apply_grad_checkpoint, planned_step_bytes

    cfg = load_config(None, [f"base.path={llama_bf16}", "train.grad_checkpoint=auto", "lora.rank=8",
                             "data.seq_len=64", "train.micro_batch=8"], cls=CptConfig)
    lm = built_model(llama_bf16, ko_set(llama_bf16, tmp_path), tmp_path / "o", **{"train.dtype": "bf16"})
    assert "off on a CPU" in apply_grad_checkpoint(cfg, lm, torch.device("cpu"))
    need = planned_step_bytes(cfg, lm, 1)
    assert need > sum(p.numel() * p.element_size() for p in lm.parameters())  # weights + states + activations
    for memory, on in ((need - 1, True), (need + 1, False)):
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _d, m=memory: SimpleNamespace(total_memory=m))
        said = apply_grad_checkpoint(cfg, lm, torch.device("cuda"))
        assert said.startswith(f"activation checkpointing {'on' if on else 'off'} (train.grad_checkpoint=auto: planned")
        assert lm.core().is_gradient_checkpointing is on
