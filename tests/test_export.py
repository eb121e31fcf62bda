"""Export to Hugging Face: reload parity, tokenizer equivalence, errors, lm-eval's hf backend."""
import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, tiny_overrides
from hf_helpers import bilingual_tokenizer, fixture_docs, tiny_native
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minimodel.common.errors import UserError
from minimodel.models.export import export_final, export_model, export_run, verify_export
from minimodel.tokenizers.sp_to_hf import build_hf_tokenizer, verify_tokenizer


@pytest.fixture(scope="module")
def bi_tok(tmp_path_factory):
    return bilingual_tokenizer(tmp_path_factory.mktemp("tok") / "enko.model")


@pytest.fixture(scope="module")
def hf_tok(bi_tok):
    return build_hf_tokenizer(bi_tok)


@pytest.fixture(scope="module")
def exported(bi_tok, tmp_path_factory):
    """A QK-norm core exported with export_final into run_dir/final, as pretraining will."""
    run = tmp_path_factory.mktemp("run")
    model = tiny_native(2048, qk_norm=True)
    data_dir = bi_tok.parent
    (data_dir / "heldout.jsonl").write_text(
        "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in fixture_docs("korean_1961.jsonl")[:2]),
        encoding="utf-8")
    final = export_final(model, run, data_dir, {"tokenizer": {"file": bi_tok.name}})
    return final, model


@pytest.mark.parametrize("qk_norm,arch", [(True, "Qwen3ForCausalLM"), (False, "LlamaForCausalLM")])
def test_export_reloads_with_identical_logits(bi_tok, tmp_path, qk_norm, arch):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    model = tiny_native(2048, qk_norm=qk_norm, tied=qk_norm)
    out, report = export_model(model, bi_tok, tmp_path / "hf")
    assert report["max_abs_logit_diff"] < 1e-4
    assert {"en", "ko", "chat"} <= set(report["tokens_compared"])
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "tokenizer.model", "minimodel.json"} <= names
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf).__name__ == arch
    tok = AutoTokenizer.from_pretrained(out)
    text = "In the beginning God created the heavens and the earth. 태초에 하나님이 천지를 창조하시니라"
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max().item() < 1e-4
    gen = GenerationConfig.from_pretrained(out)
    assert gen.eos_token_id == [3, tok.convert_tokens_to_ids("<|im_end|>")] and gen.bos_token_id == 2
    # greedy generation through transformers continues exactly like the native sampler
    from minimodel.nn.generate import generate
    want = generate(model, ids, max_new_tokens=8, temperature=0)
    got = hf.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(got, want)


def test_tokenizer_matches_sentencepiece_in_both_languages(bi_tok, hf_tok):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(bi_tok))
    n = 0
    for lang, name in (("en", "english_web.jsonl"), ("ko", "korean_1961.jsonl")):
        for doc in fixture_docs(name):
            ids = hf_tok(doc, add_special_tokens=False)["input_ids"]
            assert ids == sp.encode(doc), lang
            assert hf_tok.decode(ids) == doc  # exact round trip
            n += len(ids)
    assert n > 100_000
    assert hf_tok("word")["input_ids"] == sp.encode("word")  # no BOS: pretraining text has none


def test_vocab_extended_tokenizer_converts_exactly(tmp_path):
    """Appended pieces (data_prep.vocab_ext) keep their place in the merge order."""
    from data_prep.tokenizer import train_tokenizer
    from data_prep.vocab_ext import extend_tokenizer

    en, ko = fixture_docs("english_web.jsonl"), fixture_docs("korean_1961.jsonl")
    base = train_tokenizer(en, tmp_path / "en.model", 1024)
    extend_tokenizer(base, ko, tmp_path / "enko.model", new_vocab_size=1536)
    texts = {f"ko{i}": t for i, t in enumerate(ko[:20])} | {f"en{i}": t for i, t in enumerate(en[:5])}
    checked = verify_tokenizer(build_hf_tokenizer(tmp_path / "enko.model"), tmp_path / "enko.model", texts)
    assert checked["ko0"] > 100


