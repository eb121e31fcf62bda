"""LoRA through peft on a native MiniModel or a transformers model, with embeddings trained fully.

Tied embeddings (the policy, decided here and tested): the tie is KEPT. peft's `modules_to_save`
would copy embed_tokens into a wrapper and silently untie it from lm_head (and LoRA on a tied
embedding merges wrongly), so embeddings are not handed to peft at all: after wrapping, the
base's own embed_tokens/lm_head weights are unfrozen in place. A tied matrix is one Parameter,
so it is trained once (one optimizer entry, the embedding learning rate), the merged model stays
tied, and save -> merge -> reload is exact. Untied bases train both matrices the same way.

An adapter directory:
    adapter_config.json, adapter_model.safetensors   peft's own files (LoRA factors)
    embeddings.safetensors                           embed_tokens.weight (+ lm_head.weight if untied),
                                                     when embeddings were trained or the vocabulary grew
    tokenizer.model (or tokenizer.json + config)     the tokenizer the adapter was trained with
    minimodel_adapter.json                           base, vocabulary, tie, what the files hold
`restore_adapter(lm, dir)` puts it back on its base (minimodel.models.loading.load does, for every consumer),
with the merged model's logits.

The unsloth backend (`lora.backend = "unsloth"`, GPU only) wraps the same way through its
FastLanguageModel (its LoRA kernels, gradient checkpointing, an optional 4-bit base): see
`apply_unsloth_lora`. Its embedding learning rate is minimodel's own optimizer group.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import save_file

from minimodel.common.errors import UserError, error_gist
from minimodel.common.io import atomic_dir, read_json_object, write_text
from minimodel.models.causal_lm import CausalLM
from minimodel.models.vocab_resize import resize_vocab
from minimodel.nn.model import MiniModel
from minimodel.nn.weights import read_safetensors
from minimodel.tokenizers.tokenizer import copy_tokenizer, open_tokenizer

ADAPTER_META = "minimodel_adapter.json"


EMBED_FILE = "embeddings.safetensors"


def embedding_weights(core: nn.Module) -> dict[str, nn.Parameter]:
    """{"embed_tokens.weight": ..., "lm_head.weight": ...}; one entry when tied (the same tensor)."""
    if isinstance(core, MiniModel):
        emb, head = core.model.embed_tokens.weight, core.lm_head.weight
    else:
        emb = core.get_input_embeddings().weight
        out = core.get_output_embeddings()
        head = out.weight if out is not None else emb
    return {"embed_tokens.weight": emb} if head is emb else {"embed_tokens.weight": emb, "lm_head.weight": head}


def is_tied(core: nn.Module) -> bool:
    return len(embedding_weights(core)) == 1


def linear_names(core: nn.Module) -> list[str]:
    """Leaf names of the base's linear layers (what lora.target_modules may name)."""
    return sorted({n.rsplit(".", 1)[-1] for n, m in core.named_modules()
                   if isinstance(m, nn.Linear) and n and n.rsplit(".", 1)[-1] != "lm_head"})


def check_targets(core: nn.Module, targets: list[str]) -> None:
    have = linear_names(core)
    missing = [t for t in targets if t not in have]
    if missing:
        raise UserError(f"lora.target_modules {missing} do not exist in the base; its linear layers are {have}")


def apply_lora(lm: CausalLM, rank: int, alpha: float, dropout: float, targets: list[str],
               rslora: bool = True, train_embeddings: bool = True, rank_pattern: dict | None = None) -> CausalLM:
    """Wrap `lm.net` with peft LoRA on `targets`; everything else frozen except the embeddings.
    `rank_pattern`: peft's per-module ranks (module-name regex -> rank), `rank` elsewhere."""
    import peft  # peft: only for adapter stages

    core = lm.core()
    check_targets(core, targets)
    cfg = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                          use_rslora=rslora, bias="none", rank_pattern=dict(rank_pattern or {}),
                          task_type="CAUSAL_LM" if lm.kind == "hf" else None)
    lm.net = peft.get_peft_model(lm.net, cfg)
    unfreeze_embeddings(lm.core(), train_embeddings)
    return lm


def apply_unsloth_lora(lm: CausalLM, lc, seed: int) -> CausalLM:
    """unsloth's get_peft_model on a base loaded with backend="unsloth" (`lc` a config.LoraConfig)."""
    from unsloth import (
        FastLanguageModel,  # importable: loading checked it when it loaded the base
    )

    check_targets(lm.core(), lc.target_modules)
    lm.net = FastLanguageModel.get_peft_model(
        lm.net, r=lc.rank, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=list(lc.target_modules),
        use_rslora=lc.rslora, bias="none", use_gradient_checkpointing="unsloth", random_state=seed)
    unfreeze_embeddings(lm.core(), lc.train_embeddings)
    # A 4-bit/16-bit load leaves the embeddings in bf16, where an update of lr 1e-5 rounds away:
    # trainable tensors are kept in fp32 (in place, so a tied pair stays one Parameter).
    for p in lm.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    lm.refresh_config()
    return lm


def unfreeze_embeddings(core: nn.Module, train: bool) -> None:
    for p in embedding_weights(core).values():
        p.requires_grad_(train)


def full_finetune(lm: CausalLM) -> CausalLM:
    for p in lm.parameters():
        p.requires_grad_(True)
    return lm


