"""eval on real small models: bits per byte against a hand computation, the loaders (native,
Hugging Face dir, base + adapter), the lm-eval adapter on the local tasks, generations."""
import json
import math
import shutil

import pytest
import torch
from conftest import read_docs

from minimodel.common.errors import UserError

HELD = read_docs("english_web.jsonl")[80:84]


def tiny_run(tmp_path, data_dir, seed=0, name="run"):
    """A run directory holding a randomly initialised sub-million-parameter MiniModel."""
    from minimodel.data.format import read_manifest
    from minimodel.models.export import export_final
    from minimodel.nn.model import MiniModel, model_config_from

    torch.manual_seed(seed)
    model = MiniModel(model_config_from("tiny", vocab_size=1024, d_model=64, n_layers=2, n_heads=4,
                                        n_kv_heads=2, ffn_dim=192, max_seq_len=512))
    run = tmp_path / name
    run.mkdir()
    (run / "config.toml").write_text(f'[data]\npath = "{data_dir}"\nseq_len = 64\n[train]\nseed = {seed}\n')
    export_final(model, run, data_dir, read_manifest(data_dir))
    return run, model


def write_jsonl(path, texts, lang="en"):
    path.write_text("".join(json.dumps({"text": t, "lang": lang}) + "\n" for t in texts), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def native(english_set, tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("native"), english_set)


def hand_bpb(model, sp, texts):
    """One full forward per document (no windows): -sum log p(token | EOS + previous) / ln 2 / bytes."""
    nll = 0.0
    for t in texts:
        seq = torch.tensor([[3] + sp.encode(t)])
        logp = torch.log_softmax(model(seq[:, :-1]).double(), -1)
        nll -= logp[0, torch.arange(seq.shape[1] - 1), seq[0, 1:]].sum().item()
    return nll / math.log(2) / sum(len(t.encode("utf-8")) for t in texts)


def test_bpb_matches_hand_computation(native, english_set, tmp_path):
    import sentencepiece as spm

    from eval.bpb import bits_per_byte, parse_set
    from eval.models import load_model

    run, model = native
    sp = spm.SentencePieceProcessor(model_file=str(english_set / "tokenizer.model"))
    texts = [t[:700] for t in HELD]  # each under 512 tokens: one window per document
    s = parse_set(str(write_jsonl(tmp_path / "held.jsonl", texts)))
    assert s["name"] == "en_held"
    lm = load_model(run)
    assert lm.kind == "native" and lm.context == 64  # the run's training seq_len
    got = bits_per_byte(lm, s, ctx=512)
    assert got["bytes"] == sum(len(t.encode()) for t in texts)
    assert got["bpb"] == pytest.approx(hand_bpb(model.eval(), sp, texts), rel=1e-6)
    assert 9 < got["bpb"] * got["bytes"] / got["tokens"] < 11  # random init: about log2(1024) bits a token

    # long documents: sliding windows at the training context; deterministic, batch-size independent
    full = write_jsonl(tmp_path / "full.jsonl", HELD)
    a = bits_per_byte(lm, parse_set(str(full)), batch_size=16)
    b = bits_per_byte(lm, parse_set(str(full)), batch_size=3)
    assert a["tokens"] > 4 * 64 and a["bpb"] == pytest.approx(b["bpb"], rel=1e-9)
    assert a == bits_per_byte(lm, parse_set(str(full)), batch_size=16)


def test_bpb_on_token_shards_checks_the_tokenizer(native, english_set, tmp_path):
    from data_prep.tokenizer import train_tokenizer
    from eval.bpb import bits_per_byte, parse_set
    from eval.models import load_model

    lm = load_model(native[0])
    with pytest.raises(UserError, match="cannot tell the language"):
        parse_set(f"{english_set}:val")  # this set's manifest names no language
    s = parse_set(f"en_val={english_set}:val")
    assert (s["name"], s["kind"], s["split"]) == ("en_val", "shards", "val")
    man = json.loads((english_set / "manifest.json").read_text())
    got = bits_per_byte(lm, s)
    assert got["tokens"] == man["splits"]["val"]["tokens"] and got["bytes"] == man["splits"]["val"]["bytes"]
    # a model whose tokenizer is another one must not score these shards
    other = tmp_path / "other"
    other.mkdir()
    train_tokenizer(read_docs("english_web.jsonl")[:40], other / "tokenizer.model", vocab_size=1024)
    run2 = tmp_path / "run2"
    shutil.copytree(native[0], run2)
    shutil.copy(other / "tokenizer.model", run2 / "final" / "tokenizer.model")
    with pytest.raises(UserError, match="another tokenizer"):
        bits_per_byte(load_model(run2), s)


def test_bpb_cli_and_bad_input(native, english_set, tmp_path, capsys):
    from eval.bpb import main

    run = native[0]
    held = write_jsonl(tmp_path / "heldout.jsonl", HELD[:2])
    doc = main([str(run), "--data", f"en_heldout={held}", "--data", f"en_val={english_set}:val", "--stage", "base"])
    saved = json.loads((run / "eval" / "bpb.json").read_text())
    assert saved == json.loads(json.dumps(doc)) and set(saved["sets"]) == {"en_heldout", "en_val"}
    assert saved["stage"] == "base" and saved["command"].startswith("python -m eval.bpb")
    for bad, _msg in [([str(run), "--data", f"heldout={held}"], "language code"),
                     ([str(run), "--data", str(tmp_path / "missing.jsonl")], "not found"),
                     ([str(tmp_path), "--data", str(held)], "model not found|not a run|no tokenizer|cannot load")]:
        with pytest.raises(SystemExit) as e:
            main(bad)
        assert e.value.code == 2
        assert "error:" in capsys.readouterr().err
    nolang = tmp_path / "x.jsonl"
    nolang.write_text(json.dumps({"text": "hello there"}) + "\n")
    with pytest.raises(SystemExit):
        main([str(run), "--data", str(nolang), "--out", str(tmp_path / "o.json")])
    assert "LANG_NAME" in capsys.readouterr().err and not (tmp_path / "o.json").exists()


def test_hf_dir_and_base_plus_adapter(native, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from eval.bpb import bits_per_byte, parse_set
    from eval.models import load_model

    run = native[0]
    hf_dir = tmp_path / "hf"
    shutil.copytree(run / "final", hf_dir)
    (hf_dir / "minimodel.json").unlink()  # a plain Hugging Face directory now
    held = parse_set(str(write_jsonl(tmp_path / "h.jsonl", [t[:600] for t in HELD[:2]])))
    nat, hf = load_model(run, context=256), load_model(hf_dir, context=256)
    assert hf.kind == "hf" and hf.tokenizer.sha256 == nat.tokenizer.sha256
    assert bits_per_byte(hf, held)["bpb"] == pytest.approx(bits_per_byte(nat, held)["bpb"], rel=1e-5)

    torch.manual_seed(1)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(hf_dir)),
                                LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[3, 10, 200, 31, 7]])
    with torch.no_grad():
        want = peft_model(input_ids=ids).logits
    adapted = load_model(hf_dir, adapter=tmp_path / "adapter", context=256)
    assert torch.allclose(adapted.logits(ids), want, atol=1e-4)
    assert not torch.allclose(hf.logits(ids), want, atol=1e-3)  # the adapter changes the model
    assert bits_per_byte(adapted, held)["bpb"] != pytest.approx(bits_per_byte(hf, held)["bpb"], rel=1e-6)