def test_chat_template_gives_encode_chat_ids(bi_tok, hf_tok):
    import sentencepiece as spm

    from minimodel.tokenizers.chat import encode_chat

    sp = spm.SentencePieceProcessor(model_file=str(bi_tok))
    convs = [
        [{"role": "user", "content": "What was created first?"},
         {"role": "assistant", "content": "The heavens and the earth."}],
        [{"role": "system", "content": "Answer in Korean."}, {"role": "user", "content": " 태초에?"},
         {"role": "assistant", "content": "하나님이 천지를 창조하시니라\n"},
         {"role": "user", "content": "and then"}, {"role": "assistant", "content": "빛이 있으라"}],
    ]
    for conv in convs:
        for prompt in (False, True):
            msgs = conv[:-1] if prompt else conv
            want, _ = encode_chat(sp, msgs, add_generation_prompt=prompt)
            got = hf_tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=prompt)
            got = list(got["input_ids"] if hasattr(got, "keys") else got)
            assert got == want
            assert got[0] == 2 and (got[-1] == 3) != prompt


_PIECES = list(" \n\t abcxyz THE the 태초에 하나님이 0123456789.,!?'\"-é🙂") + ["<|im_start|>", "<|im_end|>"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(_PIECES), max_size=40))
def test_tokenizer_matches_sentencepiece_on_any_text(bi_tok, hf_tok, parts):
    import sentencepiece as spm

    text = "".join(parts)
    if text in ("<|im_start|>", "<|im_end|>"):
        return  # documented difference: a text that is one bare marker (see hf_tokenizer)
    sp = spm.SentencePieceProcessor(model_file=str(bi_tok))
    ids = hf_tok(text, add_special_tokens=False)["input_ids"]
    assert ids == sp.encode(text)
    assert hf_tok.decode(ids) == sp.decode(ids)


def test_verification_rejects_a_mismatch(bi_tok, exported, tmp_path):
    final, model = exported
    other = tiny_native(2048, qk_norm=True, seed=1)
    with pytest.raises(UserError, match="differs from the native model"):
        verify_export(final, other, bi_tok)
    # a tokenizer of another vocabulary is caught on the token ids
    from data_prep.tokenizer import train_tokenizer

    small = train_tokenizer(fixture_docs("english_web.jsonl"), tmp_path / "en.model", 1024)
    with pytest.raises(UserError, match="exported tokenizer differs"):
        verify_tokenizer(build_hf_tokenizer(bi_tok), small)
    assert verify_export(final, model, bi_tok)["max_abs_logit_diff"] < 1e-4


def test_export_leaves_nothing_when_verification_fails(bi_tok, tmp_path, monkeypatch):
    import minimodel.models.export as export

    def broken(native, hf_dir, batch=None):
        return 0.5
    monkeypatch.setattr(export, "logits_diff", broken)
    with pytest.raises(UserError, match="max |logit diff| 0.5"):
        export_model(tiny_native(2048, qk_norm=False), bi_tok, tmp_path / "hf")
    assert not (tmp_path / "hf").exists() and list(tmp_path.iterdir()) == []


