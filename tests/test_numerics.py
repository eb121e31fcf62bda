"""Numerical faults injected into real training runs: a non-finite step is skipped (counted) or
stops the run naming the first non-finite layer, nothing learned before it is lost, loss spikes
are logged, and the same seed reproduces the same loss curve."""
import math
import random

import pytest
import torch
import torch.nn as nn
from conftest import tiny_overrides
from safetensors.torch import load_file

from minimodel.config import load_config
from minimodel.nn.model import MLP, MiniModel, model_config_from
from minimodel.pretrain import run
from minimodel.train.checkpoint import latest_checkpoint
from minimodel.train.numerics import NumericalFault, SpikeDetector, diagnose
from minimodel.train.tracking import read_metrics


class FaultInjector:
    """Makes one module's output non-finite (or scaled) from the training forward of given steps
    on. The fault stays on until the next training forward, like a fault caused by the batch
    itself, so the trainer's diagnostic re-run sees it too."""

    def __init__(self, monkeypatch, layer: int, steps: set[int], value: float = math.inf, scale_logits=False):
        self.layer, self.steps, self.value, self.scale_logits = layer, steps, value, scale_logits
        self.forwards, self.active = 0, False
        original = MiniModel.__init__

        def init(model, *args, **kwargs):
            original(model, *args, **kwargs)
            target = model.lm_head if scale_logits else model.model.layers[layer].mlp
            target.register_forward_hook(self.hook)

        monkeypatch.setattr(MiniModel, "__init__", init)

    def hook(self, module, args, output):
        if module.training and torch.is_grad_enabled():
            self.forwards += 1  # grad_accum=1: the n-th training forward is step n
            self.active = self.forwards in self.steps
        if not self.active:
            return output
        return output * self.value if self.scale_logits else output + self.value


def overrides(data, out, **extra):
    return tiny_overrides(data, out, **{"train.steps": 20, "train.ckpt_every": 5, "train.log_every": 1,
                                        "train.eval_every": 10, **extra})


def final_weights_finite(out):
    weights = load_file(out / "final" / "model.safetensors")
    return all(bool(torch.isfinite(t).all()) for t in weights.values())


def test_a_nonfinite_step_is_skipped_counted_and_diagnosed(english_set, tmp_path, monkeypatch, capsys):
    FaultInjector(monkeypatch, layer=1, steps={7})
    out = tmp_path / "run"
    result = run(load_config(None, overrides(english_set, out)))
    assert result["step"] == 20 and final_weights_finite(out)
    err = capsys.readouterr().err
    assert "step 7: non-finite loss or gradient: first non-finite output in model.layers.1.mlp (MLP)" in err
    assert "step skipped (1 so far)" in err
    metrics = read_metrics(out)
    logged = {m["step"]: m for m in metrics if "skipped_steps" in m}
    assert logged[6]["skipped_steps"] == 0 and logged[7]["skipped_steps"] == 1 and logged[20]["skipped_steps"] == 1
    val = [m["val_loss"] for m in metrics if "val_loss" in m]
    assert val[-1] < val[0] - 0.5  # the run kept learning past the fault


def test_stop_mode_names_the_layer_keeps_progress_and_resumes(english_set, tmp_path, monkeypatch):
    injector = FaultInjector(monkeypatch, layer=0, steps={8})
    out = tmp_path / "run"
    with pytest.raises(NumericalFault) as e:
        run(load_config(None, overrides(english_set, out, **{"train.on_nonfinite": "stop"})))
    msg = str(e.value)
    assert "step 8: non-finite loss or gradient: first non-finite output in model.layers.0.mlp (MLP)" in msg
    assert "train.on_nonfinite=stop" in msg and "\n" not in msg
    # steps 6 and 7 were done after the step_5 checkpoint: they are kept, with the data position before step 8
    path, meta = latest_checkpoint(out / "checkpoints")
    assert path.name == "step_7" and meta["position"] == 7 * 8 and meta["skipped_steps"] == 0
    weights = load_file(path / "model.safetensors")
    assert all(bool(torch.isfinite(t).all()) for t in weights.values())

    # the documented way on: resume the same run, skipping such steps; the fault comes back at step 8
    injector.forwards = 0
    injector.steps = {1}
    result = run(load_config(None, overrides(english_set, out, **{"train.on_nonfinite": "skip"})))
    assert result["step"] == 20 and final_weights_finite(out)
    assert [m["skipped_steps"] for m in read_metrics(out) if m["step"] == 20 and "skipped_steps" in m] == [1]


