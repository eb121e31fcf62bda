"""Export a native model as a Hugging Face model directory that verifies itself (the command is
`python -m minimodel.export`).

The directory gets config.json (Qwen3 with QK-norm, Llama without), model.safetensors,
generation_config.json, tokenizer.json + tokenizer_config.json (chat template included)
+ tokenizer.model, and minimodel.json (the native ModelConfig). Before the directory
appears it is reloaded with AutoModelForCausalLM / AutoTokenizer and compared with the
native model (fp32 logits on a fixed batch, max abs diff < 1e-4) and with sentencepiece
(token ids on English and Korean text, chat template vs minimodel.tokenizers.chat.encode_chat); a
mismatch is a UserError and nothing is written.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from minimodel.common.errors import UserError
from minimodel.common.io import atomic_dir, read_json_object, write_json
from minimodel.config import read_run_config
from minimodel.models.causal_lm import check_tokenizer_fits
from minimodel.models.hf_convert import to_hf_config
from minimodel.models.loading import load
from minimodel.nn.model import MiniModel, ModelConfig
from minimodel.nn.weights import model_tensors
from minimodel.tokenizers.chat import CHAT_TOKENS
from minimodel.tokenizers.sp_to_hf import save_hf_tokenizer, verify_tokenizer
from minimodel.tokenizers.tokenizer import HF_TOKENIZER_FILES, SPTokenizer, Tokenizer, copy_tokenizer, open_tokenizer

LOGITS_TOL = 1e-4


WEIGHTS = "model.safetensors"


NATIVE_CONFIG = "minimodel.json"


# Hugging Face tokenizer files worth carrying into a model whose vocabulary did not change.
CARRIED_FILES = (*HF_TOKENIZER_FILES, "generation_config.json")


def copy_tokenizer_files(src: Path, dst: Path) -> None:
    for name in CARRIED_FILES:
        if (src / name).is_file() and not (dst / name).exists():
            shutil.copy2(src / name, dst / name)


def write_model_files(model: MiniModel, out: Path, eos_ids: list[int] | None = None,
                      special_ids: tuple[int | None, int | None, int | None] | None = None) -> None:
    """config.json, model.safetensors (HF names, fp32/bf16 as the model holds them), generation_config.json,
    minimodel.json. `special_ids` (bos, eos, pad) replace the kit's tokenizers' 2, 3, 0."""
    from transformers import GenerationConfig  # transformers and tokenizers take seconds to import: only where used


    tensors = model_tensors(model)
    dtype = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    save_file(tensors, str(out / WEIGHTS), metadata={"format": "pt"})
    (out / WEIGHTS).chmod(0o644)  # safetensors writes 0600; an export is meant to be shared
    hf_cfg = to_hf_config(model.config, torch_dtype=dtype)
    hf_cfg.architectures = ["Qwen3ForCausalLM" if model.config.qk_norm else "LlamaForCausalLM"]
    if special_ids is not None:
        hf_cfg.bos_token_id, hf_cfg.eos_token_id, hf_cfg.pad_token_id = special_ids
    hf_cfg.save_pretrained(out)
    eos = eos_ids or [hf_cfg.eos_token_id]
    GenerationConfig(bos_token_id=hf_cfg.bos_token_id, eos_token_id=eos if len(eos) > 1 else eos[0],
                     pad_token_id=hf_cfg.pad_token_id).save_pretrained(out)
    write_json(out / NATIVE_CONFIG, model.config.to_dict())


def fixed_batch(cfg: ModelConfig, seed: int = 0, length: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (2, min(length, cfg.max_seq_len)), generator=g)


def fp32_copy(model: MiniModel) -> MiniModel:
    """The model's weights in a fresh fp32 CPU model (the live one may be on a GPU, in bf16, or wrapped)."""
    ref = MiniModel(model.config)
    ref.load_state_dict({k: v.float() for k, v in model_tensors(model).items()}, strict=False)
    return ref.eval()


@torch.no_grad()
def logits_diff(native: MiniModel, hf_dir: Path, batch: torch.Tensor | None = None) -> float:
    """Max |logit difference| between the native model and AutoModelForCausalLM(hf_dir), fp32 CPU."""
    from transformers import AutoModelForCausalLM  # transformers and tokenizers take seconds to import: only where used
    from transformers.utils import (
        logging as hf_logging,  # transformers and tokenizers take seconds to import: only where used
    )

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Loading weights" bar per check is noise
    try:
        hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    finally:
        if was_on:
            hf_logging.enable_progress_bar()
    batch = fixed_batch(native.config) if batch is None else batch
    return (native.float().eval()(batch) - hf(batch).logits).abs().max().item()


def check_reload(native: MiniModel, hf_dir: Path, what: str = "exported model",
                 outcome: str = "the export is not usable") -> float:
    """The one reload check (export, export with a Hugging Face tokenizer, save_native): `hf_dir` reloaded
    with transformers gives `native`'s fp32 logits within LOGITS_TOL. Returns the max |difference|; a
    UserError naming `what` was checked and the `outcome` otherwise."""
    diff = logits_diff(native, hf_dir)
    if not diff < LOGITS_TOL:  # also catches NaN
        raise UserError(f"{what} reloaded by transformers differs from the native model: "
                        f"max |logit diff| {diff:.3g} >= {LOGITS_TOL} (fp32); {outcome}")
    return diff


def verify_export(out: Path, native: MiniModel, sp_path: Path, texts: dict[str, str] | None = None) -> dict:
    """Reload `out` with transformers and compare with the native model and tokenizer; UserError on mismatch."""
    from transformers import AutoTokenizer  # transformers and tokenizers take seconds to import: only where used


    diff = check_reload(native, out)
    tok = AutoTokenizer.from_pretrained(out)
    checked = verify_tokenizer(tok, sp_path, texts)
    return {"max_abs_logit_diff": diff, "tokens_compared": checked}