def test_save_native_leaves_nothing_when_the_reload_differs(tmp_path, monkeypatch):
    """save_native runs the same reload check as the export (NaN logits count as a mismatch)."""
    import minimodel.models.export as export

    monkeypatch.setattr(export, "logits_diff", lambda native, hf_dir, batch=None: float("nan"))
    with pytest.raises(UserError, match=r"^saved model reloaded by transformers differs from the native model: "
                                        r"max \|logit diff\| nan .*; not written$"):
        export.save_native(tiny_native(2048, qk_norm=False), tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []


def test_tokenizer_larger_than_embeddings_is_an_error(bi_tok, tmp_path):
    with pytest.raises(UserError, match="tokenizer has 2048 tokens but the model embeds only 1024"):
        export_model(tiny_native(1024, qk_norm=True), bi_tok, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_export_run_cli_from_a_pretrained_run(english_set, tmp_path):
    """python -m minimodel.export on a real (seconds-long) run, its final and a checkpoint."""
    from minimodel.config import load_config
    from minimodel.pretrain import run

    run_dir = tmp_path / "run"
    steps = {"train.steps": 6, "train.ckpt_every": 3, "train.eval_every": 6}
    run(load_config(None, tiny_overrides(english_set, run_dir, **steps)))
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "minimodel.export", str(run_dir), str(tmp_path / "hf")],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["max_abs_logit_diff"] < 1e-4 and report["tokens_compared"]["ko"] > 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "qwen3"
    # in place: run_dir/final becomes the full export
    export_run(run_dir, run_dir / "final")
    assert (run_dir / "final" / "tokenizer.json").is_file()
    ck = export_run(run_dir, tmp_path / "ck", checkpoint="step_3")
    assert (ck / "model.safetensors").is_file()


def test_run_without_final_is_a_clear_error(english_set, tmp_path):
    run_dir = tmp_path / "unfinished"
    (run_dir / "checkpoints" / "step_10").mkdir(parents=True)
    with pytest.raises(UserError, match="no final checkpoint.*--checkpoint step_10"):
        export_run(run_dir, tmp_path / "out")
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "minimodel.export", str(tmp_path / "nope"), str(tmp_path / "o")],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 2 and out.stderr.startswith("error: run directory not found")


TASK_DOCS = [
    ("In the beginning God created the", [" heavens and the earth.", " sea and the fish."], 0),
    ("And God said, Let there be", [" darkness.", " light: and there was light."], 1),
    ("태초에 하나님이", [" 천지를 창조하시니라", " 바다를 보시니라"], 0),
    ("God called the light", [" Day, and the darkness he called Night.", " Evening."], 0),
]


def test_lm_eval_hf_backend_on_an_export(exported, bi_tok, tmp_path):
    """lm-eval's own `hf` model class reads the export offline; its log-likelihoods are the native model's."""
    import sentencepiece as spm
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    final, model = exported
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"q": q, "choices": c, "label": y}, ensure_ascii=False) + "\n"
                            for q, c, y in TASK_DOCS), encoding="utf-8")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "mm_export_choice.yaml").write_text(
        "task: mm_export_choice\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: '{{q}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\n"
        "target_delimiter: ''\nmetric_list:\n  - metric: acc\n")
    res = simple_evaluate(model="hf", model_args=f"pretrained={final},dtype=float32,device=cpu",
                          tasks=["mm_export_choice"], task_manager=TaskManager(include_path=str(tmp_path / "tasks")),
                          log_samples=True, batch_size=2)
    sp = spm.SentencePieceProcessor(model_file=str(bi_tok))

    def native_ll(ctx, cont):
        whole, head = sp.encode(ctx + cont), sp.encode(ctx)
        x = torch.tensor([whole])
        with torch.no_grad():
            logp = model(x[:, :-1]).log_softmax(-1)[0]
        return sum(logp[i - 1, whole[i]].item() for i in range(len(head), len(whole)))

    samples = sorted(res["samples"]["mm_export_choice"], key=lambda s: s["doc_id"])
    correct = 0
    for (q, choices, label), s in zip(TASK_DOCS, samples):
        ours = [native_ll(q, c) for c in choices]
        theirs = [r[0] for r in s["filtered_resps"]]
        assert theirs == pytest.approx(ours, abs=1e-3)
        correct += int(max(range(len(ours)), key=ours.__getitem__) == label)
    assert res["results"]["mm_export_choice"]["acc,none"] == pytest.approx(correct / len(TASK_DOCS))
