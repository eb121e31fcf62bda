"""One `Tokenizer` interface for both kinds a model or data set can carry: the kit's sentencepiece
models (`SPTokenizer`) and Hugging Face tokenizers (`HFTokenizer`): document framing, chat ids and
loss mask, exact bytes per token, the files to copy along. `open_tokenizer` opens one named by a
file, a model directory or a hub id (an opened one comes back as it is); `tokenizer_in` finds the
one stored in a model directory (or None); `tokenizer_relation` says whether data's tokenizer is
a base's own or an extension of it.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Protocol

import torch

from minimodel.common.errors import UserError, error_gist, hf_load_errors
from minimodel.common.hub import hub_snapshot, is_hub_id
from minimodel.common.io import file_sha256
from minimodel.tokenizers.chat import CHAT_TOKENS, EOS_ID, encode_chat, load_tokenizer

# The files a Hugging Face tokenizer is made of; a data set or a merged model carries them along.
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                      "merges.txt", "chat_template.jinja")


class Tokenizer(Protocol):
    """A model's tokenizer as the kit uses it, the kit's sentencepiece ones and Hugging Face ones alike."""
    kind: str                  # "sentencepiece" | "hf"
    path: Path                 # the sentencepiece file, or the directory of a Hugging Face tokenizer
    file: Path                 # the one file that fixes the ids: tokenizer.model or tokenizer.json
    sha256: str | None         # of `file` (data sets record it; None when an HF tokenizer has no tokenizer.json)
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    adds_bos: bool             # whether the tokenizer puts BOS before every text (Llama: yes)
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def chat_prompt(self, user: str) -> list[int]: ...
    def document_ids(self, texts: list[str]) -> list[list[int]]: ...
    def chat_ids(self, messages: list[dict]) -> tuple[list[int], list[int]]: ...
    def token_bytes(self, vocab_size: int) -> torch.Tensor: ...
    def files(self) -> list[Path]: ...


class SPTokenizer:
    """The kit's sentencepiece tokenizers (BOS/EOS = 2/3, ChatML markers as single pieces)."""
    kind = "sentencepiece"
    adds_bos = False  # documents follow the previous one's EOS

    def __init__(self, path: str | Path):
        self.path = self.file = Path(path)
        self.sp = load_tokenizer(self.path)
        self.sha256 = file_sha256(self.path)
        self.bos_id, self.eos_id, self.pad_id = (i if i >= 0 else None
                                                 for i in (self.sp.bos_id(), self.sp.eos_id(), self.sp.pad_id()))
        self.vocab_size = self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(list(ids))

    def chat_prompt(self, user: str) -> list[int]:
        return encode_chat(self.sp, [{"role": "user", "content": user}], add_generation_prompt=True)[0]

    def chat_ids(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        """(ids, loss mask) of a conversation in the kit's ChatML; the mask covers assistant replies."""
        missing = [t for t in CHAT_TOKENS if self.sp.piece_to_id(t) == self.sp.unk_id()]
        if missing:
            raise UserError(f"tokenizer {self.path} has no {missing[0]} piece; train it with data_prep.tokenizer")
        return encode_chat(self.sp, messages)

    def document_ids(self, texts: list[str]) -> list[list[int]]:
        """Each document as the pretraining stream holds it: its ids, then EOS (no BOS)."""
        return [ids + [EOS_ID] for ids in self.sp.encode(list(texts), num_threads=1)]

    def token_bytes(self, vocab_size: int) -> torch.Tensor:
        """UTF-8 bytes each token id stands for (0 for control tokens), for bits per byte."""
        lengths = _byte_table(self, vocab_size)
        try:
            for i in range(self.vocab_size):
                if self.sp.is_control(i) or self.sp.is_unknown(i):
                    continue
                lengths[i] = 1 if self.sp.is_byte(i) else len(self.sp.id_to_piece(i).replace(SPACE, " ").encode())
        except UnicodeDecodeError:  # sentencepiece parsed the file, but its pieces are not text
            raise UserError(f"{self.path} holds pieces that are not UTF-8: a damaged tokenizer model") from None
        return lengths

    def files(self) -> list[Path]:
        return [self.path]


class HFTokenizer:
    """A Hugging Face tokenizer (tokenizer.json + tokenizer_config.json) behind the same interface."""
    kind = "hf"

    def __init__(self, path: str | Path):
        from transformers import AutoTokenizer  # transformers and tokenizers take seconds to import: only where used

        self.path = Path(path)
        try:
            self.tok = AutoTokenizer.from_pretrained(str(path))
        except hf_load_errors() as e:  # it reads the directory's config.json too
            raise UserError(f"cannot load the tokenizer of {path}: {error_gist(e)}; "
                            "copy the model's tokenizer files beside it") from None
        self.file = self.path / "tokenizer.json"
        self.sha256 = file_sha256(self.file) if self.file.is_file() else None
        self.bos_id, self.eos_id, self.pad_id = self.tok.bos_token_id, self.tok.eos_token_id, self.tok.pad_token_id
        self.vocab_size = len(self.tok)
        # the tokenizer's own convention: does it put BOS before a text? (Llama yes, Qwen no)
        self.adds_bos = self.bos_id is not None and self.tok.encode("a")[:1] == [self.bos_id]

    def encode(self, text: str) -> list[int]:
        # the backend directly: transformers would warn that a document is longer than the model's
        # maximum, which windowed scoring handles
        return self.tok.backend_tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def chat_prompt(self, user: str) -> list[int]:
        msgs = [{"role": "user", "content": user}]
        if getattr(self.tok, "chat_template", None):
            out = self.tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
            return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)
        return self.encode(user + "\n")

    def chat_ids(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        """(ids, loss mask) of a conversation in the base's own chat template. The mask covers each
        assistant turn: the text its rendering adds after the prompt before it (with the generation
        prompt), up to the end of the turn."""
        if not getattr(self.tok, "chat_template", None):
            raise UserError(f"the tokenizer in {self.path} has no chat template; SFT on this base needs one "
                            "(set chat_template in its tokenizer_config.json)")
        render = lambda msgs, prompt: self.tok.apply_chat_template(msgs, tokenize=False,  # noqa: E731
                                                                   add_generation_prompt=prompt)
        text, spans = render(messages, False), []
        for k, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before, upto = render(messages[:k], True), render(messages[:k + 1], False)
            if not (upto.startswith(before) and text.startswith(upto)) or len(upto) == len(before):
                raise UserError(f"the chat template of {self.path} does not render assistant turn {k} as a "
                                "continuation of the prompt before it, so the loss mask has no place to go")
            spans.append((len(before), len(upto)))
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        mask = [int(any(a <= start < b for a, b in spans)) for start, _ in enc["offset_mapping"]]
        return list(enc["input_ids"]), mask

    def document_ids(self, texts: list[str]) -> list[list[int]]:
        """Each document as the base saw text in pretraining: BOS when the tokenizer adds one, the ids, EOS."""
        if self.eos_id is None:
            raise UserError(f"the tokenizer in {self.path} names no EOS token, so documents cannot be separated; "
                            "set eos_token in its tokenizer_config.json")
        head = [self.bos_id] if self.adds_bos else []
        encoded = self.tok.backend_tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [head + e.ids + [self.eos_id] for e in encoded]

    def token_bytes(self, vocab_size: int) -> torch.Tensor:
        """UTF-8 bytes each token id stands for (0 for special tokens): byte-level BPE spells bytes as
        printable characters, so the table is inverted, not decoded per token (a token can be part of
        a character); sentencepiece-style vocabularies spell a space as ▁ and a byte as <0xNN>."""
        lengths = _byte_table(self, vocab_size)
        backend = self.tok.backend_tokenizer
        byte_level = "ByteLevel" in backend.to_str()
        special = {i for i, t in backend.get_added_tokens_decoder().items() if t.special}
        char_bytes = {c: 1 for c in _BYTE_LEVEL_CHARS}
        for token, i in backend.get_vocab(with_added_tokens=True).items():
            if i in special or i >= vocab_size:
                continue
            if byte_level and all(c in char_bytes for c in token):
                lengths[i] = len(token)  # one printable character per byte
            elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
                lengths[i] = 1
            else:
                lengths[i] = len(token.replace(SPACE, " ").encode("utf-8"))
        return lengths

    def files(self) -> list[Path]:
        return [self.path / f for f in HF_TOKENIZER_FILES if (self.path / f).is_file()]


SPACE = "\u2581"  # sentencepiece's visible space


def _byte_level_chars() -> str:
    """The 256 printable characters GPT-2's byte-level BPE writes bytes as (a fixed, published table;
    transformers keeps it only in internal modules that move between releases)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in keep]
    return "".join(map(chr, keep)) + "".join(chr(256 + n) for n in range(len(moved)))


_BYTE_LEVEL_CHARS = _byte_level_chars()


def _byte_table(tok, vocab_size: int) -> torch.Tensor:
    if tok.vocab_size > vocab_size:
        raise UserError(f"tokenizer {tok.path} has {tok.vocab_size} tokens but the model has "
                        f"vocab_size={vocab_size}: they do not belong together")
    return torch.zeros(vocab_size, dtype=torch.float64)


def copy_tokenizer(tok: Tokenizer, out_dir: Path) -> None:
    """Put a tokenizer's files into a directory (a data set, an adapter, a merged model): the kit's
    sentencepiece model as tokenizer.model, a Hugging Face tokenizer's files under their names."""
    for f in tok.files():
        name = "tokenizer.model" if tok.kind == "sentencepiece" else f.name
        if f.resolve() != (out_dir / name).resolve():
            shutil.copyfile(f, out_dir / name)


def open_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer named by its file (a sentencepiece .model, a tokenizer.json), a model directory, or a
    hub id (when online, or cached); an opened tokenizer is returned as it is."""
    if isinstance(path, (SPTokenizer, HFTokenizer)):
        return path
    p = Path(path)
    if is_hub_id(path):
        p = hub_snapshot(str(path), tokenizer_only=True)
    if p.is_dir():
        tok = tokenizer_in(p)
        if tok is None:
            raise UserError(f"{p} holds no tokenizer (tokenizer.model, or tokenizer.json + tokenizer_config.json)")
        return tok
    if p.name.endswith(".json"):
        if not p.is_file():
            raise UserError(f"tokenizer not found: {p}")
        return HFTokenizer(p.parent)
    return SPTokenizer(p)


def tokenizer_in(model_dir: Path) -> Tokenizer | None:
    """The tokenizer stored in a model (or adapter) directory: the kit's sentencepiece model when there
    is one, else a Hugging Face tokenizer; None when the directory holds neither."""
    if (model_dir / "tokenizer.model").is_file():
        sp = SPTokenizer(model_dir / "tokenizer.model")
        if (model_dir / "tokenizer.json").is_file():
            _check_agree(sp, HFTokenizer(model_dir))
        return sp
    if any((model_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return HFTokenizer(model_dir)
    return None


# Short texts both tokenizers of a directory must encode alike (the kit's exports are verified on more).
AGREEMENT_TEXTS = ("In the beginning God created the heaven and the earth, 1234 times.\n  Two  spaces;",
                   "태초에 하나님이 천지를 창조하시니라. 2024년 3월 1일", "Emoji 🙂, 漢字 and ünïcödé")


def _check_agree(sp: SPTokenizer, hf: HFTokenizer) -> None:
    """A directory holding a tokenizer.model and a tokenizer.json that encode differently would be read
    one way by the kit and another way by transformers: refuse it."""
    for text in AGREEMENT_TEXTS:
        if sp.encode(text) != hf.encode(text):
            raise UserError(f"{sp.path.parent} holds a tokenizer.model and a tokenizer.json that encode text "
                            f"differently ({text[:20]!r}...), so one is another tokenizer than the model's: the kit "
                            "would read one and transformers the other; remove the one that does not belong to it")


def tokenizer_relation(base_tok: Tokenizer | None, data_tok: Tokenizer | str | Path, base_source: str) -> str:
    """"same" when the data was tokenised with the base's tokenizer (the file that fixes the ids is
    identical); "extended" when the data's tokenizer is the base's with tokens appended, every old id
    in place (data_prep.vocab_ext); UserError otherwise."""
    if base_tok is None or base_tok.sha256 is None:
        raise UserError(f"base {base_source} has no tokenizer file (tokenizer.model or tokenizer.json): cannot "
                        "check that the data was tokenised for it; copy the base's tokenizer files beside its weights")
    if not isinstance(data_tok, (SPTokenizer, HFTokenizer)):
        if not Path(data_tok).is_file():
            raise UserError(f"the data's tokenizer {data_tok} is missing; prepare the data again")
        data_tok = open_tokenizer(data_tok)
    if base_tok.sha256 == data_tok.sha256:
        return "same"
    if isinstance(base_tok, SPTokenizer) and isinstance(data_tok, SPTokenizer):
        b, d = base_tok.sp, data_tok.sp
        nb, nd = b.get_piece_size(), d.get_piece_size()
        if nd > nb and all(b.id_to_piece(i) == d.id_to_piece(i) for i in range(nb)):
            return "extended"
    if isinstance(base_tok, HFTokenizer) and isinstance(data_tok, HFTokenizer):
        old, new = base_tok.tok.get_vocab(), data_tok.tok.get_vocab()
        if len(new) > len(old) and all(new.get(t) == i for t, i in old.items()):
            return "extended"
    raise UserError(f"the data's tokenizer {data_tok.file} does not match base {base_source} ({base_tok.file.name}): "
                    f"tokenise the data with the base's tokenizer (python -m data_prep.prepare --tokenizer "
                    f"{base_tok.path}), or extend it with python -m data_prep.vocab_ext")
