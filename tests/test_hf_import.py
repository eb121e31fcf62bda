"""Import: HF directories as bases, HF -> native -> HF round trip, GGUF, clear errors."""
import json

import numpy as np
import pytest
import torch
from hf_helpers import bilingual_tokenizer, byte_level_tokenizer, gemma_style_tokenizer, tiny_native, write_gguf
from transformers import AutoModelForCausalLM, AutoTokenizer

from minimodel.common.errors import UserError
from minimodel.models.export import save_native
from minimodel.models.gguf import gguf_to_hf
from minimodel.models.hf_convert import to_hf_config
from minimodel.models.loading import load, resolve
from minimodel.tokenizers.sp_to_hf import save_hf_tokenizer
from minimodel.tokenizers.tokenizer import open_tokenizer

VOCAB = 2048


@pytest.fixture(scope="module")
def bi_tok(tmp_path_factory):
    return bilingual_tokenizer(tmp_path_factory.mktemp("tok") / "enko.model", VOCAB)


def hf_model(qk_norm: bool, tied: bool, seed: int = 0):
    """A transformers Qwen3/Llama model of native shape, randomly initialised by transformers."""
    cfg = tiny_native(VOCAB, qk_norm=qk_norm, tied=tied).config
    hf_cfg = to_hf_config(cfg)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_cfg).eval()
    with torch.no_grad():  # norms start at 1: make them non-trivial so a mix-up shows
        for _n, p in model.named_parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    return model


def save_hf_dir(model, bi_tok, path):
    model.save_pretrained(path)
    save_hf_tokenizer(bi_tok, path)
    return path


def load_native(spec):
    return load(spec, native=True).net


def resolve_base(spec, gguf_dir=None):
    return resolve(spec, gguf_dir=gguf_dir).path


BATCH = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("qk_norm,tied", [(True, True), (False, False)])
def test_hf_native_hf_round_trip(bi_tok, tmp_path, qk_norm, tied):
    src = hf_model(qk_norm, tied)
    save_hf_dir(src, bi_tok, tmp_path / "src")
    native = load_native(tmp_path / "src")
    assert native.config.qk_norm == qk_norm and native.config.tie_embeddings == tied
    with torch.no_grad():
        want = src(BATCH).logits
        assert (native(BATCH) - want).abs().max().item() < 1e-4
        assert (tiny_native(VOCAB, qk_norm, tied)(BATCH) - want).abs().max().item() > 1e-2  # not by chance
    back = save_native(native, tmp_path / "back", tokenizer_from=tmp_path / "src")
    again = AutoModelForCausalLM.from_pretrained(back, dtype=torch.float32).eval()
    assert type(again) is type(src)
    with torch.no_grad():
        assert (again(BATCH).logits - want).abs().max().item() < 1e-4
    sd_src, sd_back = src.state_dict(), again.state_dict()
    assert sd_src.keys() == sd_back.keys() and all(torch.equal(sd_src[k], sd_back[k]) for k in sd_src)
    tok = AutoTokenizer.from_pretrained(back)
    assert tok("태초에")["input_ids"] == AutoTokenizer.from_pretrained(tmp_path / "src")("태초에")["input_ids"]


def test_native_export_loads_back_into_native(bi_tok, tmp_path):
    from minimodel.models.export import export_model

    model = tiny_native(VOCAB, qk_norm=True)
    out, _ = export_model(model, bi_tok, tmp_path / "core")
    again = load_native(out)
    with torch.no_grad():
        assert torch.equal(again(BATCH), model(BATCH))


