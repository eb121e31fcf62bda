"""A Hugging Face base with its own tokenizer (byte-level BPE tokenizer.json, no tokenizer.model):
data prepared with it, exact bytes per token, continued pretraining with replay, evaluation."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT
from hf_helpers import fixture_docs
from test_cpt_fixtures import bilingual  # noqa: F401

from minimodel.common.errors import UserError
from minimodel.common.io import tomllib  # tomli on Python 3.10
from minimodel.tokenizers.tokenizer import HFTokenizer, open_tokenizer

ODD = "Emoji 🙂, 漢字, ünïcödé, tabs\tand  spaces; 태초에 하나님이 천지를 창조하시니라.\n"


# plain-text role markers, BOS first, EOS closing each assistant turn (as Llama 3's template does)
LLAMA_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ '### ' + m['role'] + ':\n' + m['content'] + '\n' }}"
                  "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
                  "{% if add_generation_prompt %}{{ '### assistant:\n' }}{% endif %}")


@pytest.fixture(scope="module")
def llama_base(tmp_path_factory):
    """A Llama-shaped base whose tokenizer is a byte-level BPE trained by `tokenizers` (BOS added to
    every text, as Llama's is), saved the way transformers saves a hub model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("hfbase")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(fixture_docs("english_web.jsonl") + fixture_docs("korean_1961.jsonl"),
                            trainers.BpeTrainer(vocab_size=1200, special_tokens=["<s>", "</s>", "<pad>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    base = root / "llama"
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            model_max_length=256, chat_template=LLAMA_TEMPLATE).save_pretrained(base)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=256, bos_token_id=0, eos_token_id=1,
                                 tie_word_embeddings=False)).save_pretrained(base)
    return base


def test_bytes_per_token_are_exact(llama_base):
    tok = open_tokenizer(llama_base)
    assert isinstance(tok, HFTokenizer) and tok.kind == "hf" and tok.adds_bos and tok.file.name == "tokenizer.json"
    lengths = tok.token_bytes(tok.vocab_size)
    for text in [ODD, *fixture_docs("korean_1961.jsonl")[:3], *fixture_docs("english_web.jsonl")[:3]]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text  # byte-level BPE round-trips any text
        assert int(lengths[ids].sum()) == len(text.encode("utf-8"))  # byte for byte, Korean included
    assert lengths[tok.bos_id] == lengths[tok.eos_id] == 0