def test_a_run_that_only_skips_stops(english_set, tmp_path, monkeypatch):
    FaultInjector(monkeypatch, layer=1, steps=set(range(3, 100)), value=math.nan)
    out = tmp_path / "run"
    with pytest.raises(NumericalFault, match=r"step 6: .*4 steps in a row, over train.max_consecutive_skips"):
        run(load_config(None, overrides(english_set, out, **{"train.max_consecutive_skips": 3})))
    path, meta = latest_checkpoint(out / "checkpoints")
    assert path.name == "step_5" and meta["skipped_steps"] == 3


def test_diagnosis_of_weights_and_gradients():
    torch.manual_seed(0)
    model = MiniModel(model_config_from("tiny", vocab_size=64, d_model=32, n_layers=2, n_heads=2,
                                        n_kv_heads=1, ffn_dim=64))
    x = torch.randint(0, 64, (2, 8))
    model(x, x).backward()
    assert diagnose(model, [lambda: model(x, x)]).startswith("forward outputs and gradients finite")
    model.model.layers[1].self_attn.o_proj.weight.grad[0, 0] = math.nan
    assert diagnose(model, [lambda: model(x, x)]) == (
        "forward outputs finite, gradients non-finite in model.layers.1.self_attn.o_proj.weight")
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[3, 3] = math.inf
    assert diagnose(model, [lambda: model(x, x)]) == "weights already non-finite in model.layers.0.mlp.up_proj.weight"
    assert isinstance(model.model.layers[0].mlp, MLP) and isinstance(model.model.layers[0].mlp.up_proj, nn.Linear)


def test_spike_detector_flags_a_jump_not_a_falling_curve():
    rng = random.Random(0)
    falling = [6.0 * math.exp(-k / 40) + 1.0 + rng.gauss(0, 0.02) for k in range(300)]
    det = SpikeDetector(sigma=6.0)
    assert [k for k, v in enumerate(falling) if det.update(v)] == []
    noisy = [3.0 + rng.gauss(0, 0.05) for _ in range(100)]
    noisy[60] = 4.5
    det = SpikeDetector(sigma=6.0)
    flagged = [k for k, v in enumerate(noisy) if det.update(v)]
    assert flagged == [60]
    assert SpikeDetector(sigma=0.0).update(100.0) is None


def test_a_loss_spike_in_a_run_is_logged_and_counted(english_set, tmp_path, monkeypatch, capsys):
    FaultInjector(monkeypatch, layer=0, steps={30}, value=40.0, scale_logits=True)
    out = tmp_path / "run"
    run(load_config(None, overrides(english_set, out, **{"train.steps": 34, "train.ckpt_every": 34})))
    assert "step 30: loss spike" in capsys.readouterr().err
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics if "loss_spike" in m] == [30]
    assert [m["loss_spikes"] for m in metrics if m["step"] in (29, 34) and "loss_spikes" in m] == [0, 1]


def test_same_seed_same_loss_curve_other_seed_another(english_set, tmp_path):
    def curve(name, seed):
        out = tmp_path / name
        run(load_config(None, overrides(english_set, out, **{"train.seed": seed, "train.ckpt_every": 20})))
        metrics = read_metrics(out)
        return ([m["loss"] for m in metrics if "loss" in m], [m["val_loss"] for m in metrics if "val_loss" in m],
                [m["loss_spikes"] for m in metrics if "loss_spikes" in m][-1])

    a, b, c = curve("a", 7), curve("b", 7), curve("c", 8)
    assert len(a[0]) == 20 and a == b  # every train and validation loss, exactly
    assert a[0] != c[0]
    assert a[2] == 0  # a healthy run logs no spikes


