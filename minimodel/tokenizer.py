"""The kit's sentencepiece tokenizers: special ids, ChatML markers, loading and the chat encoding.

data_prep.tokenizer trains tokenizers with these ids and pieces; data_prep.sft encodes SFT
sets with `encode_chat`, and inference (eval, the export's check) encodes prompts with it too.

Chat template (Qwen/MiniMind ChatML; the markers are single pieces of our tokenizers):
    <|im_start|>system\n...<|im_end|>\n<|im_start|>user\n...<|im_end|>\n<|im_start|>assistant\n...<|im_end|>\n
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import sentencepiece as spm

from minimodel.errors import UserError, error_gist
from minimodel.io import file_sha256

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


# ---------------------------------------------------------------- a model's tokenizer, whatever its kind

class Tokenizer(Protocol):
    """What inference needs of a model's tokenizer: the kit's sentencepiece ones and Hugging Face ones alike."""
    path: Path                 # the sentencepiece file, or the directory of a Hugging Face tokenizer
    sha256: str | None         # of the sentencepiece file (token shards record it); None for HF tokenizers
    bos_id: int | None
    eos_id: int | None
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def chat_prompt(self, user: str) -> list[int]: ...


class SPTokenizer:
    """The kit's sentencepiece tokenizers (BOS/EOS = 2/3, ChatML markers as single pieces)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.sp = load_tokenizer(self.path)
        self.sha256 = file_sha256(self.path)
        self.bos_id = self.sp.bos_id() if self.sp.bos_id() >= 0 else None
        self.eos_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else None
        self.vocab_size = self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(list(ids))

    def chat_prompt(self, user: str) -> list[int]:
        return encode_chat(self.sp, [{"role": "user", "content": user}], add_generation_prompt=True)[0]


class HFTokenizer:
    """A Hugging Face tokenizer (tokenizer.json / tokenizer_config.json) behind the same interface."""

    def __init__(self, path: str | Path):
        from transformers import AutoTokenizer

        self.path = Path(path)
        try:
            self.tok = AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise UserError(f"cannot load the tokenizer of {path}: {error_gist(e)}; "
                            "copy the model's tokenizer files beside it") from None
        self.sha256 = None  # not a single file: token shards can only be checked against sentencepiece
        self.bos_id, self.eos_id = self.tok.bos_token_id, self.tok.eos_token_id
        self.vocab_size = len(self.tok)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def chat_prompt(self, user: str) -> list[int]:
        msgs = [{"role": "user", "content": user}]
        if getattr(self.tok, "chat_template", None):
            out = self.tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
            return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)
        return self.encode(user + "\n")


def tokenizer_in(model_dir: Path) -> Tokenizer | None:
    """The tokenizer stored in a model (or adapter) directory: the kit's sentencepiece model when there
    is one, else a Hugging Face tokenizer; None when the directory holds neither."""
    if (model_dir / "tokenizer.model").is_file():
        return SPTokenizer(model_dir / "tokenizer.model")
    if any((model_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return HFTokenizer(model_dir)
    return None


def tokenizer_relation(base_tok: Tokenizer | None, data_tok: Path, base_source: str) -> str:
    """"same" when the data was tokenised with the base's tokenizer; "extended" when the data's
    tokenizer is the base's with pieces appended (data_prep.vocab_ext); UserError otherwise."""
    if not isinstance(base_tok, SPTokenizer):
        raise UserError(f"base {base_source} has no tokenizer.model: cannot check that the data was tokenised "
                        f"for it; put the sentencepiece model the data was made with beside its weights")
    if not Path(data_tok).is_file():
        raise UserError(f"the data's tokenizer {data_tok} is missing; prepare the data again")
    if base_tok.sha256 == file_sha256(data_tok):
        return "same"
    b, d = base_tok.sp, load_tokenizer(data_tok)
    nb, nd = b.get_piece_size(), d.get_piece_size()
    if nd > nb and all(b.id_to_piece(i) == d.id_to_piece(i) for i in range(nb)):
        return "extended"
    raise UserError(f"the data's tokenizer {data_tok} does not match base {base_source} ({nd} vs {nb} pieces, "
                    "not an extension of it): tokenise the data with the base's tokenizer.model, or extend it "
                    "with python -m data_prep.vocab_ext")
