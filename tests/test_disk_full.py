"""A disk that fills during a run (a checkpoint, metrics.jsonl, the final export): one `error:` line
naming the directory, the room needed and the fix; the earlier checkpoints intact, no temp
directory left; and once space is free the same command resumes to the same weights as a run
that never stopped. The full disk is simulated where each writer meets it, raising what that
writer raises on a real full disk (checked on a small tmpfs): safetensors a SafetensorError
naming os error 28, torch.save a RuntimeError that names nothing (the free space decides),
Python's own writes OSError(ENOSPC)."""
import errno
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import tiny_overrides
from safetensors import SafetensorError
from safetensors.torch import load_file

import minimodel.models.export
import minimodel.train.checkpoint
import minimodel.train.tracking
from minimodel.common.errors import UserError
from minimodel.config import load_config
from minimodel.pretrain import run
from minimodel.train.checkpoint import verify_checkpoint
from minimodel.train.tracking import read_metrics

RUN = {"train.steps": 16, "train.ckpt_every": 4, "train.log_every": 1, "train.eval_every": 8, "train.keep_last": 2}
SAFETENSORS_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"
Usage = namedtuple("Usage", "total used free")


@pytest.fixture(scope="module")
def straight(english_set, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("disk_full") / "straight"
    run(load_config(None, tiny_overrides(english_set, out, **RUN)))
    return out


def in_temp_dir(path, prefix: str) -> bool:
    return Path(path).parent.name.startswith(prefix)


def fill_checkpoint_safetensors(monkeypatch, run_dir):
    real = minimodel.train.checkpoint.save_file

    def save_file(tensors, path, *a, **k):
        if in_temp_dir(path, ".step_12."):
            Path(path).write_bytes(b"\0" * 100)  # what got written before the disk filled
            raise SafetensorError(SAFETENSORS_FULL)
        return real(tensors, path, *a, **k)
    monkeypatch.setattr(minimodel.train.checkpoint, "save_file", save_file)
    return run_dir / "checkpoints", "checkpoint step_12", 8


def fill_checkpoint_torch_save(monkeypatch, run_dir):
    real_save, real_usage = torch.save, shutil.disk_usage
    full = []

    def save(obj, f, *a, **k):
        if in_temp_dir(f, ".step_12.") and Path(f).name == "optimizer.pt":
            full.append(True)
            Path(f).write_bytes(b"PK" + b"\0" * 100)
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
        return real_save(obj, f, *a, **k)

    def disk_usage(p):
        u = real_usage(p)
        return Usage(u.total, u.total - (1 << 20), 1 << 20) if full else u
    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    return run_dir / "checkpoints", "checkpoint step_12", 8


def fill_metrics(monkeypatch, run_dir):
    class FullFile:
        def __init__(self, f):
            self.f = f

        def write(self, text):
            if text.startswith('{"step": 10,'):
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(text)

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(minimodel.train.tracking, "open", lambda *a, **k: FullFile(open(*a, **k)), raising=False)
    return run_dir, "metrics.jsonl", 8


def fill_export(monkeypatch, run_dir):
    real = safetensors.torch.save_file

    def save_file(tensors, path, *a, **k):
        if in_temp_dir(path, ".final."):
            Path(path).write_bytes(b"\0" * 100)
            raise SafetensorError(SAFETENSORS_FULL)
        return real(tensors, path, *a, **k)
    monkeypatch.setattr(minimodel.models.export, "save_file", save_file)  # what the export writes with
    return run_dir, "the final model", 16


@pytest.mark.parametrize("fill", [fill_checkpoint_safetensors, fill_checkpoint_torch_save, fill_metrics, fill_export])
def test_a_disk_that_fills_stops_with_one_line_and_resumes_once_freed(fill, english_set, straight, tmp_path,
                                                                       monkeypatch):
    out = tmp_path / "run"
    cfg = load_config(None, tiny_overrides(english_set, out, **RUN))
    where, what, kept_step = fill(monkeypatch, out)
    with pytest.raises(UserError) as e:
        run(cfg)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"no space left on device in {where} while writing {what}: "
                                                      "the run needs about "), message
    assert "free space on that disk, then re-run the same command to resume" in message, message
    monkeypatch.undo()  # space is freed

    ckpts = out / "checkpoints"
    assert verify_checkpoint(ckpts / f"step_{kept_step}")["step"] == kept_step  # the earlier checkpoint is intact
    assert not [p.name for p in [*ckpts.iterdir(), *out.iterdir()] if p.name.startswith(".")]  # no temp dirs
    assert not (out / "final").exists() and not (out / "run.lock").exists()

    assert run(cfg)["step"] == RUN["train.steps"]
    a, b = load_file(straight / "final" / "model.safetensors"), load_file(out / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [(m["step"], m.get("loss")) for m in read_metrics(out)] == \
           [(m["step"], m.get("loss")) for m in read_metrics(straight)]