class TrainableView(nn.Module):
    """The trainable tensors of a model under flat names, sharing storage: what an adapter stage's
    checkpoints hold (a frozen 7B base is reloaded from its source, not copied at every checkpoint)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        for name, p in model.named_parameters():  # tied weights once
            if p.requires_grad:
                self.register_parameter(name.replace(".", "__"), p)


def save_adapter(lm: CausalLM, out_dir: Path, tokenizer: Path, meta: dict, save_embeddings: bool) -> Path:
    """Write the adapter directory (see the module docstring) atomically."""

    core = lm.core()
    with atomic_dir(Path(out_dir)) as tmp:
        lm.net.save_pretrained(str(tmp), save_embedding_layers=False)  # ours are in EMBED_FILE
        if save_embeddings:
            save_file({k: v.detach().contiguous().cpu() for k, v in embedding_weights(core).items()},
                      str(tmp / EMBED_FILE))
        copy_tokenizer(open_tokenizer(tokenizer), tmp)
        full = {**meta, "kind": lm.kind, "tied": is_tied(core), "vocab_size": lm.config.vocab_size,
                "embeddings": save_embeddings}
        write_text(tmp / ADAPTER_META, json.dumps(full, indent=2))
    return Path(out_dir)


def merge(lm: CausalLM, adapter_dir: Path | str | None = None) -> nn.Module:
    """Fold the LoRA factors into the base weights (in place) and return the plain core model: the one
    merge (the stages' final model, minimodel.models.loading.load of an adapter). peft loads some
    variants it cannot merge: a UserError naming `adapter_dir`, the directory the adapter came from."""
    if hasattr(lm.net, "merge_and_unload"):
        try:
            lm.net = lm.net.merge_and_unload()
        except (NotImplementedError, ValueError) as e:
            where = f" in {adapter_dir}" if adapter_dir is not None else ""
            raise UserError(f"cannot merge the adapter{where} into its base ({error_gist(e)}); "
                            "its adapter_config.json asks for a LoRA variant peft cannot merge") from None
    return lm.core()


def restore_adapter(lm: CausalLM, adapter_dir: Path, meta: dict | None) -> CausalLM:
    """Put an adapter directory on its loaded base (in place): the vocabulary grown as in training,
    the trained embeddings restored, then peft's LoRA factors (unmerged). minimodel.models.loading calls
    this for every adapter, so evaluation, export and the stages see the same model. `meta` is
    adapter_meta(adapter_dir): None for a plain peft adapter (LoRA factors only)."""
    adapter_dir = Path(adapter_dir)
    core = lm.core()
    if meta is not None and meta["vocab_size"] > lm.config.vocab_size:
        if lm.tokenizer is None:
            raise UserError(f"base {lm.source.spec if lm.source else ''} has no tokenizer to resize its "
                            "vocabulary with")
        resize_vocab(core, lm.tokenizer, adapter_dir)  # the adapter carries the extended tokenizer
        lm.refresh_config()
    if meta is not None and meta["embeddings"]:
        tensors = read_safetensors(adapter_dir / EMBED_FILE)
        with torch.no_grad():
            for name, w in embedding_weights(core).items():
                if name not in tensors or tensors[name].shape != w.shape:
                    raise UserError(f"{adapter_dir / EMBED_FILE}: {name} missing or of another shape: "
                                    "the adapter was trained on another base")
                w.copy_(tensors[name])
    lm.net = load_peft(lm.net, adapter_dir)
    return lm


def adapter_meta(adapter_dir: Path, need_base: bool = False) -> dict | None:
    """minimodel_adapter.json, its fields checked (they pick the base and how to resize it); None
    for an adapter written by peft alone."""
    path = Path(adapter_dir) / ADAPTER_META
    if not path.is_file():
        return None
    meta = read_json_object(path, "copy the adapter directory again")
    checks = {"vocab_size": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
              "embeddings": lambda v: isinstance(v, bool)}
    if need_base:
        checks["base"] = lambda v: isinstance(v, str) and bool(v)
    for key, ok in checks.items():
        if not ok(meta.get(key)):
            raise UserError(f"{path}: {key} is {meta.get(key)!r}; the file is damaged (or pass the base explicitly)")
    if not isinstance(meta.get("trust_remote_code", False), bool):
        raise UserError(f"{path}: trust_remote_code is {meta['trust_remote_code']!r}, expected true or false")
    return meta


def load_peft(net: nn.Module, adapter_dir: Path) -> nn.Module:
    """peft.PeftModel.from_pretrained with a damaged adapter_config.json or adapter weights reported as a
    UserError naming the directory. peft uses the config's fields without checking their types, so a
    wrong type surfaces as AttributeError, TypeError or IndexError; a bad value as ValueError or KeyError; a cut
    weights file as OSError or safetensors' own error; factors of another shape as RuntimeError; and the
    config can name a module peft then imports (megatron_core): ImportError, named in the message."""
    import peft  # peft: only for adapter stages

    cfg_path = Path(adapter_dir) / "adapter_config.json"
    read_json_object(cfg_path, "copy the adapter directory again")  # peft fails obscurely on a bad one
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = peft.PeftModel.from_pretrained(net, str(adapter_dir))
    except torch.OutOfMemoryError:
        raise
    except (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError, RuntimeError, ImportError,
            SafetensorError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"cannot load the adapter in {adapter_dir}: {type(e).__name__}: {first}; "
                        "its adapter_config.json or adapter weights are damaged or from another base") from None
    # peft only warns when the weights file lacks some of the configured adapter's tensors (they stay at
    # their initial values): that is another adapter's file, not this one
    missing = [str(w.message) for w in caught if "missing adapter keys" in str(w.message)]
    if missing:
        raise UserError(f"{adapter_dir}: the adapter weights do not match adapter_config.json "
                        f"({missing[0][:160]}); copy the adapter directory again")
    for w in caught:  # the rest of what peft had to say, as it would have said it
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return model