@pytest.mark.parametrize("make,feature", [
    (lambda: __import__("transformers").Qwen2Config(num_hidden_layers=1), "attention biases"),
    (lambda: __import__("transformers").LlamaConfig(num_hidden_layers=1, attention_bias=True), "attention biases"),
    (lambda: __import__("transformers").MistralConfig(num_hidden_layers=1, sliding_window=64),
     "sliding-window attention"),
    (lambda: __import__("transformers").LlamaConfig(num_hidden_layers=1, rope_parameters={
        "rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}), r"RoPE scaling \(llama3\)"),
    (lambda: __import__("transformers").Qwen3MoeConfig(num_hidden_layers=1), "architecture 'qwen3_moe'"),
    (lambda: __import__("transformers").LlamaConfig(num_hidden_layers=1, hidden_act="gelu"), "activation 'gelu'"),
])
def test_unexpressible_architectures_name_the_feature(tmp_path, make, feature):
    make().save_pretrained(tmp_path)
    with pytest.raises(UserError, match=f"cannot load into the native model: it uses {feature}"):
        load_native(tmp_path)


def test_mistral_without_sliding_window_is_native(bi_tok, tmp_path):
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=None)
    torch.manual_seed(0)
    src = MistralForCausalLM(cfg).eval()
    save_hf_dir(src, bi_tok, tmp_path)
    with torch.no_grad():
        assert (load_native(tmp_path)(BATCH) - src(BATCH).logits).abs().max().item() < 1e-4


def test_load_base_from_a_directory_and_a_run(bi_tok, tmp_path):
    src = save_hf_dir(hf_model(True, True), bi_tok, tmp_path / "run" / "final")
    (tmp_path / "run" / "config.toml").write_text("")
    lm = load(tmp_path / "run")
    model, tok, where = lm.net, AutoTokenizer.from_pretrained(lm.source.path), lm.source.path
    assert where == src and type(model).__name__ == "Qwen3ForCausalLM"
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True).endswith("<|im_start|>assistant\n")


def test_base_errors_are_clear(bi_tok, tmp_path):
    with pytest.raises(UserError, match="model not found: ./nowhere"):
        resolve_base("./nowhere")
    with pytest.raises(UserError, match="not in the local cache and the hub is offline"):
        resolve_base("minimodel-test/does-not-exist")  # HF_HUB_OFFLINE=1: answered from the cache
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a Hugging Face model directory"):
        resolve_base(tmp_path / "empty")
    # tokenizer with more tokens than the model has embedding rows
    from transformers import LlamaConfig

    small = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=1024, hidden_size=32, intermediate_size=64,
                                                         num_hidden_layers=1, num_attention_heads=2))
    save_hf_dir(small, bi_tok, tmp_path / "small")
    with pytest.raises(UserError, match="tokenizer has 2048 tokens but the model embeds only 1024"):
        load(tmp_path / "small")
    from transformers import GPT2Config

    GPT2Config(n_layer=1).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(UserError, match="cannot load model .*gpt2.* with transformers"):  # a config without weights
        load(tmp_path / "gpt2")


def test_gguf_import_f32_is_exact_and_cached(bi_tok, tmp_path):
    import sentencepiece as spm

    src = hf_model(False, False)
    gguf_file = write_gguf(src, bi_tok, tmp_path / "tiny-llama-f32.gguf")
    out = resolve_base(gguf_file, gguf_dir=tmp_path / "converted")
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        assert (model(BATCH).logits - src(BATCH).logits).abs().max().item() < 1e-5
    tok, sp = AutoTokenizer.from_pretrained(out), spm.SentencePieceProcessor(model_file=str(bi_tok))
    text = "In the beginning God created the heaven and the earth. 태초에 하나님이 천지를 창조하시니라"
    assert tok(text, add_special_tokens=False)["input_ids"] == sp.encode(text)
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert gguf_to_hf(gguf_file, tmp_path / "converted") == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not converted again
    assert load_native(gguf_file).config.head_dim == 16  # a .gguf path works wherever a base is named


SPACED = {"indent": "def f():\n    return  1\n\tdone", "lead": " one leading space",
          "runs": "a  b   c" + " " * 40 + "d", "ko": "  태초에  하나님이\n\n  천지를", "end": "trailing spaces   "}


@pytest.mark.parametrize("style", ["llama", "gemma"])
def test_gguf_sentencepiece_styles_round_trip(style, bi_tok, tmp_path):
    """A GGUF base's sentencepiece vocabulary, rebuilt, encodes as the tokenizer the file was made from:
    Llama/Mistral style (dummy prefix "▁") and Gemma style (no prefix, runs of spaces as user-defined
    pieces, which llama.cpp's converter writes with spaces, "  ")."""
    import sentencepiece as spm

    from minimodel.tokenizers.sp_to_hf import PROBE_TEXTS

    sp_path = bi_tok if style == "llama" else gemma_style_tokenizer(tmp_path / "gemma.model")
    sp = spm.SentencePieceProcessor(model_file=str(sp_path))
    cfg = to_hf_config(tiny_native(sp.get_piece_size(), qk_norm=False, tied=False).config)
    torch.manual_seed(0)
    gguf_file = write_gguf(AutoModelForCausalLM.from_config(cfg).eval(), sp_path, tmp_path / f"{style}.gguf")
    converted = gguf_to_hf(gguf_file, tmp_path / "converted")
    tok = AutoTokenizer.from_pretrained(converted)
    lengths = open_tokenizer(converted).token_bytes(sp.get_piece_size())
    for name, text in {**PROBE_TEXTS, **SPACED}.items():
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids == sp.encode(text), name
        assert tok.decode(ids) == text, name
        if style == "gemma":  # no dummy prefix: the pieces' bytes are exactly the text's (bits per byte)
            assert int(lengths[ids].sum()) == len(text.encode("utf-8")), name
    if style == "gemma":  # the case that was refused: no "▁" before the text, "▁▁" kept whole
        assert tok.convert_ids_to_tokens(tok("  Two", add_special_tokens=False)["input_ids"])[:2] == ["▁▁", "T"]


