"""LoRA through peft on the native model and on a local transformers model: what trains, what stays
frozen, the tied-embedding policy, save -> merge -> reload parity, vocabulary extension."""
import json

import pytest
import sentencepiece as spm
import torch
from test_cpt_fixtures import bilingual, tiny_model_config  # noqa: F401

from minimodel.common.errors import UserError
from minimodel.config import DEFAULT_LORA_TARGETS, OptimConfig
from minimodel.data.windows import TokenShards, TrainStream
from minimodel.models.causal_lm import CausalLM, shape_of_hf_config
from minimodel.models.loading import load
from minimodel.models.lora import TrainableView, apply_lora, embedding_weights, merge, save_adapter
from minimodel.models.vocab_resize import decompositions, resize_vocab
from minimodel.nn.model import MiniModel
from minimodel.stages.on_base import save_merged
from minimodel.train.optim import build_optimizers


def train_steps(lm, set_dir, steps=6, lr=5e-3, embed_lr=1e-3, name="adamw"):
    opts = build_optimizers(lm, OptimConfig(name=name, lr=lr, adam_lr=lr, weight_decay=0.0), embed_lr=embed_lr)
    stream = TrainStream(TokenShards(set_dir, "train", 32, lm.config.vocab_size), seed=0)
    for _ in range(steps):
        x, y = stream.next_batch(4)
        lm(x, y).backward()
        for o in opts:
            o.step()
            o.zero_grad()
    return opts


def snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def hf_model(kind: str, vocab: int):
    """A small transformers model made here (no hub): Qwen3 with tied embeddings or Llama untied."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256)
    torch.manual_seed(0)
    if kind == "qwen3":
        return Qwen3ForCausalLM(Qwen3Config(**common, tie_word_embeddings=True))
    return LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=False))


def native_lm(vocab=1024, tie=True):
    torch.manual_seed(0)
    m = MiniModel(tiny_model_config(vocab, tie))
    return CausalLM(m, "native", m.config)


@pytest.mark.parametrize("kind", ["minimodel", "qwen3", "llama"])
def test_only_adapters_and_embeddings_train(bilingual, kind):
    if kind == "minimodel":
        lm = native_lm()
    else:
        hf = hf_model(kind, 1024)
        lm = CausalLM(hf, "hf", shape_of_hf_config(hf.config))
    before = snapshot(lm.core())
    apply_lora(lm, rank=4, alpha=8, dropout=0.0, targets=DEFAULT_LORA_TARGETS)
    core = lm.core()
    emb = embedding_weights(core)
    assert len(emb) == (1 if kind in ("minimodel", "qwen3") else 2)  # a tie is kept, one tensor
    opts = train_steps(lm, bilingual["ko"], embed_lr=2e-3)
    # the embeddings sit in one group of their own, at their own learning rate
    groups = [g for o in opts for g in o.param_groups if any(p is emb["embed_tokens.weight"] for p in g["params"])]
    assert len(groups) == 1 and groups[0]["lr"] == 2e-3 and len(groups[0]["params"]) == len(emb)
    after = {n: p.detach() for n, p in core.named_parameters()}
    lora = [n for n in after if "lora_" in n]
    assert len(lora) == 2 * 7 * 2  # A and B on 7 projections in 2 layers
    assert all(not torch.equal(after[n], torch.zeros_like(after[n])) for n in lora if "lora_B" in n)
    for name, w in before.items():
        key = next(k for k in after if k.replace(".base_layer", "") == name)
        changed = not torch.equal(w, after[key])
        should = "embed_tokens" in name or "lm_head" in name
        assert changed == should, f"{name}: changed={changed}"
    if kind != "llama":
        assert core_tied(lm)


def core_tied(lm) -> bool:
    core = lm.core()
    if isinstance(core, MiniModel):
        return core.lm_head.weight is core.model.embed_tokens.weight
    return core.get_output_embeddings().weight is core.get_input_embeddings().weight


@pytest.mark.parametrize("kind", ["minimodel", "qwen3", "llama"])
def test_save_merge_reload_parity(bilingual, tmp_path, kind):
    """adapter on its base == merged model (logits), and the merged directory reloads as a base."""
    tok = bilingual["tok_shared"]
    if kind == "minimodel":
        lm = native_lm()
        base_dir = tmp_path / "base"
        save_merged(lm.core(), "native", base_dir / "final", tok, None)
    else:
        base_dir = tmp_path / "hf_base"
        hf_model(kind, 1024).save_pretrained(base_dir)
        import shutil
        shutil.copy2(tok, base_dir / "tokenizer.model")
    lm = load(str(base_dir))
    apply_lora(lm, rank=4, alpha=8, dropout=0.1, targets=["q_proj", "v_proj", "down_proj"])
    train_steps(lm, bilingual["ko"])
    save_adapter(lm, tmp_path / "adapter", tok, {"base": str(base_dir)}, save_embeddings=True)
    lm.eval()
    x = torch.randint(4, 1024, (2, 24))
    with torch.no_grad():
        trained = lm(x)
    merged_core = merge(lm)
    with torch.no_grad():
        merged = CausalLM(merged_core, lm.kind, lm.config)(x)
    save_merged(merged_core, lm.kind, tmp_path / "merged", tok, lm.source.path)
    reloaded = load(str(tmp_path / "merged")).eval()
    adapted = load(tmp_path / "adapter", merge=False)
    with torch.no_grad():
        from_disk, from_adapter = reloaded(x), adapted(x)
    assert torch.allclose(trained, merged, atol=1e-5)
    assert torch.allclose(from_disk, merged, atol=1e-5)
    assert torch.allclose(from_adapter, merged, atol=1e-5)
    assert not torch.allclose(from_adapter, load(str(base_dir)).eval()(x), atol=1e-3)  # it did learn
    tied_expected = kind != "llama"
    assert core_tied(reloaded) == tied_expected and core_tied(adapted) == tied_expected
    meta = json.loads((tmp_path / "adapter" / "minimodel_adapter.json").read_text())
    assert meta["tied"] == tied_expected and meta["embeddings"]
    if kind == "minimodel":  # the merged minimodel stores a tied matrix once, as transformers does
        from safetensors.torch import load_file
        assert "lm_head.weight" not in load_file(tmp_path / "merged" / "model.safetensors")
        assert json.loads((tmp_path / "merged" / "config.json").read_text())["tie_word_embeddings"] is True


def test_an_adapter_peft_cannot_merge_is_named(bilingual, tmp_path, monkeypatch):
    """Loading an adapter merges it through lora.merge, the merge the stages use: a LoRA variant peft
    loads but cannot merge is a UserError naming the adapter directory, and merge=False still loads it."""
    import re

    from peft.tuners.tuners_utils import BaseTuner

    tok = bilingual["tok_shared"]
    save_merged(native_lm().core(), "native", tmp_path / "base" / "final", tok, None)
    lm = load(str(tmp_path / "base"))
    apply_lora(lm, rank=4, alpha=8, dropout=0.0, targets=["q_proj"])
    save_adapter(lm, tmp_path / "adapter", tok, {"base": str(tmp_path / "base")}, save_embeddings=False)

    def refuse(self, *args, **kwargs):
        raise NotImplementedError("merging is not supported for this LoRA variant")

    monkeypatch.setattr(BaseTuner, "merge_and_unload", refuse)
    adapter = re.escape(str(tmp_path / "adapter"))
    with pytest.raises(UserError, match=rf"^cannot merge the adapter in {adapter} into its base "
                                        r"\(merging is not supported .*a LoRA variant peft cannot merge"):
        load(tmp_path / "adapter")
    with pytest.raises(UserError, match=r"^cannot merge the adapter into its base"):
        merge(lm)
    assert load(tmp_path / "adapter", merge=False).kind == "native"
    monkeypatch.undo()
    assert isinstance(merge(lm), MiniModel)


def test_missing_target_modules_are_named():
    lm = native_lm()
    with pytest.raises(UserError, match=r"\['c_attn'\] do not exist.*'down_proj', 'gate_proj', 'k_proj'"):
        apply_lora(lm, rank=4, alpha=8, dropout=0.0, targets=["q_proj", "c_attn"])


def test_checkpoint_view_holds_trainable_tensors_once():
    lm = native_lm()
    apply_lora(lm, rank=4, alpha=8, dropout=0.0, targets=["q_proj"])
    view = TrainableView(lm)
    names = [n for n, _ in view.named_parameters()]
    assert sum("embed_tokens" in n for n in names) == 1 and not any("lm_head" in n for n in names)
    assert len(names) == 1 + 2 * 2  # the tied embedding + A, B in 2 layers
    before = lm.core().model.embed_tokens.weight.clone()
    view.load_state_dict({k: torch.zeros_like(v) for k, v in view.state_dict().items()})
    assert lm.core().model.embed_tokens.weight.abs().sum() == 0 and before.abs().sum() > 0  # shares storage


@pytest.mark.parametrize("kind", ["minimodel", "llama"])
def test_vocab_extension_rows_are_mean_of_old_pieces(bilingual, kind):
    base_tok, ext_tok = bilingual["tok_en"], bilingual["tok_ext"]
    if kind == "minimodel":
        core = native_lm(512, tie=True).core()
        old_emb = core.model.embed_tokens.weight.detach().clone()
        old_head = None
    else:
        core = hf_model("llama", 512)
        old_emb = core.get_input_embeddings().weight.detach().clone()
        old_head = core.get_output_embeddings().weight.detach().clone()
    info = resize_vocab(core, base_tok, ext_tok)
    n_ext = spm.SentencePieceProcessor(model_file=str(ext_tok)).get_piece_size()
    assert info["new_vocab"] == n_ext and info["initialised"] == n_ext - 512
    emb = embedding_weights(core)
    new_emb = emb["embed_tokens.weight"]
    assert new_emb.shape[0] == n_ext and torch.equal(new_emb[:512], old_emb)
    base = spm.SentencePieceProcessor(model_file=str(base_tok))
    ext = spm.SentencePieceProcessor(model_file=str(ext_tok))
    sources = decompositions(base_tok, ext_tok)
    for i in (512, 513, 600, n_ext - 1):
        piece_text = ext.id_to_piece(i).replace("\u2581", " ")
        assert base.decode(sources[i]) == piece_text.lstrip(" ") or \
            "".join(base.id_to_piece(j) for j in sources[i]).replace("\u2581", " ") == piece_text
        assert torch.allclose(new_emb[i], old_emb[sources[i]].mean(0))
        if old_head is not None:
            assert torch.allclose(emb["lm_head.weight"][i], old_head[sources[i]].mean(0))
    if kind == "minimodel":
        assert core.lm_head.weight is core.model.embed_tokens.weight and core.config.vocab_size == n_ext
        out = core(torch.tensor([[5, 600, n_ext - 1]]))
        assert out.shape == (1, 3, n_ext)
    else:
        assert core.config.vocab_size == n_ext and emb["lm_head.weight"].shape[0] == n_ext