def test_prepare_with_the_bases_tokenizer(llama_base, tmp_path):
    from data_prep.shards import read_tokens

    docs = fixture_docs("korean_1961.jsonl")[:30]
    (tmp_path / "ko.jsonl").write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs))
    r = subprocess.run([sys.executable, "-m", "data_prep.prepare", "--out", str(tmp_path / "ko"), "--files",
                        str(tmp_path / "ko.jsonl"), "--tokenizer", str(llama_base), "--lang", "ko",
                        "--val-fraction", "0.2", "--num-proc", "2"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "ko" / "manifest.json").read_text())
    assert m["tokenizer"]["kind"] == "hf" and m["tokenizer"]["file"] == "tokenizer.json"
    assert m["eos_id"] == 1 and m["dtype"] == "uint16" and not (tmp_path / "ko" / "tokenizer.model").exists()
    tok = open_tokenizer(tmp_path / "ko")
    tokens = read_tokens(tmp_path / "ko", "train")
    # every document is <s> ids </s>, and decodes back to the text
    ends = np.flatnonzero(tokens == 1)
    starts = np.concatenate([[0], ends[:-1] + 1])
    assert len(ends) == m["splits"]["train"]["docs"] and (tokens[starts] == 0).all()
    texts = {tok.decode(tokens[a + 1:b].tolist()) for a, b in zip(starts, ends)}
    assert texts <= set(docs) and len(texts) == len(ends)
    # a mixture and a verification read such sets too
    from data_prep.mixture import mix
    from data_prep.shards import check_prepared

    mixed = mix(tmp_path / "mix", [(tmp_path / "ko", 1.0)])
    mixed_tokens = read_tokens(tmp_path / "mix", "train")
    assert mixed["tokenizer"]["kind"] == "hf" and mixed_tokens[0] == 0 and (mixed_tokens == 1).sum() > 0
    assert check_prepared(tmp_path / "mix", llama_base)["vocab_size"] == tok.vocab_size
    bad = subprocess.run([sys.executable, "-m", "data_prep.prepare", "--out", str(tmp_path / "x"), "--files",
                          str(tmp_path / "ko.jsonl"), "--tokenizer", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "holds no tokenizer" in bad.stderr
    with pytest.raises(UserError, match="not in the local cache and the hub is offline"):
        open_tokenizer("minimodel-test/no-such-base")  # a hub id: its tokenizer files, when online


def test_cpt_with_replay_on_the_hf_base(llama_base, tmp_path):
    from test_cpt_fixtures import stage_overrides

    from data_prep.shards import prepare_from_docs
    from eval.bpb import bits_per_byte, parse_set
    from eval.models import load_model
    from minimodel.config import CptConfig, load_config
    from minimodel.cpt import run
    from minimodel.train.tracking import read_metrics

    ko, en = fixture_docs("korean_1961.jsonl"), fixture_docs("english_web.jsonl")
    for name, docs, lang in (("ko", ko, "ko"), ("en", en, "en")):
        prepare_from_docs(tmp_path / name, llama_base, {"train": docs[:-6], "val": docs[-6:]},
                          extra_manifest={"language": lang})
    out = tmp_path / "cpt"
    result = run(load_config(None, stage_overrides(llama_base, tmp_path / "ko", out, **{
        "replay.path": str(tmp_path / "en"), "replay.ratio": 0.25}), cls=CptConfig))
    assert result["step"] == 12 and result["info"]["tokenizer"] == "same" and result["info"]["base_kind"] == "hf"
    evals = [m for m in read_metrics(out) if "val_bpb_ko" in m]
    assert evals[-1]["val_bpb_ko"] < evals[0]["val_bpb_ko"] and all("val_bpb_en" in m for m in evals)
    final = {p.name for p in (out / "final").iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "config.json"} <= final and "tokenizer.model" not in final
    assert {"tokenizer.json", "adapter_config.json"} <= {p.name for p in (out / "adapter").iterdir()}
    # the kit's bits per byte equals a direct transformers computation on the same text
    text = ko[-1][:300]
    (tmp_path / "one.jsonl").write_text(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    lm = load_model(out, device="cpu")
    ours = bits_per_byte(lm, parse_set(f"ko={tmp_path / 'one.jsonl'}"), ctx=256)["bpb"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(out / "final")
    ids = torch.tensor([hf_tok(text)["input_ids"]])  # <s> + text, as the base's tokenizer frames it
    assert ids[0, 0] == 0 and ids.shape[1] <= 256
    model = AutoModelForCausalLM.from_pretrained(out / "final", dtype=torch.float32).eval()
    with torch.no_grad():
        nll = torch.nn.functional.cross_entropy(model(ids).logits[0, :-1].double(), ids[0, 1:], reduction="sum")
    assert ours == pytest.approx(nll.item() / math.log(2) / len(text.encode("utf-8")), rel=1e-4)
    # the shards of the same tokenizer are scored too (the data's tokenizer is the model's)
    assert bits_per_byte(lm, parse_set(f"ko={tmp_path / 'ko'}:val"))["bpb"] > 0
    # the report takes the base as it is (no config.toml): evaluated into a directory of its own
    from eval.bpb import main as bpb_main
    from eval.report import main as report_main

    sets = ["--data", f"ko={tmp_path / 'ko'}:val", "--data", f"en={tmp_path / 'en'}:val", "--device", "cpu"]
    bpb_main([str(llama_base), "--stage", "base", "--out", str(tmp_path / "llama_base" / "eval" / "bpb.json"), *sets])
    bpb_main([str(out), *sets])
    rep = report_main([str(tmp_path / "llama_base"), str(out), "--out", str(tmp_path / "report")])
    base_row = rep["models"]["llama_base"]
    assert base_row["stage"] == "base" and base_row["params"] == lm.num_params()
    assert base_row["config"]["d_model"] == 64 and base_row["config"]["tokenizer"] == "hf"
    assert {(f["base"], f["adapted"], f["set"]) for f in rep["forgetting"]} == {
        ("llama_base", "cpt", "ko"), ("llama_base", "cpt", "en")}
    assert "| llama_base | base | – | d64 L2, hf tokenizer |" in (tmp_path / "report" / "report.md").read_text()


def test_data_of_another_tokenizer_is_refused(llama_base, tmp_path, bilingual):
    from test_cpt_fixtures import stage_overrides

    from minimodel.config import CptConfig, load_config
    from minimodel.cpt import run

    with pytest.raises(UserError, match="does not match base .*data_prep.prepare --tokenizer"):
        run(load_config(None, stage_overrides(llama_base, bilingual["ko"], tmp_path / "x"), cls=CptConfig))
    assert not (tmp_path / "x" / "checkpoints").exists()


CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


@pytest.fixture(scope="module")
def qwen_base(tmp_path_factory):
    """A Qwen3-shaped base: byte-level BPE, no BOS, EOS <|endoftext|>, a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(fixture_docs("english_web.jsonl") + fixture_docs("korean_1961.jsonl"),
                            trainers.BpeTrainer(vocab_size=1100, special_tokens=["<|endoftext|>", "<|im_start|>",
                                                                                 "<|im_end|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    base = tmp_path_factory.mktemp("qwen") / "qwen"
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                            chat_template=CHATML).save_pretrained(base)
    torch.manual_seed(0)
    Qwen3ForCausalLM(Qwen3Config(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                 max_position_embeddings=256, tie_word_embeddings=True)).save_pretrained(base)
    return base


def sft_records(n: int = 24) -> list[tuple[str, dict]]:
    en, ko = fixture_docs("english_web.jsonl"), fixture_docs("korean_1961.jsonl")
    return [(f"r{i}", {"id": i, "instruction": en[i][:60], "output": ko[i][:80]}) for i in range(n)]


def test_sft_with_the_bases_chat_template(qwen_base, tmp_path):
    from test_cpt_fixtures import stage_overrides

    from data_prep.sft import prepare_sft, read_sft, to_messages
    from minimodel.config import StageConfig, load_config
    from minimodel.sft import run

    tok = open_tokenizer(qwen_base)
    assert tok.bos_id is None and not tok.adds_bos and tok.eos_id == 0
    recs = sft_records()
    m = prepare_sft(tmp_path / "sft", qwen_base, recs, val_fraction=0.25)
    assert m["tokenizer"]["kind"] == "hf" and m["template"] == "the base's chat template"
    replies = [to_messages(r)[-1]["content"] for _, r in recs]  # as cleaned for training
    for split in ("train", "val"):
        for ids, mask in read_sft(tmp_path / "sft", split):
            text, answer = (tok.tok.decode(x.tolist(), skip_special_tokens=False, clean_up_tokenization_spaces=False)
                            for x in (ids, ids[mask == 1]))
            reply = next(a for a in replies if text.endswith(a + "<|im_end|>\n"))
            # the mask covers exactly the assistant reply and the end of its turn, nothing of the prompt
            assert answer == reply + "<|im_end|>\n" and text.startswith("<|im_start|>user\n")
    out = tmp_path / "run"
    result = run(load_config(None, stage_overrides(qwen_base, tmp_path / "sft", out, **{"train.steps": 4}),
                             cls=StageConfig))
    assert result["step"] == 4 and result["info"]["tokenizer"] == "same"
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out / "final").chat_template == CHATML


def test_shipped_sft_config_for_hf_bases(qwen_base, bilingual, tmp_path):
    """recipes/configs/sft_hf_base.toml runs on a Hugging Face base as shipped (no demo sentencepiece
    eval sets); a demo set added to it is refused with the override that drops it."""
    from test_cpt_fixtures import stage_overrides

    from data_prep.sft import prepare_sft
    from minimodel.config import StageConfig, load_config
    from minimodel.sft import run

    config = ROOT / "recipes" / "configs" / "sft_hf_base.toml"
    prepare_sft(tmp_path / "sft", qwen_base, sft_records(), val_fraction=0.25)
    own = stage_overrides(qwen_base, tmp_path / "sft", tmp_path / "run", **{"train.steps": 2})
    assert load_config(str(config), own, cls=StageConfig).eval.sets == []
    assert run(load_config(str(config), own, cls=StageConfig))["step"] == 2
    demo = stage_overrides(qwen_base, tmp_path / "sft", tmp_path / "bad", **{"eval.sets": f'["{bilingual["en"]}"]'})
    with pytest.raises(UserError, match=r"another tokenizer .* drop it with eval\.sets=\[\] .*sft_hf_base\.toml"):
        run(load_config(str(config), demo, cls=StageConfig))
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_demo_instructions_for_a_hf_base(qwen_base, tmp_path, monkeypatch):
    """data_prep.demo_sft --tokenizer BASE: the offline bilingual set rendered with the base's chat template."""
    from test_data_prep_demo_sft import make_db

    from data_prep import demo_sft, offline
    from data_prep.sft import read_sft

    make_db(tmp_path / "bible.db")
    monkeypatch.setattr(offline, "bible_db", lambda cache=None: tmp_path / "bible.db")
    (tmp_path / "data" / "demo_ko").mkdir(parents=True)
    (tmp_path / "data" / "demo_ko" / "heldout.jsonl").write_text(json.dumps({"unit": "1.2", "text": "x"}) + "\n")
    demo_sft.main(["--data", str(tmp_path / "data"), "--tokenizer", str(qwen_base), "--out", str(tmp_path / "sft")])
    m = json.loads((tmp_path / "sft" / "manifest.json").read_text())
    assert m["tokenizer"]["kind"] == "hf" and m["template"] == "the base's chat template"
    tok = open_tokenizer(qwen_base)
    ids, _mask = (read_sft(tmp_path / "sft", "train") + read_sft(tmp_path / "sft", "val"))[0]
    assert tok.tok.decode(ids.tolist(), skip_special_tokens=False).startswith("<|im_start|>user\n")


def test_a_template_without_assistant_turns_is_refused(qwen_base, tmp_path):
    import shutil

    from data_prep.sft import prepare_sft

    bad = tmp_path / "bad"
    shutil.copytree(qwen_base, bad)
    cfg = json.loads((bad / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{% for m in messages if m['role'] == 'user' %}{{ m['content'] }}{% endfor %}"
    (bad / "tokenizer_config.json").write_text(json.dumps(cfg))
    (bad / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(UserError, match="does not render assistant turn 1"):
        prepare_sft(tmp_path / "sft", bad, sft_records(4))
    assert not (tmp_path / "sft").exists()


def test_a_base_whose_two_tokenizers_disagree_is_refused(llama_base, bilingual, tmp_path):
    """A tokenizer.model placed beside a base that uses tokenizer.json (the kit's exports carry both,
    verified equal): the kit would read one and transformers the other."""
    import shutil

    from minimodel.models.loading import load

    odd = tmp_path / "odd"
    shutil.copytree(llama_base, odd)
    shutil.copy2(bilingual["tok_shared"], odd / "tokenizer.model")
    with pytest.raises(UserError, match="tokenizer.model and a tokenizer.json that encode text differently"):
        load(odd)
    assert load(bilingual["core"]).tokenizer.kind == "sentencepiece"  # one tokenizer file: nothing to compare


def test_replay_text_worse_than_uniform_stops_the_stage(bilingual, tmp_path):
    """A base that reads its own language worse than a uniform guess is reading ids that mean nothing
    to it: the stage stops after the first evaluation, saying why (a new language may start that bad)."""
    from test_cpt_fixtures import stage_overrides, write_native_base

    from minimodel.config import CptConfig, load_config
    from minimodel.cpt import run
    from minimodel.models.loading import load

    model = load(bilingual["core"]).net
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)  # confidently wrong about every next token
    base = write_native_base(tmp_path / "base", model, bilingual["tok_shared"])
    cfg = stage_overrides(base, bilingual["ko"], tmp_path / "cpt",
                          **{"replay.path": str(bilingual["en"]), "replay.ratio": 0.05})
    with pytest.raises(UserError, match="first validation loss on en, a language it knows .* worse than a "
                                        "uniform guess over its 1024 tokens"):
        run(load_config(None, cfg, cls=CptConfig))
    assert not (tmp_path / "cpt" / "checkpoints").exists()
    run(load_config(None, stage_overrides(bilingual["core"], bilingual["ko"], tmp_path / "ok", **{
        "replay.path": str(bilingual["en"]), "replay.ratio": 0.05, "train.steps": 2}), cls=CptConfig))


def test_eval_defaults_fit_the_machine(llama_base, tmp_path, monkeypatch, capsys):
    """A base not trained here is scored at a bounded context, with a batch the free memory holds,
    on as many bytes as asked, without transformers' warning about long documents."""
    import logging

    import eval.models as em
    from eval.bpb import main

    warnings = []  # transformers logs through its own handler, bound to whatever stderr was at import
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("transformers").addHandler(handler)

    ko = [" ".join(fixture_docs("korean_1961.jsonl")[i:i + 3]) for i in range(0, 15, 3)]  # > 256 tokens each
    assert len(open_tokenizer(llama_base).encode(ko[0])) > 256
    (tmp_path / "ko.jsonl").write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in ko))
    monkeypatch.setattr(em, "EXTERNAL_CONTEXT", 128)
    vocab = open_tokenizer(llama_base).vocab_size
    per_window = 128 * (vocab * 4 * 3 + 64 * 4 * 16)
    monkeypatch.setattr(em, "free_memory", lambda device: 4 * per_window * 3 + 1)  # room for 3 windows
    limit = len(ko[0].encode("utf-8")) + 1  # crosses into the second document
    doc = main([str(llama_base), "--data", f"ko={tmp_path / 'ko.jsonl'}", "--out", str(tmp_path / "b.json"),
                "--max-bytes", str(limit), "--device", "cpu"])
    r = doc["sets"]["ko"]
    assert r["context"] == 128 and r["docs"] == 2 and r["bytes"] == sum(len(t.encode("utf-8")) for t in ko[:2])
    logging.getLogger("transformers").removeHandler(handler)
    err = capsys.readouterr().err
    assert "scored at context 128 (its maximum is 256" in err and "context 128, batch 3" in err
    assert not [w for w in warnings if "longer than the specified maximum" in w], warnings
    assert em.scoring_batch(em.load_model(llama_base, device="cpu"), 128) == 3


def test_vocabulary_extension_of_a_bpe_tokenizer_and_cpt(llama_base, tmp_path):
    """New Korean merges appended to the base's byte-level BPE: old ids in place, any text round-trips,
    fewer tokens per Korean character; CPT grows the embeddings and the adapter evaluates as final/."""
    from test_cpt_fixtures import stage_overrides

    from data_prep.shards import prepare_from_docs
    from data_prep.tok_report import tokenizer_report
    from data_prep.vocab_ext import extend_hf_tokenizer
    from eval.models import load_model
    from minimodel.config import CptConfig, load_config
    from minimodel.cpt import run

    ko, en = fixture_docs("korean_1961.jsonl"), fixture_docs("english_web.jsonl")
    info = extend_hf_tokenizer(llama_base, ko, tmp_path / "tok", new_vocab_size=3000, max_new=500)
    base, ext = open_tokenizer(llama_base), open_tokenizer(tmp_path / "tok")
    assert info["added"] == 500 and ext.vocab_size == base.vocab_size + 500
    assert all(ext.tok.get_vocab()[t] == i for t, i in base.tok.get_vocab().items())  # old ids never move
    for text in [ODD, *ko[:3], *en[:3]]:
        assert ext.decode(ext.encode(text)) == text
        assert int(ext.token_bytes(ext.vocab_size)[ext.encode(text)].sum()) == len(text.encode("utf-8"))
    before, after = (tokenizer_report(t, {"ko": ko[-10:]})["languages"]["ko"]["tokens_per_char"]
                     for t in (llama_base, tmp_path / "tok"))
    assert after < before
    for name, docs, lang in (("ko", ko, "ko"), ("en", en, "en")):
        prepare_from_docs(tmp_path / name, tmp_path / "tok", {"train": docs[:-6], "val": docs[-6:]},
                          extra_manifest={"language": lang})
    out = tmp_path / "cpt"
    result = run(load_config(None, stage_overrides(llama_base, tmp_path / "ko", out, **{
        "replay.path": str(tmp_path / "en"), "replay.ratio": 0.25, "train.steps": 6}), cls=CptConfig))
    assert result["info"]["tokenizer"] == "extended" and result["info"]["vocab_new_vocab"] == ext.vocab_size
    x = torch.tensor([ext.encode(ko[-1])[:40]])
    merged, via_adapter = load_model(out, device="cpu"), load_model(out / "adapter", device="cpu")
    assert merged.config.vocab_size == via_adapter.config.vocab_size == ext.vocab_size
    assert torch.allclose(via_adapter.logits(x), merged.logits(x), atol=1e-5)
    assert merged.tokenizer.sha256 == ext.sha256  # final/ carries the extended tokenizer, and only it


@pytest.mark.parametrize("base_name,extend", [("llama", False), ("qwen", True)])
def test_the_chain_through_the_cli(base_name, extend, llama_base, qwen_base, tmp_path):
    """data -> (vocabulary extension) -> CPT with LoRA + embeddings and 5% replay -> SFT with the base's
    chat template -> eval -> report, each step the command a user types, on both local bases."""
    base = {"llama": llama_base, "qwen": qwen_base}[base_name]
    ko, en = fixture_docs("korean_1961.jsonl"), fixture_docs("english_web.jsonl")
    for name, docs in (("ko", ko), ("en", en)):
        lines = (json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs)
        (tmp_path / f"{name}.jsonl").write_text("".join(lines))
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for _, r in sft_records()))

    def cli(*args):
        r = subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                           timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert r.returncode == 0, f"{args[0]}: {r.stderr[-2000:]}"
        return r

    tok = base
    if extend:
        cli("data_prep.vocab_ext", "--base", base, "--input", f"ko={tmp_path / 'ko.jsonl'}", "--out", tmp_path / "tok",
            "--new-vocab-size", 2000, "--max-new", 300)
        tok = tmp_path / "tok"
    for lang in ("ko", "en"):
        cli("data_prep.prepare", "--out", tmp_path / f"{lang}_set", "--files", tmp_path / f"{lang}.jsonl",
            "--lang", lang, "--tokenizer", tok, "--val-fraction", "0.1")
    common = ["lora.rank=8", "lora.alpha=16", "optim.lr=2e-3", "optim.warmup_steps=2", "train.micro_batch=8",
              "train.eval_every=4", "train.eval_batches=2", "train.ckpt_every=4", "train.progress=false",
              "train.dtype=fp32", "data.seq_len=64", "train.steps=4"]
    cli("minimodel.cpt", f"base.path={base}", f"data.path={tmp_path / 'ko_set'}", f"replay.path={tmp_path / 'en_set'}",
        "replay.ratio=0.05", f"train.out_dir={tmp_path / 'cpt'}", *common)
    cli("data_prep.sft", "--out", tmp_path / "sft_set", "--files", tmp_path / "sft.jsonl",
        "--tokenizer", tmp_path / "cpt" / "final", "--val-fraction", "0.2")
    cli("minimodel.sft", f"base.path={tmp_path / 'cpt'}", f"data.path={tmp_path / 'sft_set'}",
        f"train.out_dir={tmp_path / 'sft'}", *common)
    sets = ["--data", f"ko={tmp_path / 'ko.jsonl'}", "--data", f"en={tmp_path / 'en.jsonl'}", "--max-docs", 3]
    cli("eval.bpb", base, "--stage", "base", "--out", tmp_path / "base_eval" / "eval" / "bpb.json", *sets)
    for run in ("cpt", "sft"):
        cli("eval.bpb", tmp_path / run, *sets)
    cli("eval.report", tmp_path / "base_eval", tmp_path / "cpt", tmp_path / "sft", "--out", tmp_path / "report")
    rep = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [rep["models"][n]["stage"] for n in ("base_eval", "cpt", "sft")] == ["base", "cpt", "sft"]
    assert {(f["base"], f["adapted"]) for f in rep["forgetting"]} == {("base_eval", "cpt"), ("cpt", "sft")}
    cpt_run = tomllib.loads((tmp_path / "cpt" / "config.toml").read_text())["run"]
    assert cpt_run["tokenizer"] == ("extended" if extend else "same")


def test_pretrain_a_core_with_a_hf_tokenizer(llama_base, tmp_path):
    """The native core pretrains on data made with a Hugging Face tokenizer and exports with it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data_prep.shards import prepare_from_docs
    from minimodel.config import load_config
    from minimodel.pretrain import run
    from minimodel.train.tracking import read_metrics

    en = fixture_docs("english_web.jsonl")
    prepare_from_docs(tmp_path / "en", llama_base, {"train": en[:-6], "val": en[-6:]})
    vocab = open_tokenizer(llama_base).vocab_size
    run(load_config(None, [f"data.path={tmp_path / 'en'}", f"train.out_dir={tmp_path / 'core'}", "model.preset=tiny",
                           f"model.vocab_size={vocab}", "model.d_model=64", "model.n_layers=2", "data.seq_len=64",
                           "train.steps=20", "train.micro_batch=8", "train.eval_every=10", "train.ckpt_every=10",
                           "train.progress=false", "train.dtype=fp32", "optim.warmup_steps=2"]))
    evals = [m["val_bpb"] for m in read_metrics(tmp_path / "core") if "val_bpb" in m]
    assert evals[-1] < evals[0]
    final = tmp_path / "core" / "final"
    assert (final / "tokenizer.json").is_file() and not (final / "tokenizer.model").exists()
    tok, model = AutoTokenizer.from_pretrained(final), AutoModelForCausalLM.from_pretrained(final)
    assert tok("hi")["input_ids"][0] == 0 and model.config.bos_token_id == 0 and model.config.eos_token_id == 1
