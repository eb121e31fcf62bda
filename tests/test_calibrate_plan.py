"""The planner held against real runs: measured seconds and tokens read back from run
directories, the planner's FLOPs for the same steps, leave-one-out MFU on a device it has no
profile for, and a clear error for a directory that is not a run."""
import json
import math
import statistics

import pytest
import torch
from conftest import tiny_overrides

from minimodel.common.errors import UserError
from minimodel.config import load_config
from minimodel.nn.flops import CPU_PEAK_FLOPS, flops_per_token
from minimodel.nn.model import MiniModel, model_config_from
from minimodel.pretrain import run
from scripts.calibrate_plan import calibrate, main, planner_gpu


@pytest.fixture(scope="module")
def two_runs(english_set, tmp_path_factory):
    root = tmp_path_factory.mktemp("calib")
    small, wide = root / "small", root / "wide"
    run(load_config(None, tiny_overrides(english_set, small, **{"train.steps": 12, "train.ckpt_every": 6})))
    # stopped early: the planner must count the 8 steps done, not the 16 configured
    run(load_config(None, tiny_overrides(english_set, wide, **{"train.steps": 16, "train.stop_at_step": 8,
                                                               "model.d_model": 128, "optim.name": "adamw"})))
    return small, wide


def test_each_run_is_planned_from_the_others_throughput(two_runs, capsys):
    small, wide = two_runs
    result = calibrate([small, wide])
    a, b = result["runs"]
    assert (a["steps"], a["tokens"]) == (12, 12 * 8 * 64) and (b["steps"], b["tokens"]) == (8, 8 * 8 * 64)
    assert a["device"].startswith("cpu") and a["device"] == b["device"]
    for r in (a, b):
        assert r["measured_s"] > 0 and 0 < r["measured_mfu"] < 1
    # leave one out: each run's planned MFU is the other run's measured one
    assert a["planned_mfu"] == b["measured_mfu"] and b["planned_mfu"] == a["measured_mfu"]
    # the planned time is the planner's FLOPs for the steps done (weights + attention, Muon's
    # Newton-Schulz for the Muon run) over that throughput: at least the 6N-style count
    for r, d_model in ((a, 64), (b, 128)):
        m = model_config_from("tiny", vocab_size=1024, d_model=d_model, n_layers=2, n_heads=4, n_kv_heads=2,
                              ffn_dim=192)
        lower = flops_per_token(m, MiniModel(m).num_params(), 64) * r["tokens"] / (CPU_PEAK_FLOPS * r["planned_mfu"])
        assert lower * 0.999 <= r["planned_s"] <= lower * 1.5
        assert math.isclose(r["time_error"], r["planned_s"] / r["measured_s"] - 1)
    assert result["time_abs_error_median"] == pytest.approx(statistics.median([abs(a["time_error"]),
                                                                              abs(b["time_error"])]))
    assert a["memory_error"] is None  # no GPU memory on a CPU run

    main([str(small), str(wide), "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in printed["runs"]] == [str(small), str(wide)]


def test_gpu_names_map_to_the_planners_table():
    assert planner_gpu("cuda: NVIDIA H100 80GB HBM3") == "h100"
    assert planner_gpu("cuda: NVIDIA H200") == "h200"
    assert planner_gpu("cuda: NVIDIA A100-SXM4-80GB") == "a100-80gb"
    assert planner_gpu("cuda: NVIDIA A100-SXM4-40GB") == "a100-40gb"
    assert planner_gpu("cuda: NVIDIA GeForce RTX 4090") == "4090"
    assert planner_gpu("cuda: Tesla T4") is None and planner_gpu("cpu: 2 cores, x86_64") is None


def test_not_a_run_directory(tmp_path, two_runs):
    with pytest.raises(UserError, match="not a run directory"):
        calibrate([tmp_path])
    with pytest.raises(UserError, match="no other run|not a run"):
        calibrate([tmp_path / "missing"])
    alone = calibrate([two_runs[0]])["runs"][0]
    assert alone["planned_s"] is None and "no other run" in alone["mfu_source"]


def test_peak_flops_per_device():
    from scripts.calibrate_plan import peak_flops

    assert peak_flops("cuda: NVIDIA H100 80GB HBM3", "h100") == 989e12
    assert peak_flops("cuda: NVIDIA L40S", None) == 362e12  # not in the planner: the trainer's table
    assert peak_flops("cpu: 2 cores, x86_64", None) == CPU_PEAK_FLOPS


def test_live_bytes_sees_what_a_step_allocates():
    """The CPU's peak-memory measurement: parameters from the start, then every op's outputs while they
    live (a 1024 x 4096 fp32 activation is 16 MiB, its gradient as much)."""
    from scripts.measure_memory import LiveBytes

    lin = torch.nn.Linear(1024, 4096, bias=False)
    x = torch.randn(1024, 1024, requires_grad=True)
    with LiveBytes(lin.parameters(), [x]) as live:
        start = live.now
        y = lin(x)
        assert live.now - start == 1024 * 4096 * 4
        y.sum().backward()
    assert live.peak - start >= 2 * 1024 * 4096 * 4  # y and its gradient together, then the weight's
    del y
    assert live.now < live.peak


@pytest.mark.parametrize("ckpt", [False, True])
def test_the_plan_holds_against_a_measured_cpt_step(tmp_path, ckpt):
    """A CPT step at SmolLM2-135M's real width and vocabulary (2 of its 30 layers, to stay fast), LoRA r128 on
    every projection, embeddings trained, bf16 frozen base: the plan within 15% of the measured peak."""
    from scripts.measure_memory import run_case

    row = run_case("HuggingFaceTB/SmolLM2-135M", "bf16", ckpt, seq=128, micro_batch=2, layers=2, work=tmp_path)
    assert row["measured_gib"] > 0.3  # the embeddings' fp32 masters alone are 0.1 GiB, with AdamW 0.3
    assert abs(row["error"]) < 0.15, row


def test_measure_names_an_unknown_base(tmp_path):
    from scripts.measure_memory import run_case

    with pytest.raises(UserError, match="not one of the reference bases"):
        run_case("someone/unknown", "bf16", False, 64, 1, work=tmp_path)