def heldout_texts(data_dir: Path, per_file: int = 2) -> dict[str, str]:
    """A few held-out documents of a data set (and of the sets a mixture names), when present."""
    texts = {}
    for f in sorted(Path(data_dir).glob("heldout*.jsonl")):
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines()[:per_file]):
            texts[f"{f.stem}[{i}]"] = json.loads(line)["text"]
    return texts


def export_model(model: MiniModel, sp_path: Tokenizer | str | Path, out_dir: str | Path,
                 texts: dict[str, str] | None = None) -> tuple[Path, dict]:
    """Write the verified Hugging Face directory for `model` + its tokenizer: the kit's sentencepiece
    model (converted to tokenizer.json and checked), or a Hugging Face tokenizer (its files copied)."""
    tok = open_tokenizer(sp_path)
    if tok.kind == "hf":  # a core pretrained on data made with a Hugging Face tokenizer
        check_tokenizer_fits(tok.vocab_size, model.config.vocab_size, str(tok.path))
        native = fp32_copy(model)
        with atomic_dir(out_dir) as tmp:
            write_model_files(model, tmp, [tok.eos_id], (tok.bos_id, tok.eos_id, tok.pad_id))
            copy_tokenizer(tok, tmp)
            diff = check_reload(native, tmp)
        return Path(out_dir), {"max_abs_logit_diff": diff, "tokens_compared": {}}
    sp_path, sp, out_dir = tok.path, tok.sp, Path(out_dir)
    check_tokenizer_fits(sp.get_piece_size(), model.config.vocab_size, str(sp_path))
    native = fp32_copy(model)
    im_end = sp.piece_to_id(CHAT_TOKENS[1])
    # Chat models stop at <|im_end|>; a pretrained core stops at EOS; either ends generation.
    eos = [sp.eos_id()] + ([im_end] if im_end != sp.unk_id() else [])
    with atomic_dir(out_dir) as tmp:
        write_model_files(model, tmp, eos)
        save_hf_tokenizer(tok, tmp, model_max_length=model.config.max_seq_len)
        report = verify_export(tmp, native, tok, texts)
    return out_dir, report


def export_final(model: MiniModel, run_dir: Path, data_dir: Path, manifest: dict) -> Path:
    """End of pretraining: the verified export into run_dir/final (pretrain.export_final's signature)."""
    tok = Path(data_dir) / manifest["tokenizer"]["file"]
    final, report = export_model(model, tok, Path(run_dir) / "final", heldout_texts(data_dir))
    print(f"export verified: max |logit diff| {report['max_abs_logit_diff']:.2e}, "
          f"token ids equal on {sum(report['tokens_compared'].values())} tokens", file=sys.stderr)
    return final


def export_run(run_dir: str | Path, out_dir: str | Path, checkpoint: str | None = None) -> Path:
    """Export a run's final model (or one of its checkpoints) to a verified Hugging Face directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    if checkpoint is None:
        final = run_dir / "final" if (run_dir / "final").is_dir() else run_dir
        if not (final / NATIVE_CONFIG).is_file() or not (final / WEIGHTS).is_file():
            ckpts = sorted((run_dir / "checkpoints").glob("step_*"),
                           key=lambda p: int(p.name[5:]) if p.name[5:].isdigit() else -1)
            hint = f" or export a checkpoint with --checkpoint {ckpts[-1].name}" if ckpts else ""
            raise UserError(f"{run_dir} has no final checkpoint (final/{NATIVE_CONFIG} + final/{WEIGHTS}): "
                            f"the run has not finished; resume it with python -m minimodel.pretrain{hint}")
        spec = final
    else:
        spec = Path(checkpoint) if Path(checkpoint).is_dir() else run_dir / "checkpoints" / checkpoint
        if not spec.is_dir():
            raise UserError(f"checkpoint {checkpoint} not found under {run_dir / 'checkpoints'}")
    lm = load(spec)  # everything is in memory before out_dir (maybe run_dir/final) is replaced
    data_dir = Path(read_run_config(run_dir).config.data.path) if (run_dir / "config.toml").is_file() else None
    if isinstance(lm.tokenizer, SPTokenizer):
        tok = lm.tokenizer.path
    else:
        manifest = data_dir / "manifest.json" if data_dir else None
        if manifest is None or not manifest.is_file():
            raise UserError(f"no tokenizer for {run_dir}: neither final/tokenizer.model nor the data set's "
                            f"manifest ({manifest}) exists; prepare the data set again or copy its tokenizer.model")
        tok = data_dir / read_json_object(manifest, "prepare the data set again")["tokenizer"]["file"]
    texts = heldout_texts(data_dir) if data_dir and data_dir.is_dir() else {}
    out, report = export_model(lm.net, tok, out_dir, texts)
    print(json.dumps({"out": str(out), **report}))
    return out


def save_native(model: MiniModel, out_dir: str | Path, tokenizer_from: str | Path | None = None) -> Path:
    """A native model (e.g. imported from a Hugging Face checkpoint) as a HF directory, with the
    tokenizer files of `tokenizer_from` copied beside it; the reload is checked for logits parity."""
    native = fp32_copy(model)
    with atomic_dir(out_dir) as tmp:
        write_model_files(model, tmp)
        if tokenizer_from is not None:
            copy_tokenizer_files(Path(tokenizer_from), tmp)
            if (Path(tokenizer_from) / "tokenizer.model").is_file():
                shutil.copyfile(Path(tokenizer_from) / "tokenizer.model", tmp / "tokenizer.model")
        check_reload(native, tmp, "saved model", "not written")
    return Path(out_dir)
