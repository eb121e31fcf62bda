"""The kit's sentencepiece tokenizers: special ids, ChatML markers, loading and the chat encoding.

data_prep.tokenizer trains tokenizers with these ids and pieces; data_prep.sft encodes SFT
sets with `encode_chat`, and inference (eval, the export's check) encodes prompts with it too.

Chat template (Qwen/MiniMind ChatML; the markers are single pieces of our tokenizers):
    <|im_start|>system\n...<|im_end|>\n<|im_start|>user\n...<|im_end|>\n<|im_start|>assistant\n...<|im_end|>\n
"""
from __future__ import annotations

from pathlib import Path

import sentencepiece as spm

from minimodel.common.errors import UserError

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


# ChatML-style role markers, as Qwen and MiniMind use; one piece each.
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")


IM_START, IM_END = CHAT_TOKENS


def load_tokenizer(path: str | Path) -> spm.SentencePieceProcessor:
    """A sentencepiece model; UserError when the file is missing or not a sentencepiece model."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"tokenizer not found: {path} (train one with python -m data_prep.tokenizer)")
    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError, ValueError) as e:  # a bad protobuf: RuntimeError or UnicodeDecodeError
        raise UserError(f"{path} is not a sentencepiece model ({str(e).splitlines()[0] if str(e) else 'unreadable'}); "
                        "give the tokenizer.model the data was prepared with") from None


def render_chat(messages: list[dict], add_generation_prompt: bool = False) -> tuple[str, list[tuple[int, int]]]:
    """The template text and the character spans the loss covers (assistant replies + <|im_end|>)."""
    parts, spans, pos = [], [], 0
    for m in messages:
        head = f"{IM_START}{m['role']}\n"
        body = f"{m['content']}{IM_END}"
        if m["role"] == "assistant":
            spans.append((pos + len(head), pos + len(head) + len(body)))
        chunk = head + body + "\n"
        parts.append(chunk)
        pos += len(chunk)
    if add_generation_prompt:
        parts.append(f"{IM_START}assistant\n")
    return "".join(parts), spans


def encode_chat(sp, messages: list[dict], add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """(ids, mask): BOS + rendered template (+ EOS unless prompting); mask 1 on assistant spans."""
    text, spans = render_chat(messages, add_generation_prompt)
    # byte offsets of the character spans (sentencepiece reports byte offsets)
    bspans = [(len(text[:a].encode("utf-8")), len(text[:b].encode("utf-8"))) for a, b in spans]
    proto = sp.encode(text, return_type="proto")
    ids, mask = [BOS_ID], [0]
    for p in proto.pieces:
        ids.append(p.id)
        mask.append(int(any(a <= p.begin < b for a, b in bspans)))
    if not add_generation_prompt:
        ids.append(EOS_ID)
        mask.append(0)
    return ids, mask
