"""Small builders for the Hugging Face interop tests: a bilingual tokenizer, tiny HF models, GGUF files."""
from __future__ import annotations

import json
from pathlib import Path

import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def fixture_docs(name: str) -> list[str]:
    return [json.loads(line)["text"] for line in (FIXTURES / name).read_text(encoding="utf-8").splitlines()]


def bilingual_tokenizer(path: Path, vocab_size: int = 2048) -> Path:
    """A sentencepiece BPE trained on the English and Korean fixtures (chat markers included)."""
    from data_prep.tokenizer import train_tokenizer

    return train_tokenizer(fixture_docs("english_web.jsonl") + fixture_docs("korean_1961.jsonl"), path, vocab_size)


def tiny_native(vocab_size: int, qk_norm: bool, tied: bool = True, seed: int = 0):
    from minimodel.nn.model import MiniModel, model_config_from

    torch.manual_seed(seed)
    cfg = model_config_from("tiny", vocab_size=vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                            ffn_dim=128, qk_norm=qk_norm, tie_embeddings=tied, max_seq_len=256)
    return MiniModel(cfg).eval()


def write_gguf(hf_model, sp_path: Path, path: Path, quant=None, pre: str = "qwen2") -> Path:
    """A GGUF file as llama.cpp's converter lays it out (tensor names, q/k permutation for
    llama; a sentencepiece .model as "llama" tokenizer metadata, a Hugging Face tokenizer directory
    as "gpt2" byte-level BPE with pre-tokenizer name `pre`); matrices in `quant`."""
    import gguf

    cfg = hf_model.config
    arch_name = cfg.model_type
    arch = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen3": gguf.MODEL_ARCH.QWEN3}[arch_name]
    names = gguf.get_tensor_name_map(arch, cfg.num_hidden_layers)
    w = gguf.GGUFWriter(str(path), arch_name)
    w.add_name("minimodel test")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    if Path(sp_path).suffix == ".model":
        add_sp_vocab(w, sp_path)
    else:
        add_bpe_vocab(w, sp_path, pre)
    for name, t in hf_model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        a = t.float().numpy()
        if arch_name == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            # llama.cpp stores llama's q/k rows interleaved for its RoPE kernel
            heads = cfg.num_attention_heads if "q_proj" in name else cfg.num_key_value_heads
            a = a.reshape(heads, 2, a.shape[0] // heads // 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)
        gname = names.get_name(name, try_suffixes=(".weight",))
        assert gname, name
        if quant is not None and a.ndim == 2:
            q = gguf.quants.quantize(a, quant)
            w.add_tensor(gname, q, raw_shape=q.shape, raw_dtype=quant)
        else:
            w.add_tensor(gname, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def add_sp_vocab(w, sp_path: Path) -> None:
    """A sentencepiece vocabulary as llama.cpp's converter writes it ("llama" tokenizer metadata):
    pieces, scores, types; add_space_prefix from the model's normaliser; user-defined pieces
    pre-normalised with their "▁" written as spaces (so a Gemma file's whitespace-run pieces read "  ")."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    sp = spm.SentencePieceProcessor(model_file=str(sp_path))
    proto = pb.ModelProto.FromString(Path(sp_path).read_bytes())
    n = sp.get_piece_size()
    types = [p.type for p in proto.pieces]  # sentencepiece's numbering is GGUF's (1 normal ... 6 byte)
    w.add_tokenizer_model("llama")
    w.add_token_list([sp.id_to_piece(i).replace("▁", " ") if types[i] == 4 else sp.id_to_piece(i)
                      for i in range(n)])
    w.add_token_scores([sp.get_score(i) for i in range(n)])
    w.add_token_types(types)
    w.add_add_space_prefix(proto.normalizer_spec.add_dummy_prefix)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_pad_token_id(sp.pad_id())


def gemma_style_tokenizer(path: Path, vocab_size: int = 1200) -> Path:
    """A sentencepiece BPE laid out as Gemma's: no dummy prefix, and runs of 2-31 spaces as
    user-defined pieces (so "  Two" is "▁▁" + "Two"), byte fallback, turn markers."""
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(fixture_docs("english_web.jsonl") + fixture_docs("korean_1961.jsonl")),
        model_writer=buf, vocab_size=vocab_size, model_type="bpe", byte_fallback=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
        split_digits=True, pad_id=0, unk_id=1, bos_id=2, eos_id=3, minloglevel=2,
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>"] + ["▁" * k for k in range(2, 32)])
    path.write_bytes(buf.getvalue())
    return path


def add_bpe_vocab(w, tok_dir: Path, pre: str) -> None:
    """A byte-level BPE tokenizer.json as llama.cpp's converter writes it ("gpt2" metadata: tokens by
    id, merges, control type for special tokens, BOS/EOS ids)."""
    tok = json.loads((Path(tok_dir) / "tokenizer.json").read_text(encoding="utf-8"))
    cfg = json.loads((Path(tok_dir) / "tokenizer_config.json").read_text(encoding="utf-8"))
    vocab = {**tok["model"]["vocab"], **{a["content"]: a["id"] for a in tok["added_tokens"]}}
    tokens = sorted(vocab, key=vocab.get)
    special = {a["content"] for a in tok["added_tokens"] if a["special"]}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    for key, add in (("bos_token", w.add_bos_token_id), ("eos_token", w.add_eos_token_id)):
        if cfg.get(key):
            add(vocab[cfg[key] if isinstance(cfg[key], str) else cfg[key]["content"]])


QWEN_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
              r"""\s*[\r\n]+|\s+(?!\S)|\s+""")


def byte_level_tokenizer(out: Path, style: str, vocab_size: int = 1100) -> Path:
    """A byte-level BPE tokenizer directory as the hub ships it: "qwen" (NFC, Qwen's split regex, no BOS,
    EOS <|endoftext|>) or "llama3" (GPT-2 regex, BOS <|begin_of_text|> and EOS <|end_of_text|>, distinct,
    as Llama 3 and SmolLM-style bases have them)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    if style == "qwen":
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        specials, names = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], {"eos_token": "<|endoftext|>"}
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        specials = ["<|begin_of_text|>", "<|end_of_text|>"]
        names = {"bos_token": specials[0], "eos_token": specials[1]}
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(fixture_docs("english_web.jsonl") + fixture_docs("korean_1961.jsonl"),
                            trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok, **names).save_pretrained(out)
    return out
