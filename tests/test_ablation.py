"""The ablation machinery on seconds-long runs: every arm swept, seeds, summary, plots."""
import json

import pytest

from scripts.ablation import ARMS, main
from scripts.ablation_summary import tokens_to_reach


def test_tokens_to_reach_interpolates():
    curve = [(0, 5.0), (100, 4.0), (200, 3.0)]
    assert tokens_to_reach(curve, 3.5) == pytest.approx(150)
    assert tokens_to_reach(curve, 3.0) == pytest.approx(200)
    assert tokens_to_reach(curve, 2.9) is None


def test_smoke_ablation_summary(english_set, tmp_path, capsys):
    out = tmp_path / "abl"
    main(["--preset", "smoke", "--out", str(out), "--lrs", "0.01,3.0", "--seeds", "2",
          f"data.path={english_set}", "model.vocab_size=1024"])
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["arms"]) == set(ARMS)
    for name, arm in summary["arms"].items():
        for key in ("best_lr", "final_val_loss_mean", "final_val_loss_std", "tokens_ratio_to_best_adamw",
                    "max_attn_logit", "diverged_lrs"):
            assert key in arm, (name, key)
        assert arm["best_lr"] == 0.01 and arm["seeds"] == 2
        assert arm["final_val_loss_std"] > 0  # two seeds really differ
        assert (out / "runs" / name / "lr0.01_seed1" / "final").is_dir()
        assert not (out / "runs" / name / "lr3_seed1").exists()  # extra seeds only at the best lr
    assert 3.0 in summary["arms"]["adamw"]["diverged_lrs"]
    # the baseline reaches its own final loss exactly at its last evaluation
    assert summary["arms"]["adamw"]["tokens_ratio_to_best_adamw"] == pytest.approx(1.0)
    assert summary["target_loss"] == pytest.approx(summary["arms"]["adamw"]["final_val_loss_mean"])
    assert (out / "plots" / "loss_curves.png").stat().st_size > 1000
    assert (out / "plots" / "lr_sweep.png").stat().st_size > 1000
    table = (out / "ablation.md").read_text()
    assert all(f"| {name} |" in table for name in ARMS)
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(printed) == set(ARMS)
    # a re-run finds every run finished and only re-summarises
    mtime = (out / "runs" / "muon" / "lr0.01_seed0" / "final" / "model.safetensors").stat().st_mtime
    main(["--preset", "smoke", "--out", str(out), "--lrs", "0.01,3.0", f"data.path={english_set}",
          "model.vocab_size=1024"])
    assert (out / "runs" / "muon" / "lr0.01_seed0" / "final" / "model.safetensors").stat().st_mtime == mtime


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(SystemExit):
        main(["--preset", "huge", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["--arms", "sgd", "--out", str(tmp_path)])