def test_bpb_and_generations_of_a_base_print_without_out(native, tmp_path, capsys):
    """Scoring a model that is no run directory (a Hugging Face dir) needs no --out: the numbers print
    and the JSON goes to stdout; nothing is written into the model's directory."""
    from eval.bpb import main
    from eval.generations import main as generate

    hf_dir = tmp_path / "hf"
    shutil.copytree(native[0] / "final", hf_dir)
    (hf_dir / "minimodel.json").unlink()
    held = write_jsonl(tmp_path / "h.jsonl", [t[:300] for t in HELD[:2]])
    doc = main([str(hf_dir), "--data", f"en_h={held}", "--ctx", "64"])
    out = capsys.readouterr()
    assert json.loads(out.out)["sets"]["en_h"]["bpb"] == pytest.approx(doc["sets"]["en_h"]["bpb"])
    assert doc["sets"]["en_h"]["bpb"] > 0
    assert "en_h" in out.err and "bits/byte" in out.err and "--out FILE.json" in out.err
    assert not (hf_dir / "eval").exists()
    doc = main([str(hf_dir), "--data", f"en_h={held}", "--ctx", "64", "--out", str(tmp_path / "b.json")])
    assert json.loads((tmp_path / "b.json").read_text())["sets"] == json.loads(json.dumps(doc["sets"]))
    assert capsys.readouterr().out == ""  # written, not printed
    gen = generate([str(hf_dir), "--max-new-tokens", "4"])
    assert json.loads(capsys.readouterr().out)["samples"] == json.loads(json.dumps(gen["samples"]))
    assert not (hf_dir / "eval").exists()


def test_lm_eval_adapter_on_local_tasks(native, tmp_path):
    from eval.bpb import bits_per_byte, parse_set
    from eval.harness import evaluate
    from eval.lm_adapter import MiniModelLM
    from eval.models import load_model

    run = native[0]
    held = write_jsonl(tmp_path / "heldout.jsonl", HELD)
    res = evaluate(str(run), ["minimodel_ppl_en", "minimodel_cloze_en"], limit=3, heldout={"en": str(held)})
    ours = bits_per_byte(load_model(run), parse_set(str(held)), max_docs=3)
    assert res["results"]["minimodel_ppl_en"]["bits_per_byte"] == pytest.approx(ours["bpb"], rel=1e-6)
    acc = res["items"]["minimodel_cloze_en"]["acc"]
    assert len(acc) == 3 and set(acc.values()) <= {0.0, 1.0}
    assert res["results"]["minimodel_cloze_en"]["acc"] == pytest.approx(sum(acc.values()) / 3)

    # loglikelihood of a continuation = the hand-summed log-probabilities of its tokens
    lm = MiniModelLM(str(run))
    sp = lm.lm.tokenizer.sp

    class Req:
        args = ("In the beginning God", " created the heavens")
    (ll, greedy), = lm.loglikelihood([Req()])
    ctx, cont = sp.encode("In the beginning God"), sp.encode("In the beginning God created the heavens")
    cont = cont[len(ctx):]
    seq = torch.tensor([[3] + ctx + cont])
    logp = torch.log_softmax(lm.lm.net(seq[:, :-1]).double(), -1)[0]
    want = sum(logp[len(ctx) + i, t].item() for i, t in enumerate(cont))
    assert ll == pytest.approx(want, rel=1e-5) and isinstance(greedy, bool)


