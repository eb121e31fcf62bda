"""Continual learning across a sequence of languages: the data plan, the recipe end to end on a toy sequence
(en -> ko -> ru from two Bible books, a tiny fixture core), the forgetting matrix against hand-computed
values, what each arm reads, a stage killed mid-way, and bad input."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_cpt_fixtures import bilingual, stage_overrides  # noqa: F401
from test_kill_resume import finish, last_logged_step, partial_checkpoints, same_tensors, start, wait_until

from data_prep import continual
from eval.continual import arm_metrics, summarize_arm
from minimodel.common.errors import UserError
from minimodel.forgetting.language_mix import language_mix, language_of

ROOT = Path(__file__).resolve().parents[1]
LANGS = ["en", "ko", "ru"]
TOY_CONFIG = """
[base]
path = ""
[lora]
rank = 8
alpha = 16.0
train_embeddings = true
embedding_lr_mult = 0.2
[optim]
name = "adamw"
lr = 2e-3
weight_decay = 0.0
warmup_steps = 2
[data]
path = ""
seq_len = 64
[train]
micro_batch = 4
dtype = "fp32"
log_every = 2
eval_every = 1000
eval_batches = 1
ckpt_every = 4
progress = false
"""


# ---------------------------------------------------------------- the matrix, by hand

def test_matrix_metrics_match_hand_computed_values():
    # rows: base, +ko, +ru; columns: en, ko, ru
    r0 = [[1.0, 4.0, 8.0], [1.2, 2.0, 6.0], [1.1, 2.2, 1.5]]
    r1 = [[1.0, 4.0, 8.0], [1.4, 2.0, 6.0], [1.3, 2.6, 2.5]]
    m = arm_metrics(r0, LANGS, alone={"ko": 2.0, "ru": 1.25})
    assert m["forgetting"]["en"] == pytest.approx(0.1)              # 1.1 / 1.0 - 1, against the base
    assert m["forgetting"]["ko"] == pytest.approx(0.1)              # 2.2 / 2.0 - 1, against its own best
    assert m["forgetting"]["ru"] == pytest.approx(0.0)              # just learned
    assert m["bwt"] == pytest.approx(0.1)                           # mean over en and ko
    assert m["en_relative"] == pytest.approx(0.1)
    assert m["plasticity"] == pytest.approx({"ko": 1.0, "ru": 1.2})  # 2.0 / 2.0, 1.5 / 1.25
    assert m["final_new_bpb"] == 1.5 and m["final_avg_bpb"] == pytest.approx((1.1 + 2.2 + 1.5) / 3)
    s = summarize_arm({0: r0, 1: r1}, LANGS, {"ko": 2.0, "ru": 1.25})
    assert s["R"][2] == pytest.approx([1.2, 2.4, 2.0])
    assert s["R_seeds"]["1"] == r1
    # seed 1: en 1.3 -> +30%, ko 2.6 / 2.0 -> +30%, bwt 0.3; seed 0: bwt 0.1 -> half range 0.1
    assert s["bwt_seeds"] == pytest.approx({"0": 0.1, "1": 0.3})
    assert s["spread"]["bwt"] == pytest.approx(0.1)
    assert s["spread"]["en_relative"] == pytest.approx(0.1)
    # the mean-matrix metrics, not the mean of per-seed metrics
    assert s["bwt"] == pytest.approx(((1.2 - 1) + (2.4 / 2.0 - 1)) / 2)
    assert s["plasticity"] == pytest.approx({"ko": 1.0, "ru": 2.0 / 1.25})


def test_forgetting_is_measured_from_the_best_after_learning():
    four = ["en", "ko", "ru", "de"]
    R = [[1.0, 4.0, 8.0, 5.0], [1.2, 2.0, 6.0, 4.0], [1.1, 1.6, 1.5, 3.0], [1.1, 2.0, 1.8, 1.2]]
    m = arm_metrics(R, four)
    assert m["forgetting"]["ko"] == pytest.approx(2.0 / 1.6 - 1)  # ko improved while ru was learned
    assert m["forgetting"]["ru"] == pytest.approx(1.8 / 1.5 - 1)
    assert m["bwt"] == pytest.approx((0.1 + 0.25 + 0.2) / 3)


# ---------------------------------------------------------------- language mix and prompts

def test_language_of_tells_scripts_and_latin_languages_apart():
    assert language_of("And he said unto them, go to the city of the king") == "en"
    assert language_of("Und er sprach zu ihnen: geht in die Stadt, die der König baute") == "de"
    assert language_of("그리고 그가 말하기를 너희는 성으로 가라") == "ko"
    assert language_of("И сказал он им: идите в город") == "ru"
    assert language_of("123 !!! ...") == "none"
    mix = language_mix(["the king and the city", "그리고 그가", "и сказал", "이 사람"])
    assert mix["samples"] == {"ko": 0.5, "en": 0.25, "ru": 0.25}
    assert set(mix["letters"]) == {"latin", "hangul", "cyrillic"} and sum(mix["letters"].values()) == pytest.approx(1)


def test_prompts_come_in_turn_so_every_language_gets_the_same_share(tmp_path):
    lines = continual.interleave([["a1", "a2", "a3"], ["b1"]])
    assert lines == ["a1", "b1", "a2", "b1", "a3", "b1"]
    for lang in ("en", "ko", "ru", "de"):  # the shipped prefixes are written in their language
        prefixes = continual.read_prompts(lang, continual.PROMPTS_DIR)
        assert prefixes and all(language_of(p) in (lang, "latin") for p in prefixes), lang
    with pytest.raises(UserError, match="no dream prompts for 'ru'.*one per line"):
        continual.read_prompts("ru", tmp_path)


@pytest.mark.parametrize("spec, match", [
    ("en", "at least one new one"), ("en,ko,en", "names a language twice"), ("en,xx", "'xx' has no offline text")])
def test_bad_language_lists_are_refused(spec, match):
    with pytest.raises(UserError, match=match):
        continual.parse_langs(spec)


# ---------------------------------------------------------------- the recipe on a toy sequence

def recipe_env(bilingual, cache: Path, out: Path, data: Path, config: Path, **extra) -> dict:
    env = {**os.environ, "PY": sys.executable, "MINIMODEL_CACHE": str(cache), "OUT": str(out), "DATA": str(data),
           "LANGS": ",".join(LANGS), "BOOKS": "1-2", "STEPS": "6", "SEEDS": "0", "ARMS": "none real25 gen",
           "GEN_RATIO": "0.25", "KL": "1", "CTX": "64", "CONFIG": str(config), "BASE": str(bilingual["core"]),
           "TOKENIZER": str(bilingual["tok_shared"]), "PYTHONPATH": str(ROOT)}
    env.update(extra)
    return env


def run_recipe(env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "recipes" / "continual.sh")], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def toy(bilingual, demo_cache, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("continual")
    config = root / "toy.toml"
    config.write_text(TOY_CONFIG)
    env = recipe_env(bilingual, demo_cache, root / "out", root / "data", config)
    r = run_recipe(env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return {"out": root / "out", "data": root / "data", "config": config, "env": env, "log": r.stdout + r.stderr}


def test_the_toy_sequence_writes_the_matrix_its_runs_measured(toy):
    out = toy["out"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["languages"] == LANGS and set(summary["arms"]) == {"none", "real25", "gen"}
    base = json.loads((out / "base_bpb.json").read_text())["sets"]
    for name, arm in summary["arms"].items():
        assert {"source", "ratio", "distill", "anchor", "R", "R_seeds", "forgetting", "bwt", "en_relative",
                "plasticity", "final_new_bpb", "spread", "gen_share"} <= set(arm), name
        R = arm["R_seeds"]["0"]
        assert R[0] == [base[f"{x}_heldout"]["bpb"] for x in LANGS]
        for k, lang in enumerate(LANGS[1:], start=1):  # every row is what eval.bpb measured after that stage
            sets = json.loads((out / "arms" / f"{name}_s0" / f"stage{k}_{lang}" / "eval" / "bpb.json").read_text())
            assert R[k] == [sets["sets"][f"{x}_heldout"]["bpb"] for x in LANGS], (name, k)
        assert arm["en_relative"] == pytest.approx(R[2][0] / R[0][0] - 1)
        assert arm["forgetting"]["ko"] == pytest.approx(R[2][1] / min(R[1][1], R[2][1]) - 1)
        assert R[1][1] < R[0][1] and R[2][2] < R[1][2], f"{name}: each stage learns its language"
    assert summary["arms"]["gen"]["source"] == "generated" and summary["arms"]["real25"]["source"] == "data"
    assert summary["arms"]["none"]["gen_share"] == [None, None]
    assert all(0 < s < 1 for s in summary["arms"]["gen"]["gen_share"])
    # ru learned alone from the base: the plasticity reference; ko alone is the no-replay arm's first stage
    assert set(summary["alone"]) == {"ko", "ru"}
    assert summary["arms"]["gen"]["plasticity"]["ru"] == pytest.approx(
        summary["arms"]["gen"]["R"][2][2] / summary["alone"]["ru"])
    assert summary["targets"] and all("met" in t for t in summary["targets"].values())
    for f in ("continual.md", "heatmap.png", "stages.png"):
        assert (out / f).stat().st_size > 0, f
    timed = [json.loads(x)["run"] for x in (out / "timing.jsonl").read_text().splitlines()]
    assert "arms/gen_s0/stage2_ru" in timed and "alone/ru_s0" in timed and timed[-1] == "total"


def test_the_plan_extends_the_vocabulary_only_where_coverage_is_poor(toy):
    plan = json.loads((toy["data"] / "plan.json").read_text())
    ko, ru = plan["stages"][1], plan["stages"][2]
    assert not ko["extended"] and ru["extended"] and ru["coverage"]["bytes_per_token"] < 1.25  # byte by byte
    assert ru["coverage"]["bytes_per_token_after"] > 2 * ru["coverage"]["bytes_per_token"]
    from minimodel.tokenizers.tokenizer import open_tokenizer

    old, new = open_tokenizer(ko["tokenizer"]), open_tokenizer(ru["tokenizer"])
    assert new.vocab_size > old.vocab_size
    assert all(old.sp.id_to_piece(i) == new.sp.id_to_piece(i) for i in range(old.vocab_size))  # ids never move
    # every language is scored on the same chapters
    units = {lang: [json.loads(x)["unit"] for x in Path(t["heldout"]).read_text().splitlines()]
             for lang, t in plan["text"].items()}
    assert units["en"] == units["ko"] == units["ru"] and units["en"]
    val = [json.loads(x)["unit"] for x in Path(plan["text"]["en"]["val"]).read_text().splitlines()]
    assert val and not set(val) & set(units["en"])  # tuning chapters are not the reported ones
    # the real replay of stage 2 mixes both earlier languages under the stage's tokenizer, in equal shares
    mix = json.loads((Path(ru["replay"]) / "manifest.json").read_text())
    assert mix["mixture"] == {"en": 0.5, "ko": 0.5} and mix["tokenizer"]["sha256"] == new.sha256
    prompts = Path(ru["prompts"]).read_text().splitlines()
    assert [language_of(p) for p in prompts[:4]] == ["en", "ko", "en", "ko"]


def test_no_arm_reads_an_earlier_language_unless_it_is_the_real_replay_arm(toy):
    from minimodel.config import read_run_config

    plan = json.loads((toy["data"] / "plan.json").read_text())
    earlier_sets = {str(Path(p).resolve()) for s in plan["stages"] for lang, p in s["sets"].items()
                    if lang != s["language"]}
    earlier_sets |= {str(Path(s["replay"]).resolve()) for s in plan["stages"] if "replay" in s}
    for arm in ("none", "real25", "gen"):
        for k, lang in enumerate(LANGS[1:], start=1):
            cfg = read_run_config(toy["out"] / "arms" / f"{arm}_s0" / f"stage{k}_{lang}").config
            assert json.loads((Path(cfg.data.path) / "manifest.json").read_text())["language"] == lang
            read = {str(Path(p).resolve()) for p in [cfg.replay.path, *cfg.eval.sets] if p}
            if arm == "real25":
                assert read == {str(Path(plan["stages"][k]["replay"]).resolve())}
            else:
                assert not read & earlier_sets, f"{arm} stage {k} reads {read & earlier_sets}"
            if arm == "gen":  # its replay set is what the stage's base wrote
                dream = json.loads((Path(cfg.replay.path) / "manifest.json").read_text())
                assert dream["generator"]["prompts"] == plan["stages"][k]["prompts"]
                assert set(dream["language_mix"]) == {"samples", "letters"}


def test_a_stage_killed_mid_way_resumes_bitwise(toy, tmp_path):
    """Stage 2 of the generated arm (an extended tokenizer, a merged stage-1 base, dreamed replay with
    prompts, distillation) killed past a checkpoint and run again ends bitwise equal to a straight run."""
    plan = json.loads((toy["data"] / "plan.json").read_text())
    stage1 = toy["out"] / "arms" / "gen_s0" / "stage1_ko"
    procs = []

    def cpt(out: Path) -> subprocess.Popen:
        extra = {"train.steps": 24, "train.log_every": 1, "train.ckpt_every": 4, "train.eval_every": 1000,
                 "replay.source": "generated", "replay.ratio": 0.25, "replay.distill": 1.0, "replay.tokens": 600,
                 "replay.prompts": plan["stages"][2]["prompts"], "replay.path": str(out.parent / f"{out.name}_dream")}
        p = start(["-m", "minimodel.cpt", *stage_overrides(stage1, Path(plan["stages"][2]["train"]), out, **extra)],
                  out.parent / f"{out.name}.log")
        procs.append(p)
        return p

    try:
        straight, killed = tmp_path / "straight", tmp_path / "killed"
        p = cpt(straight)
        assert finish(p, tmp_path / "straight.log") is not None and p.returncode == 0
        kill_at = random.Random(os.getpid()).randint(5, 18)
        why = f"killed at step {kill_at}"
        p = cpt(killed)
        wait_until(lambda: last_logged_step(killed) >= kill_at, f"step {kill_at}", p)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
        p = cpt(killed)
        err = finish(p, tmp_path / "killed.log")
        assert p.returncode == 0, f"{why}\n{err[-3000:]}"
        assert "resumed from" in err, why
        for name in ("adapter/adapter_model.safetensors", "adapter/embeddings.safetensors", "final/model.safetensors"):
            assert same_tensors(straight / name, killed / name), f"{why}: {name} differs"
        assert not partial_checkpoints(killed), why
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)


def test_a_mechanism_arm_joins_the_sequence_beside_its_baseline(toy, tmp_path):
    """ARMS=metaplastic_real25 on a finished sequence: the real25 replay with the [plasticity] switch on, its
    importance carried from stage to stage, and scored against real25 in summary.json."""
    out = tmp_path / "out"
    shutil.copytree(toy["out"], out, symlinks=True)
    r = run_recipe({**toy["env"], "OUT": str(out), "ARMS": "metaplastic_real25", "ALONE": "0"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    from minimodel.config import read_run_config
    from minimodel.forgetting.metaplastic import inherited

    stages = [out / "arms" / "metaplastic_real25_s0" / f"stage{k}_{lang}" for k, lang in enumerate(LANGS[1:], 1)]
    for k, st in enumerate(stages, start=1):
        cfg = read_run_config(st).config
        assert cfg.plasticity.metaplastic == 10 and cfg.replay.ratio == 0.25 and cfg.replay.source == "data"
        assert inherited(st).stages == k  # each stage adds its own importance to its base's
    summary = json.loads((out / "summary.json").read_text())
    arm = summary["arms"]["metaplastic_real25"]
    assert arm["mechanism"] == "metaplastic" and arm["baseline"] == "real25"
    assert arm["state_bytes"] == (stages[-1] / "plasticity" / "importance.safetensors").stat().st_size
    v = arm["vs_baseline"]
    assert v["bwt_gain_pp"] == pytest.approx((summary["arms"]["real25"]["bwt"] - arm["bwt"]) * 100)
    assert "mechanism_bwt_gain_pp" in summary["targets"]
    assert "| metaplastic_real25 | metaplastic | real25 |" in (out / "continual.md").read_text()


# ---------------------------------------------------------------- bad input: one clear line

def error_lines(r: subprocess.CompletedProcess) -> list[str]:
    return [x for x in r.stderr.splitlines() if x.lower().startswith("error")]


@pytest.mark.parametrize("extra, match", [
    ({"LANGS": "en,xx"}, "language 'xx' has no offline text"),
    ({"ARMS": "none bogus"}, "unknown arm 'bogus'"),
    ({"ARMS": "metaplastic_bogus"}, "unknown arm 'metaplastic_bogus'"),
    ({"ARMS": "split_lora_split_lora_real25"}, "unknown arm 'split_lora_split_lora_real25'"),
    ({"BASE": "/nonexistent/core"}, "base /nonexistent/core not found"),
])
def test_bad_recipe_input_is_one_clear_line(toy, tmp_path, extra, match):
    env = {**toy["env"], "OUT": str(tmp_path / "out"), **extra}
    r = run_recipe(env, timeout=120)
    assert r.returncode != 0
    lines = error_lines(r)
    assert len(lines) == 1 and match in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def test_a_stage_whose_base_is_missing_is_one_clear_line(toy, tmp_path):
    plan = json.loads((toy["data"] / "plan.json").read_text())
    r = subprocess.run([sys.executable, "-m", "minimodel.cpt", *stage_overrides(
        tmp_path / "stage1_ko", Path(plan["stages"][2]["train"]), tmp_path / "stage2_ru")],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    lines = error_lines(r)
    assert len(lines) == 1 and "model not found" in lines[0] and "stage1_ko" in lines[0]
    r = subprocess.run([sys.executable, "-m", "eval.continual", str(tmp_path)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0 and error_lines(r) == [
        f"error: {tmp_path / 'sequence.json'} is missing: {tmp_path} is not a continual-learning run "
        "(recipes/continual.sh writes it)"]


def test_plan_says_what_would_run_and_writes_nothing(tmp_path):
    env = {**os.environ, "PY": sys.executable, "PLAN": "1", "OUT": str(tmp_path / "out")}
    r = run_recipe(env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "en -> ko -> ru -> de (3 stages), 6 arms (none real5 real25 gen gen50_kl10 anchor) x 2 seeds" in r.stdout
    assert "learned alone" in r.stdout and not (tmp_path / "out").exists()
    r = run_recipe({**env, "SWEEP": "1", "LANGS": "en,fr,de"}, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "en -> fr -> de (2 stages), 9 arms (gen5_kl1 gen5_kl3 gen5_kl10 gen25_kl1" in r.stdout
    assert "x 1 seeds" in r.stdout and "val chapters" in r.stdout
