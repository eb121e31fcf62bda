"""Grow a model's embeddings and lm_head for a tokenizer extended by data_prep.vocab_ext.

Old ids keep their rows. Each new piece starts at the mean of the rows of the old pieces it
decomposes into under the base tokenizer (for an English tokenizer and a Korean piece: its
UTF-8 byte pieces), the sub-piece initialisation of EEVE-Korean and Chinese-LLaMA, so a new
piece begins where the base already placed its spelling instead of at random.
"""
from __future__ import annotations

from pathlib import Path

import sentencepiece as spm
import torch
import torch.nn as nn

from minimodel.nn.model import MiniModel
from minimodel.tokenizers.tokenizer import open_tokenizer


def _without_dummy_prefix(tokenizer_path: Path):
    """The tokenizer with add_dummy_prefix off, so a piece's text decomposes exactly into old pieces
    (with it on, "름" would gain a spurious leading "▁")."""
    from sentencepiece import sentencepiece_model_pb2 as pb  # protobuf: not on every machine (the GPU machine lacks it)

    proto = pb.ModelProto()
    proto.ParseFromString(Path(tokenizer_path).read_bytes())
    proto.normalizer_spec.add_dummy_prefix = False
    return spm.SentencePieceProcessor(model_proto=proto.SerializeToString())


def decompositions(base_tok, new_tok) -> dict[int, list[int]]:
    """{new id: base ids its text encodes to} for every id the extended tokenizer added (either kind:
    sentencepiece files, or tokenizers opened with minimodel.tokenizers.tokenizer.open_tokenizer)."""
    base, new = open_tokenizer(base_tok), open_tokenizer(new_tok)
    if base.kind == "hf":  # the base's BPE model spells the new token's characters (bytes) exactly
        model, unk = base.tok.backend_tokenizer.model, base.tok.unk_token_id
        old = set(base.tok.get_vocab().values())
        return {i: [t.id for t in model.tokenize(token)] or [unk or 0]
                for token, i in new.tok.get_vocab().items() if i not in old}
    plain = _without_dummy_prefix(base.path)
    out = {}
    for i in range(base.vocab_size, new.vocab_size):
        text = new.sp.id_to_piece(i).replace("\u2581", " ")
        out[i] = plain.encode(text) or [plain.unk_id()]
    return out


def _mean_rows(weight: torch.Tensor, new_size: int, sources: dict[int, list[int]]) -> torch.Tensor:
    old = weight.shape[0]
    grown = torch.cat([weight.detach(), weight.detach().mean(0, keepdim=True).expand(new_size - old, -1)]) \
        if new_size > old else weight.detach().clone()
    for i, ids in sources.items():
        grown[i] = weight.detach()[ids].mean(0)
    return grown


def resize_vocab(core: nn.Module, base_tok, new_tok) -> dict:
    """Resize `core` (MiniModel or a transformers model) in place to the extended tokenizer (paths or
    opened tokenizers, either kind)."""
    sources = decompositions(base_tok, new_tok)
    new_size = open_tokenizer(new_tok).vocab_size
    if isinstance(core, MiniModel):
        emb, head = core.model.embed_tokens, core.lm_head
        tied = core.config.tie_embeddings
    else:
        emb, head = core.get_input_embeddings(), core.get_output_embeddings()
        tied = head is not None and head.weight is emb.weight
    old_size = emb.weight.shape[0]
    new_size = max(new_size, old_size)  # a model padded beyond its tokenizer keeps its rows
    emb_w = _mean_rows(emb.weight, new_size, sources)
    head_w = None if tied or head is None else _mean_rows(head.weight, new_size, sources)
    if isinstance(core, MiniModel):
        core.model.embed_tokens = nn.Embedding(new_size, emb_w.shape[1]).to(emb_w.device)
        core.model.embed_tokens.weight.data.copy_(emb_w)
        core.lm_head = nn.Linear(emb_w.shape[1], new_size, bias=False).to(emb_w.device)
        if tied:
            core.lm_head.weight = core.model.embed_tokens.weight
        else:
            core.lm_head.weight.data.copy_(head_w)
        core.config.vocab_size = new_size
    else:  # transformers resizes (and re-ties) the modules and the config; the rows are ours
        core.resize_token_embeddings(new_size, mean_resizing=False)
        with torch.no_grad():
            core.get_input_embeddings().weight.copy_(emb_w)
            if head_w is not None:
                core.get_output_embeddings().weight.copy_(head_w)
    return {"old_vocab": old_size, "new_vocab": new_size, "initialised": len(sources), "tied": tied}
