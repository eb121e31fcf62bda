"""Our sentencepiece tokenizer as Hugging Face tokenizer files (tokenizer.json + config).

`AutoTokenizer.from_pretrained(dir)` then loads offline and encodes exactly like the
sentencepiece model: same ids on any text, and `apply_chat_template` gives the ids of
`minimodel.tokenizers.chat.encode_chat` (BOS + ChatML + EOS, or + `<|im_start|>assistant\\n` when
prompting).

Why the pipeline is spelled out here instead of taken from transformers' converters:
the converters' choices (pre-tokenizer, prefix handling around added tokens, the
tokenizer class that rebuilds its own pipeline on load) change between releases, and a
mismatch is silent. The pieces below reproduce sentencepiece's own algorithm:
  - normaliser: prepend "▁" once to the whole text (add_dummy_prefix), spaces -> "▁"
    (identity normalisation otherwise, as our tokenizers are trained);
  - the chat markers are matched after that normalisation, as sentencepiece matches
    user-defined symbols, so "<|im_start|>" at the start of a text keeps its "▁" piece;
  - BPE with byte fallback, merges ranked by the score of the merged piece (sentencepiece
    merges the best-scoring adjacent pair first; its pieces are stored best-first).
`verify_tokenizer` checks the result against sentencepiece; exports call it.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import sentencepiece as spm

from minimodel.common.errors import UserError
from minimodel.common.io import write_json
from minimodel.tokenizers.chat import CHAT_TOKENS, encode_chat, load_tokenizer
from minimodel.tokenizers.tokenizer import SPTokenizer

SPACE = "▁"


# ChatML, rendered as minimodel.tokenizers.chat.render_chat does, with BOS before and EOS after a
# finished conversation (encode_chat's framing).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% else %}{{ eos_token }}{% endif %}"
)


# Text used to check a conversion when the caller gives none: both demo languages,
# digits, whitespace runs, newlines, characters only byte fallback can encode.
PROBE_TEXTS = {
    "en": "In the beginning, God created the heavens and the earth.\n\n"
          "  Two spaces,\ttabs, 1234567 digits and   runs of spaces; \"quotes\" (brackets) end.",
    "ko": "태초에 하나님이 천지를 창조하시니라.\n땅이 혼돈하고 공허하며 흑암이 깊음 위에 있고 "
          "하나님의 신은 수면에 운행하시니라. 2024년 3월 1일",
    "mixed": "Emoji 🙂, 漢字, ünïcödé and <|im_start|>user\nhi<|im_end|>\n end ",
}


def _model_proto(sp: spm.SentencePieceProcessor):
    from sentencepiece import sentencepiece_model_pb2 as pb  # protobuf: not on every machine (the GPU machine lacks it)
    return pb.ModelProto.FromString(sp.serialized_model_proto())


def _check_supported(proto, path) -> None:
    """The conversion reproduces BPE + byte fallback + identity normalisation only: say so otherwise."""
    t, n = proto.trainer_spec, proto.normalizer_spec
    problems = []
    if t.model_type != 2:
        problems.append("model type is not BPE")
    if not t.byte_fallback:
        problems.append("byte_fallback is off")
    if n.name != "identity" or n.precompiled_charsmap:
        problems.append(f"normalisation is {n.name!r}, not 'identity'")
    if n.remove_extra_whitespaces:
        problems.append("remove_extra_whitespaces is on")
    if problems:
        raise UserError(f"{path}: cannot convert this sentencepiece model exactly ({'; '.join(problems)}); "
                        "train tokenizers with data_prep.tokenizer")


def _opened(sp_path: str | Path | SPTokenizer) -> tuple[Path, spm.SentencePieceProcessor]:
    """The model's file and processor: an opened tokenizer's own, else the file read now."""
    if isinstance(sp_path, SPTokenizer):
        return sp_path.path, sp_path.sp
    return Path(sp_path), load_tokenizer(sp_path)


def build_hf_tokenizer(sp_path: str | Path | SPTokenizer):
    """A PreTrainedTokenizerFast equivalent to the sentencepiece model at `sp_path`."""
    from tokenizers import (  # transformers and tokenizers take seconds to import: only where used
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        normalizers,
    )
    from tokenizers.models import BPE  # transformers and tokenizers take seconds to import: only where used
    from transformers import (
        PreTrainedTokenizerFast,  # transformers and tokenizers take seconds to import: only where used
    )
    from transformers.tokenization_utils_base import (
        generate_merges,  # transformers and tokenizers take seconds to import: only where used
    )

    sp_path, sp = _opened(sp_path)
    proto = _model_proto(sp)
    _check_supported(proto, sp_path)
    if not all(isinstance(p.piece, str) for p in proto.pieces):  # protobuf hands back bytes that are not UTF-8
        raise UserError(f"{sp_path} holds pieces that are not UTF-8: a damaged tokenizer model")
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    # CONTROL (3), USER_DEFINED (4) and BYTE (6) pieces never take part in merges.
    skip = [p.piece for p in proto.pieces if p.type in (3, 4, 6)]
    merges = generate_merges(vocab, skip_tokens=skip)  # ranked by the merged piece's id = its score order
    unk = proto.pieces[sp.unk_id()].piece
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    user_pieces = [p.piece for p in proto.pieces if p.type == 4]
    steps = [normalizers.Replace(" ", SPACE)]
    if proto.normalizer_spec.add_dummy_prefix:
        # "▁" once at the start of the text. Not Prepend(): transformers normalises the added
        # tokens' own text too, and "▁<|im_start|>" would then swallow the "▁" piece that
        # sentencepiece emits before a marker. The look-ahead leaves a bare marker alone.
        bare = "|".join(re.escape(p) + r"\z" for p in user_pieces)
        steps.insert(0, normalizers.Replace(Regex(r"\A(?!" + bare + ")" if bare else r"\A"), SPACE))
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = None  # sentencepiece does not pre-split: BPE runs over the whole text
    dec = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if proto.normalizer_spec.add_dummy_prefix:
        dec.append(decoders.Strip(content=" ", left=1))
    tok.decoder = decoders.Sequence(dec)
    # Control pieces (<pad> <unk> <s> </s>) are special tokens, matched in raw text as
    # transformers expects of them; user-defined pieces (the chat markers) are matched
    # after normalisation, where sentencepiece matches them.
    tok.add_special_tokens([AddedToken(p.piece, special=True, normalized=False)
                            for p in proto.pieces if p.type in (2, 3)])
    tok.add_tokens([AddedToken(p, special=False, normalized=True) for p in user_pieces])
    piece = {"bos": sp.bos_id(), "eos": sp.eos_id(), "pad": sp.pad_id(), "unk": sp.unk_id()}
    names = {f"{k}_token": sp.id_to_piece(i) for k, i in piece.items() if i >= 0}
    has_chat = all(vocab.get(t) is not None for t in CHAT_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, **names,
        add_bos_token=False, add_eos_token=False,  # pretraining text is "doc EOS doc EOS", no BOS
        clean_up_tokenization_spaces=False, model_max_length=None,
        chat_template=CHAT_TEMPLATE if has_chat else None,
    )


def save_hf_tokenizer(sp_path: str | Path | SPTokenizer, out_dir: str | Path, model_max_length: int | None = None):
    """Write tokenizer.json, tokenizer_config.json (chat template included), special tokens
    and a copy of tokenizer.model (llama.cpp's converter reads it) into out_dir."""

    tok = build_hf_tokenizer(sp_path)
    if model_max_length:
        tok.model_max_length = model_max_length
    out_dir = Path(out_dir)
    tok.save_pretrained(out_dir)
    # transformers 5 names its class "TokenizersBackend"; older releases (and the tools that pin
    # them, e.g. vLLM) know it as PreTrainedTokenizerFast and read the template from this file.
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    if tok.chat_template:
        cfg["chat_template"] = tok.chat_template
    write_json(cfg_path, cfg)
    path = sp_path.path if isinstance(sp_path, SPTokenizer) else Path(sp_path)
    if path.resolve() != (out_dir / "tokenizer.model").resolve():
        shutil.copyfile(path, out_dir / "tokenizer.model")
    return tok


def verify_tokenizer(hf_tok, sp_path: str | Path | SPTokenizer, texts: dict[str, str] | None = None) -> dict:
    """Compare token ids of the HF tokenizer with sentencepiece on `texts` (name -> text) and
    the chat template with encode_chat; UserError naming the first difference. Returns
    {name: n_tokens} of what was compared."""
    sp_path, sp = _opened(sp_path)
    checked = {}
    for name, text in {**PROBE_TEXTS, **(texts or {})}.items():
        want = sp.encode(text)
        got = hf_tok(text, add_special_tokens=False)["input_ids"]
        if got != want:
            i = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            raise UserError(f"exported tokenizer differs from {Path(sp_path).name} on {name} text at token {i}: "
                            f"{hf_tok.convert_ids_to_tokens(got[i:i + 3])} vs "
                            f"{[sp.id_to_piece(t) for t in want[i:i + 3]]}; "
                            "the export is not usable (report this tokenizer)")
        if hf_tok.decode(got) != sp.decode(want):
            raise UserError(f"exported tokenizer decodes {name} text differently from sentencepiece")
        checked[name] = len(want)
    if hf_tok.chat_template:
        msgs = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "태초에 무엇이 있었나요?"},
                {"role": "assistant", "content": " In the beginning was the Word."}]
        for prompt in (False, True):
            conv = msgs[:-1] if prompt else msgs
            want, _ = encode_chat(sp, conv, add_generation_prompt=prompt)
            got = _ids(hf_tok.apply_chat_template(conv, tokenize=True, add_generation_prompt=prompt))
            if got != want:
                raise UserError("exported chat template gives other ids than minimodel.tokenizers.chat.encode_chat "
                                f"({'prompt' if prompt else 'conversation'}): {got[:12]} vs {want[:12]}")
        checked["chat"] = len(want)
    return checked


def _ids(out) -> list[int]:
    """apply_chat_template returns ids, or a BatchEncoding in newer transformers."""
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)
