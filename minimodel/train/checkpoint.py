"""Training checkpoints: written atomically, checksummed, loaded without unpickling.

    checkpoints/step_N/model.safetensors   weights (a tied lm_head is stored once)
    checkpoints/step_N/optimizer.pt        optimizer states (torch.load(weights_only=True))
    checkpoints/step_N/rng.pt              torch RNG states
    checkpoints/step_N/checkpoint.json     step, data position, model config, sha256 of each file
checkpoint.json is written last; a directory without it, or whose files do not match
their checksums, is not a checkpoint and resume falls back to the previous one.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from minimodel.common.errors import UserError
from minimodel.common.io import atomic_dir, file_sha256, read_json_object
from minimodel.nn.weights import load_model_weights, model_tensors

META = "checkpoint.json"


def save_checkpoint(ckpt_root: str | Path, step: int, model: torch.nn.Module, optimizers: list,
                    trainer_state: dict, keep_last: int) -> Path:
    ckpt_root = Path(ckpt_root)
    final = ckpt_root / f"step_{step}"
    with atomic_dir(final) as tmp:
        save_file(model_tensors(model), str(tmp / "model.safetensors"))
        torch.save([opt.state_dict() for opt in optimizers], tmp / "optimizer.pt")
        torch.save({"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
                   tmp / "rng.pt")
        files = {p.name: file_sha256(p) for p in sorted(tmp.iterdir())}
        meta = {"step": step, **trainer_state, "files": files}
        (tmp / META).write_text(json.dumps(meta, indent=2))
    _prune(ckpt_root, keep_last)
    return final


def _prune(ckpt_root: Path, keep_last: int) -> None:
    done = sorted(_step_dirs(ckpt_root), key=lambda p: int(p.name.split("_")[1]))
    for old in done[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def _step_dirs(ckpt_root: Path) -> list[Path]:
    if not ckpt_root.is_dir():
        return []
    return [p for p in ckpt_root.iterdir()
            if p.is_dir() and p.name.startswith("step_") and p.name[5:].isdigit()]


def verify_checkpoint(path: Path) -> dict:
    """The checkpoint's metadata if every file matches its checksum; UserError naming the bad file otherwise."""
    meta_path = path / META
    if not meta_path.is_file():
        raise UserError(f"{path} has no {META}: the checkpoint was not finished")
    meta = read_json_object(meta_path, "the checkpoint is corrupted")
    files = meta.get("files")
    if not isinstance(files, dict) or not all(isinstance(n, str) and isinstance(d, str) for n, d in files.items()) \
            or not {"model.safetensors", "optimizer.pt", "rng.pt"} <= set(files):
        raise UserError(f"{meta_path} is corrupted: it does not list the checkpoint's files and checksums")
    for name, digest in files.items():
        f = path / name
        if not f.is_file():
            raise UserError(f"checkpoint file missing: {f}")
        if file_sha256(f) != digest:
            raise UserError(f"checkpoint file {f} is corrupted or truncated (checksum mismatch)")
    return meta


def remove_partial_writes(ckpt_root: Path) -> None:
    """Temp directories of checkpoints a crash cut short (never valid: renamed only when complete)."""
    if ckpt_root.is_dir():
        for p in ckpt_root.iterdir():
            if p.is_dir() and p.name.startswith(".step_") and p.name.endswith((".tmp", ".old")):
                shutil.rmtree(p, ignore_errors=True)


def latest_checkpoint(ckpt_root: str | Path) -> tuple[Path, dict] | None:
    """Newest checkpoint that verifies; corrupted ones are reported and skipped."""
    remove_partial_writes(Path(ckpt_root))
    for path in sorted(_step_dirs(Path(ckpt_root)), key=lambda p: -int(p.name.split("_")[1])):
        try:
            return path, verify_checkpoint(path)
        except UserError as e:
            print(f"warning: skipping checkpoint: {e}", file=sys.stderr, flush=True)
    return None


def resume_point(ckpt_root: Path) -> tuple[Path, dict] | None:
    """The checkpoint a run resumes from. Checkpoints that exist but of which none verifies are an
    error: starting over would silently redo every step and erase the run's metrics history."""
    found = latest_checkpoint(ckpt_root)
    kept = sorted(_step_dirs(Path(ckpt_root)), key=lambda p: int(p.name.split("_")[1]))
    if found is None and kept:
        raise UserError(f"{ckpt_root} holds checkpoints ({', '.join(p.name for p in kept)}) of which none loads "
                        f"(see the warnings above), so the run cannot resume; to start again from step 0 on "
                        f"purpose, delete {ckpt_root} (its metrics.jsonl is then rewritten), or use another "
                        "train.out_dir")
    return found


def _load_pt(path: Path):
    """torch.load(weights_only=True) of a checkpoint file; a damaged file is a UserError naming it."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001
        # Damaged bytes reach torch's zip reader and restricted unpickler as whatever type they trigger
        # (seen: OSError, EOFError, RuntimeError, ValueError, KeyError, IndexError, TypeError,
        # struct.error, UnpicklingError). Only a file whose checksum in checkpoint.json was rewritten
        # gets here: the checksum check runs first.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot read checkpoint file {path}: {first[:200]} (truncated or corrupted?)") from None


def load_checkpoint(path: Path, model: torch.nn.Module, optimizers: list) -> None:
    load_model_weights(model, path / "model.safetensors")
    states = _load_pt(path / "optimizer.pt")
    if not isinstance(states, list) or not all(isinstance(s, dict) for s in states):
        raise UserError(f"{path / 'optimizer.pt'} holds no list of optimizer states: not a minimodel checkpoint")
    if len(states) != len(optimizers):
        raise UserError(f"{path}: checkpoint has {len(states)} optimizer states, this run has "
                        f"{len(optimizers)}: it was made with another optimizer setting")
    for opt, state in zip(optimizers, states):
        try:
            opt.load_state_dict(state)
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise UserError(f"{path / 'optimizer.pt'} does not fit this run's optimizer ({type(e).__name__}: "
                            f"{str(e)[:120]}): it was made with another optimizer setting") from None
    rng = _load_pt(path / "rng.pt")
    try:
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    except (KeyError, TypeError, RuntimeError, IndexError):
        raise UserError(f"{path / 'rng.pt'} holds no RNG states: the checkpoint is corrupted") from None