def test_a_gradient_only_fault_is_named_after_clipping_would_have_hidden_it(english_set, tmp_path, monkeypatch, capsys):
    """Clipping a NaN norm multiplies every gradient by NaN; the diagnosis must still name the one
    parameter whose gradient went bad (grad_clip is on, at its default)."""
    original = MiniModel.__init__
    calls = {"n": 0}

    def poison(grad):
        calls["n"] += 1
        return grad * math.nan if calls["n"] == 4 else grad

    def init(model, *args, **kwargs):
        original(model, *args, **kwargs)
        model.model.layers[1].self_attn.o_proj.weight.register_hook(poison)

    monkeypatch.setattr(MiniModel, "__init__", init)
    out = tmp_path / "run"
    run(load_config(None, overrides(english_set, out, **{"train.steps": 6})))
    err = capsys.readouterr().err
    assert ("step 4: non-finite loss or gradient: forward outputs finite, gradients non-finite in "
            "model.layers.1.self_attn.o_proj.weight; step skipped") in err


def test_weights_gone_non_finite_are_never_saved_over_good_ones(english_set, tmp_path, monkeypatch):
    """An optimizer step that breaks the weights (here: injected after step 6) must not replace the
    good checkpoints: the run stops, and resuming starts from the last good one."""
    from minimodel.train import trainer

    real_save = trainer.save_checkpoint
    out = tmp_path / "run"
    calls = {"n": 0}

    def break_weights_after(ckpt_root, step, model, *args, **kwargs):
        path = real_save(ckpt_root, step, model, *args, **kwargs)
        calls["n"] += 1
        if step == 5:
            with torch.no_grad():
                model.model.layers[0].mlp.up_proj.weight[0, 0] = math.inf
        return path

    monkeypatch.setattr(trainer, "save_checkpoint", break_weights_after)
    with pytest.raises(NumericalFault, match=r"model\.layers\.0\.mlp\.up_proj\.weight") as e:
        run(load_config(None, overrides(english_set, out, **{"train.keep_last": 1})))
    assert "\n" not in str(e.value)
    path, meta = latest_checkpoint(out / "checkpoints")
    assert path.name == "step_5"
    assert all(bool(torch.isfinite(t).all()) for t in load_file(path / "model.safetensors").values())


def test_rewind_drops_redone_rows_and_a_torn_line(tmp_path):
    from minimodel.train.tracking import Tracker

    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "val_loss": 7.0}\n{"step": 5, "loss": 6.0}\n'
                                            '{"step": 10, "loss": 5.0}\n{"step": 1')
    t = Tracker(tmp_path, {}, enabled=True, progress=False)
    t.rewind(5)
    t.log(6, loss=5.5)
    t.close()
    assert [(m["step"], m.get("loss")) for m in read_metrics(tmp_path)] == [(0, None), (5, 6.0), (6, 5.5)]


def test_a_fault_on_one_torchrun_rank_is_skipped_by_both(english_set, tmp_path):
    """Rank 1's forward goes non-finite at step 5: both ranks skip that step (they take the same
    branch, or the next all-reduce would hang), rank 1 names the layer, and they end identical."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    out = tmp_path / "run"
    args = tiny_overrides(english_set, out, **{"train.steps": 10, "train.log_every": 1, "train.ckpt_every": 10})
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "tests/dist_worker.py", str(tmp_path), *args],
                       capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                            "MINIMODEL_TEST_FAULT": "1:5"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert ("step 5: non-finite loss or gradient: first non-finite output in model.layers.1.mlp (MLP) "
            "on micro-batch 0 (rank 1's micro-batches)") in r.stderr
    a, b = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(bool(torch.isfinite(t).all()) for t in a.values())
    logged = {m["step"]: m["skipped_steps"] for m in read_metrics(out) if "skipped_steps" in m}
    assert logged[4] == 0 and logged[5] == 1 and logged[10] == 1