def test_harness_task_names():
    from eval.harness import check_tasks

    with pytest.raises(UserError, match="did you mean hellaswag"):
        check_tasks(["hellaswg"])
    with pytest.raises(UserError, match="minimodel_cloze_ko"):
        check_tasks(["minimodel_cloze_kr"])
    with pytest.raises(UserError, match="need the Hugging Face hub"):
        check_tasks(["minimodel_ppl_en", "kobest_copa"])  # tests run with HF_HUB_OFFLINE=1
    assert check_tasks(["minimodel_ppl_ko"]) == (["minimodel_ppl_ko"], [])


def test_one_device_choice_for_training_eval_and_dream(monkeypatch):
    """eval, dream and training pick their device with the same function: auto falls back to the CPU,
    an explicit device string is kept, cuda without a GPU and an unknown name are user errors."""
    import eval.models as em
    from minimodel.common.distributed import pick_device

    assert em.pick_device is pick_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu") and pick_device("cpu", 3) == torch.device("cpu")
    assert pick_device("meta") == torch.device("meta")
    with pytest.raises(UserError, match="no CUDA device is visible"):
        pick_device("cuda")
    with pytest.raises(UserError, match="unknown device 'gpu'"):
        pick_device("gpu")


def test_generations_table_and_repetition(native, tmp_path):
    from eval.generations import main

    run = native[0]
    doc = main([str(run), "--max-new-tokens", "12", "--out", str(tmp_path / "g.json")])
    again = json.loads((tmp_path / "g.json").read_text())
    assert len(doc["samples"]) == 16 and again["samples"] == json.loads(json.dumps(doc["samples"]))
    cells = {(s["lang"], s["kind"]) for s in doc["samples"]}
    assert cells == {("ko", "encyclopedia"), ("en", "encyclopedia"), ("ko", "instruction"), ("en", "instruction")}
    for s in doc["samples"]:
        assert 0 <= s["new_tokens"] <= 12 and s["mode"] in ("greedy", "sampled")
        assert set(s["repetition"]) >= {"distinct_1", "distinct_2", "rep_4"}
    # greedy decoding is deterministic, and sampling is seeded
    twice = main([str(run), "--max-new-tokens", "12", "--out", str(tmp_path / "g2.json")])
    assert [s["text"] for s in twice["samples"]] == [s["text"] for s in doc["samples"]]


def test_a_character_cut_by_the_token_budget_is_dropped(tmp_path):
    from hf_helpers import byte_level_tokenizer
    from transformers import AutoTokenizer

    from eval.generations import drop_cut_character

    # a byte-level tokenizer with few merges spells a Korean syllable in several tokens
    tok = AutoTokenizer.from_pretrained(byte_level_tokenizer(tmp_path / "t", "llama3", vocab_size=300))
    ids = tok("수도로", add_special_tokens=False)["input_ids"]
    cut = tok.decode(ids[:-1])  # a budget that ends inside the last syllable
    assert cut.endswith("\ufffd") and drop_cut_character(cut) == "수도"
    assert drop_cut_character("수도로") == "수도로"


def test_suite_writes_what_the_three_commands_write(native, english_set, tmp_path):
    """eval.suite: eval.bpb, eval.generations and eval.harness in one process, the same JSONs."""
    from eval import bpb, generations, harness, suite

    runs = {}
    for name in ("apart", "suite"):
        runs[name] = tmp_path / name
        shutil.copytree(native[0], runs[name], ignore=shutil.ignore_patterns("eval"))
    held = write_jsonl(tmp_path / "h.jsonl", [t[:400] for t in HELD[:2]])
    a = str(runs["apart"])
    bpb.main([a, "--data", f"en_h={held}", "--data", f"en_val={english_set}:val", "--ctx", "64", "--stage", "base"])
    generations.main([a, "--stage", "base"])
    harness.main([a, "--tasks", "minimodel_cloze_en", "--stage", "base"])
    suite.main([str(runs["suite"]), "--data", f"en_h={held}", "--data", f"en_val={english_set}:val", "--ctx", "64",
                "--tasks", "minimodel_cloze_en", "--stage", "base"])
    for file, key in (("bpb.json", "sets"), ("generations.json", "samples"), ("lm_eval.json", "results")):
        got, want = (json.loads((runs[n] / "eval" / file).read_text()) for n in ("suite", "apart"))
        assert got[key] == want[key] and got["stage"] == want["stage"] == "base", file