@pytest.mark.parametrize("style,arch,pre", [("qwen", "qwen3", "qwen2"), ("llama3", "llama", "smollm")])
def test_gguf_byte_level_styles_round_trip(style, arch, pre, tmp_path):
    """Byte-level BPE GGUF files ("gpt2" metadata): Qwen (qwen3 architecture) and Llama 3 / SmolLM (llama
    architecture, distinct BOS and EOS) encode as the tokenizer the file was made from, with its BOS/EOS."""
    from minimodel.tokenizers.sp_to_hf import PROBE_TEXTS

    src = byte_level_tokenizer(tmp_path / "tok", style)
    want = AutoTokenizer.from_pretrained(src)
    cfg = to_hf_config(tiny_native(len(want), qk_norm=arch == "qwen3", tied=False).config)
    torch.manual_seed(0)
    gguf_file = write_gguf(AutoModelForCausalLM.from_config(cfg).eval(), src, tmp_path / f"{style}.gguf", pre=pre)
    converted = gguf_to_hf(gguf_file, tmp_path / "converted")
    tok = open_tokenizer(converted)
    for name, text in {**PROBE_TEXTS, **SPACED}.items():
        ids = tok.encode(text)
        assert ids == want(text, add_special_tokens=False)["input_ids"], name
        assert tok.decode(ids) == want.decode(ids, skip_special_tokens=True), name  # markers are special here
        assert tok.tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) == text, name
    assert (tok.bos_id, tok.eos_id) == (want.bos_token_id, want.eos_token_id)


def test_gguf_import_dequantises_q8_0(bi_tok, tmp_path, monkeypatch):
    """A Q8_0 Qwen3-shaped file (head_dim 16, which transformers' qwen3 GGUF reader alone gets wrong)."""
    import gguf

    monkeypatch.setenv("MINIMODEL_CACHE", str(tmp_path / "cache"))
    src = hf_model(True, True)
    gguf_file = write_gguf(src, bi_tok, tmp_path / "tiny-qwen3-q8_0.gguf", quant=gguf.GGMLQuantizationType.Q8_0)
    out = resolve_base(gguf_file)
    assert out.parent == tmp_path / "cache" / "gguf"
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    # the reference: the source weights through Q8_0 and back
    q8 = gguf.GGMLQuantizationType.Q8_0
    with torch.no_grad():
        for _name, p in src.named_parameters():
            if p.ndim == 2:
                p.copy_(torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(p.numpy(), q8), q8)))
        sd = model.state_dict()
        assert all(torch.equal(sd[k], v) for k, v in src.state_dict().items())
        assert (model(BATCH).logits - src(BATCH).logits).abs().max().item() < 1e-5
    meta = json.loads((out / "minimodel_import.json").read_text())
    assert meta["source"].endswith("tiny-qwen3-q8_0.gguf") and "sentencepiece" in meta["tokenizer"]
    native = load_native(gguf_file)
    with torch.no_grad():
        assert (native(BATCH) - model(BATCH).logits).abs().max().item() < 1e-4
    assert np.isfinite(native(BATCH).detach().numpy()).all()


def test_a_gguf_file_is_a_stage_base(bi_tok, tmp_path, monkeypatch):
    """base.path = a .gguf file: converted once, then trained like any Hugging Face base."""
    from hf_helpers import fixture_docs
    from test_cpt_fixtures import stage_overrides

    from data_prep.shards import prepare_from_docs
    from minimodel.config import CptConfig, load_config
    from minimodel.cpt import run
    from minimodel.train.tracking import read_metrics

    monkeypatch.setenv("MINIMODEL_CACHE", str(tmp_path / "cache"))
    gguf_file = write_gguf(hf_model(False, False), bi_tok, tmp_path / "tiny-llama-f32.gguf")
    converted = resolve(gguf_file).path  # the data is tokenised with the tokenizer the GGUF file carries
    ko = fixture_docs("korean_1961.jsonl")
    prepare_from_docs(tmp_path / "ko", converted / "tokenizer.model", {"train": ko[:-6], "val": ko[-6:]},
                      extra_manifest={"language": "ko"})
    out = tmp_path / "cpt"
    result = run(load_config(None, stage_overrides(gguf_file, tmp_path / "ko", out), cls=CptConfig))
    assert result["step"] == 12 and result["info"]["base_kind"] == "hf"
    evals = [m["val_bpb"] for m in read_metrics(out) if "val_bpb" in m]
    assert evals[-1] < evals[0]  # it trains
    assert sorted(p.name for p in (tmp_path / "cache" / "gguf").iterdir()) == [converted.name]  # converted once
    merged = AutoModelForCausalLM.from_pretrained(out / "final", dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.isfinite(merged(BATCH).logits).all()
