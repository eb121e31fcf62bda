"""SFT: conversations and Alpaca records -> ChatML ids with a loss mask on assistant tokens only."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_prep.sft import prepare_sft, read_sft, to_messages
from data_prep.sources import records
from data_prep.tokenizer import train_tokenizer, weighted_texts
from minimodel.common.errors import UserError
from minimodel.tokenizers.chat import BOS_ID, EOS_ID, encode_chat, load_tokenizer, render_chat

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"
EN = [json.loads(line)["text"] for line in (FIX / "english_web.jsonl").read_text().splitlines()]
KO = [json.loads(line)["text"] for line in (FIX / "korean_1961.jsonl").read_text().splitlines()]

ROWS = [
    {"messages": [{"role": "system", "content": "Answer briefly."},
                  {"role": "user", "content": "Who created the heavens?"},
                  {"role": "assistant", "content": "God created the heavens and the earth."},
                  {"role": "user", "content": "한국어로 말해 주세요."},
                  {"role": "assistant", "content": "하나님이 천지를 창조하셨습니다."}]},
    {"instruction": "Translate to Korean.", "input": "Let there be light.", "output": "빛이 있으라."},
    {"instruction": "Name the first day.", "input": "", "output": "Day."},
    {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(weighted_texts({"en": EN, "ko": KO}), tmp_path_factory.mktemp("t") / "tok.model", 2000)


def test_template_text():
    text, spans = render_chat(to_messages(ROWS[1]))
    assert text == ("<|im_start|>user\nTranslate to Korean.\n\nLet there be light.<|im_end|>\n"
                    "<|im_start|>assistant\n빛이 있으라.<|im_end|>\n")
    assert [text[a:b] for a, b in spans] == ["빛이 있으라.<|im_end|>"]
    prompt, _ = render_chat(to_messages(ROWS[2])[:1], add_generation_prompt=True)
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_mask_covers_exactly_the_assistant_replies(tok):
    sp = load_tokenizer(tok)
    for row in ROWS:
        msgs = to_messages(row)
        ids, mask = encode_chat(sp, msgs)
        assert ids[0] == BOS_ID and ids[-1] == EOS_ID and len(ids) == len(mask)
        assert sp.decode(ids) == render_chat(msgs)[0]  # one string, exact round-trip
        learned = sp.decode([i for i, m in zip(ids, mask) if m])
        assert learned == "".join(m["content"] + "<|im_end|>" for m in msgs if m["role"] == "assistant")
        assert mask[0] == 0 and mask[-1] == 0


def test_prepare_sft_local_file(tmp_path, tok):
    f = tmp_path / "sft.jsonl"
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS * 5))
    m = prepare_sft(tmp_path / "sft", tok, records(f), val_fraction=0.0)
    assert m["format"] == "minimodel-sft-v1" and m["splits"]["train"]["examples"] == 20
    ex = read_sft(tmp_path / "sft", "train")
    sp = load_tokenizer(tmp_path / "sft" / "tokenizer.model")
    assert sp.decode([int(i) for i, k in zip(*ex[1]) if k]) == "빛이 있으라.<|im_end|>"
    assert sum(int(k.sum()) for _, k in ex) == m["splits"]["train"]["loss_tokens"] > 0


def test_bad_sft_records(tmp_path, tok):
    with pytest.raises(UserError, match=r"fields are \['prompt', 'response'\]"):
        to_messages({"prompt": "a", "response": "b"})
    with pytest.raises(UserError, match="no assistant message"):
        to_messages({"messages": [{"role": "user", "content": "hi"}]})
    with pytest.raises(UserError, match="role in"):
        to_messages({"messages": [{"role": "bot", "content": "hi"}]})
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"prompt": "a"}) + "\n")
    r = subprocess.run([sys.executable, "-m", "data_prep.sft", "--out", str(tmp_path / "o"), "--files", str(f),
                        "--tokenizer", str(tok)], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "bad.jsonl:1" in r.stderr
    assert not (tmp_path / "o").exists()
