"""Bad input at every file a user hands the kit: a clean one-line UserError, never another exception.

Each reader gets hypothesis-fuzzed files (mutated JSON, truncated or random bytes, missing or
swapped files). A fuzzed input must either load (it was still valid) or raise UserError with a
non-empty one-line message; anything else (KeyError, RuntimeError from torch, a traceback from
safetensors...) fails the test. Readers that write must leave nothing half-written behind.

Counts of bad inputs tried per entry point are collected in TRIED / NOT_CLEAN and printed by the
last test (`pytest -s tests/test_bad_inputs.py -k table`). With BAD_INPUTS_SURVEY=1 an unclean
error is counted instead of failing, which is how the "before the fixes" column was measured.
The command-line entry points are in tests/test_bad_inputs_cli.py.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import read_docs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minimodel.common.errors import UserError

SURVEY = os.environ.get("BAD_INPUTS_SURVEY") == "1"
TRIED: Counter = Counter()
NOT_CLEAN: Counter = Counter()
FIRST_PROBLEM: dict[str, str] = {}

# BAD_INPUTS_SCALE=5 tries five times as many inputs (a longer hunt than CI's)
SCALE = float(os.environ.get("BAD_INPUTS_SCALE", "1"))
FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), max_examples=int(40 * SCALE))


def expect_clean(entry: str, fn, *args, **kw):
    """Run a reader on a (possibly) bad input: its result, or None after a clean UserError."""
    TRIED[entry] += 1
    try:
        return fn(*args, **kw)
    except UserError as e:
        msg = str(e)
        if msg.strip() and "\n" not in msg:
            return None
        problem = f"UserError of {len(msg.splitlines())} lines: {msg[:200]!r}"
    except Exception as e:  # noqa: BLE001 - any other type is the bug this file looks for
        problem = f"{type(e).__name__}: {str(e)[:200]} (at {_where(e)})"
    NOT_CLEAN[entry] += 1
    FIRST_PROBLEM.setdefault(entry, problem)
    if not SURVEY:
        raise AssertionError(f"{entry}: {problem}")
    return None


def _where(e: BaseException) -> str:
    """The innermost frame of the kit's own code that the exception passed through."""
    import traceback

    root = str(Path(__file__).resolve().parent.parent)
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if f.filename.startswith(root) and "/.venv/" not in f.filename and "/tests/" not in f.filename]
    return f"{Path(frames[-1].filename).relative_to(root)}:{frames[-1].lineno}" if frames else "?"


# ---------------------------------------------------------------- strategies

SPECIAL = st.sampled_from([0, -1, 1, 2, 3, 7, 2**31, -2**31, 2**64, 1e300, -0.0, "", "..", "/", "uint16",
                           "float64", "<u8", "int8", "bogus", "train", "val", "train/shard_00000.bin",
                           "minimodel-shards-v1", "minimodel-sft-v1", "llama", "qwen3", "tokenizer.model"])
LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(), st.text(max_size=10), SPECIAL)
JSON = st.recursive(LEAVES, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                    max_leaves=8)
# model shapes: small numbers only, so a fuzzed config never asks for gigabytes
SMALL = st.one_of(st.none(), st.booleans(), st.integers(-3, 96), st.floats(-2, 100), st.text(max_size=6),
                  st.sampled_from(["llama", "qwen3", "gpt2", "bert", "mistral", "", "float32", "bfloat16"]))
SMALL_JSON = st.recursive(
    SMALL, lambda c: st.lists(c, max_size=2) | st.dictionaries(st.text(max_size=5), c, max_size=2), max_leaves=4)


def _paths(doc, prefix=()):
    yield prefix
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for k, v in items:
        yield from _paths(v, prefix + (k,))


def _get(doc, path):
    for k in path:
        doc = doc[k]
    return doc


@st.composite
def mutated(draw, doc, values=JSON):
    """`doc` with 1-3 of: a value replaced (any JSON type), a key/item deleted, an extra key added."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_paths(doc))))
        op = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if not path:
            if op == "replace":
                doc = draw(values)
            elif isinstance(doc, dict):
                doc[draw(st.text(max_size=6))] = draw(values)
            continue
        parent, key = _get(doc, path[:-1]), path[-1]
        if op == "replace":
            parent[key] = draw(values)
        elif op == "delete":
            del parent[key]
        else:
            node = parent[key]
            if isinstance(node, dict):
                node[draw(st.text(max_size=6))] = draw(values)
            elif isinstance(node, list):
                node.append(draw(values))
            else:
                parent[key] = draw(values)
    return doc


@st.composite
def json_file(draw, doc, values=JSON):
    """Bytes of a JSON file derived from `doc`: mostly mutated, sometimes cut short, binary or empty."""
    kind = draw(st.sampled_from(["mutated"] * 6 + ["truncated", "binary", "empty", "not-utf8"]))
    good = json.dumps(doc).encode()
    if kind == "mutated":
        return json.dumps(draw(mutated(doc, values))).encode()
    if kind == "truncated":
        return good[:draw(st.integers(0, max(len(good) - 1, 0)))]
    if kind == "binary":
        return draw(st.binary(max_size=64))
    if kind == "empty":
        return b""
    return good.replace(b'"', b'"\xff', 1)


@st.composite
def file_bytes(draw, good: bytes):
    """A damaged copy of a binary file: cut short, grown, bytes flipped, random, or empty."""
    kind = draw(st.sampled_from(["truncate", "append", "flip", "random", "empty"]))
    if kind == "truncate":
        return good[:draw(st.integers(0, max(len(good) - 1, 0)))]
    if kind == "append":
        return good + draw(st.binary(min_size=1, max_size=16))
    if kind == "flip":
        b = bytearray(good)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(b) - 1))
            b[i] ^= draw(st.integers(1, 255))
        return bytes(b)
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=256))
    return b""


@contextlib.contextmanager
def copy_of(src: Path):
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / src.name
        shutil.copytree(src, dst)
        yield dst


def rewrite(path: Path, data: bytes | str | None) -> None:
    """Replace a file with `data`; None removes it, "dir" puts a directory in its place."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    if data == "dir":
        path.mkdir(parents=True)
    elif data is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)


def leftovers(parent: Path, name: str) -> list[str]:
    """Temp or partial outputs named after `name` in `parent` (atomic writers use .NAME.*)."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith((f".{name}", name))) if parent.is_dir() else []


# ---------------------------------------------------------------- the world the readers read

@pytest.fixture(scope="module")
def world(english_set, tmp_path_factory) -> dict:
    """A tiny native model (run dir, HF dir, checkpoint, adapter) and an SFT set, all valid."""
    from safetensors.torch import save_file

    from data_prep.sft import prepare_sft
    from minimodel.models.export import write_model_files
    from minimodel.nn.model import MiniModel, model_config_from
    from minimodel.nn.weights import model_tensors
    from minimodel.train.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("bad_inputs")
    tok = english_set / "tokenizer.model"
    torch.manual_seed(0)
    cfg = model_config_from("tiny", vocab_size=1024, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1,
                            ffn_dim=64, max_seq_len=128)
    model = MiniModel(cfg)
    final = root / "core" / "final"
    final.mkdir(parents=True)
    save_file(model_tensors(model), str(final / "model.safetensors"))
    (final / "minimodel.json").write_text(json.dumps(cfg.to_dict()))
    shutil.copy2(tok, final / "tokenizer.model")
    (root / "core" / "config.toml").write_text(f'[data]\npath = "{english_set}"\nseq_len = 64\n')

    hf = root / "hf"
    hf.mkdir()
    write_model_files(model, hf)
    (hf / "minimodel.json").unlink()  # a plain Hugging Face directory
    from minimodel.tokenizers.sp_to_hf import save_hf_tokenizer
    save_hf_tokenizer(tok, hf)

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)).backward()
    opt.step()
    for step in (5, 10):
        save_checkpoint(root / "ckpts", step, model, [opt], {"position": step}, keep_last=5)

    docs = read_docs("english_web.jsonl")[:12]
    recs = [(f"r{i}", {"id": i, "instruction": d[:80], "output": d[80:200]}) for i, d in enumerate(docs)]
    prepare_sft(root / "sft", tok, recs, val_fraction=0.3)

    from minimodel.models.loading import load
    from minimodel.models.lora import apply_lora, save_adapter
    lm = apply_lora(load(str(root / "core")), 2, 4, 0.0, ["q_proj", "v_proj"])
    save_adapter(lm, root / "adapter", tok, {"base": str(root / "core")}, save_embeddings=True)
    return {"root": root, "set": english_set, "tok": tok, "core": root / "core", "hf": hf,
            "ckpts": root / "ckpts", "sft": root / "sft", "adapter": root / "adapter", "model": model, "cfg": cfg}


def test_world_is_valid(world):
    """The unfuzzed inputs load: a fuzzed failure is the fuzz's doing, not the fixture's."""
    from data_prep.sft import read_sft
    from minimodel.data.windows import SFTExamples, TokenShards
    from minimodel.models.loading import load
    from minimodel.train.checkpoint import latest_checkpoint

    assert TokenShards(world["set"], "train", 16, 1024).n_windows > 0
    assert len(read_sft(world["sft"], "train")) > 0 and SFTExamples(world["sft"], "train", 64).n_windows > 0
    assert latest_checkpoint(world["ckpts"])[0].name == "step_10"
    assert load(str(world["core"])).kind == "native"
    assert load(str(world["hf"])).kind == "hf"
    assert load(world["adapter"], merge=False).kind == "native"


# ---------------------------------------------------------------- shard sets

def _shard_readers(d: Path):
    from data_prep.shards import check_prepared, read_tokens
    from minimodel.data.format import read_manifest
    from minimodel.data.windows import TokenShards

    expect_clean("shards: read_manifest", read_manifest, d)
    for split in ("train", "val"):
        expect_clean("shards: TokenShards", TokenShards, d, split, 16, 1024)
    expect_clean("shards: TokenShards (no vocab)", TokenShards, d, "train", 16)
    expect_clean("data_prep.verify (check_prepared)", check_prepared, d)
    expect_clean("data_prep.shards.read_tokens", read_tokens, d, "val")


@FUZZ
@given(data=st.data())
def test_fuzzed_manifest(world, data):
    with copy_of(world["set"]) as d:
        good = json.loads((d / "manifest.json").read_text())
        rewrite(d / "manifest.json", data.draw(json_file(good)))
        _shard_readers(d)


@FUZZ
@given(data=st.data())
def test_fuzzed_shard_bytes(world, data):
    with copy_of(world["set"]) as d:
        shard = d / data.draw(st.sampled_from(["train/shard_00000.bin", "val/shard_00000.bin"]))
        rewrite(shard, data.draw(st.one_of(file_bytes(shard.read_bytes()), st.none(), st.just("dir"))))
        _shard_readers(d)


# ---------------------------------------------------------------- tokenizer files

def _sp_bytes(data, good: bytes):
    return data.draw(st.one_of(file_bytes(good), st.just("dir"), st.none(), st.binary(max_size=32)))


def _tokenizer_readers(tok: Path, set_dir: Path | None, base_tok: Path):
    from minimodel.data.windows import token_byte_lengths
    from minimodel.tokenizers.chat import load_tokenizer
    from minimodel.tokenizers.chat import load_tokenizer as load_sp
    from minimodel.tokenizers.sp_to_hf import build_hf_tokenizer
    from minimodel.tokenizers.tokenizer import SPTokenizer, tokenizer_in, tokenizer_relation

    expect_clean("tokenizer: data_prep load_tokenizer", load_tokenizer, tok)
    expect_clean("tokenizer: hf_tokenizer.load_sp", load_sp, tok)
    expect_clean("tokenizer: build_hf_tokenizer (export)", build_hf_tokenizer, tok)
    expect_clean("tokenizer: token_byte_lengths", token_byte_lengths, tok, 1024)
    expect_clean("tokenizer: tokenizer_in (a model directory)", tokenizer_in, tok.parent)
    expect_clean("tokenizer: base vs data relation", tokenizer_relation, SPTokenizer(base_tok), tok, "base")
    if set_dir is not None:
        from data_prep.shards import check_prepared
        from minimodel.data.windows import TokenShards

        expect_clean("shards: TokenShards", TokenShards, set_dir, "train", 16, 1024)
        expect_clean("data_prep.verify (check_prepared)", check_prepared, set_dir)


@FUZZ
@given(data=st.data(), same_sha=st.booleans())
def test_fuzzed_tokenizer_file(world, data, same_sha):
    """Damaged tokenizer.model beside shards; with same_sha the manifest is updated to match, so the
    readers go past the checksum and load it."""
    from minimodel.common.io import file_sha256

    with copy_of(world["set"]) as d:
        tok = d / "tokenizer.model"
        rewrite(tok, _sp_bytes(data, tok.read_bytes()))
        if same_sha and tok.is_file():
            m = json.loads((d / "manifest.json").read_text())
            m["tokenizer"]["sha256"] = file_sha256(tok)
            (d / "manifest.json").write_text(json.dumps(m))
        _tokenizer_readers(tok, d, world["tok"])


# ---------------------------------------------------------------- SFT sets

def _sft_readers(d: Path):
    from data_prep.sft import read_sft
    from minimodel.data.windows import SFTExamples

    for split in ("train", "val"):
        expect_clean("sft: data_prep.sft.read_sft", read_sft, d, split)
        ex = expect_clean("sft: minimodel.data.windows.SFTExamples", SFTExamples, d, split, 32)
        if ex is not None:  # it loaded: batches and the vocabulary check must work too
            expect_clean("sft: minimodel.data.windows.SFTExamples", ex.batch, list(range(min(ex.n_windows, 4))))
            expect_clean("sft: minimodel.data.windows.SFTExamples", ex.check_vocab, 1024)


@FUZZ
@given(data=st.data())
def test_fuzzed_sft_manifest(world, data):
    with copy_of(world["sft"]) as d:
        good = json.loads((d / "manifest.json").read_text())
        rewrite(d / "manifest.json", data.draw(json_file(good)))
        _sft_readers(d)


@FUZZ
@given(data=st.data())
def test_fuzzed_sft_files(world, data):
    with copy_of(world["sft"]) as d:
        name = data.draw(st.sampled_from(["train/tokens.bin", "train/mask.bin", "train/index.bin",
                                          "val/index.bin", "tokenizer.model"]))
        f = d / name
        rewrite(f, data.draw(st.one_of(file_bytes(f.read_bytes()), st.none(), st.just("dir"))))
        _sft_readers(d)


# ---------------------------------------------------------------- checkpoints

def _fresh_model(world):
    from minimodel.nn.model import MiniModel
    return MiniModel(world["cfg"])


@FUZZ
@given(data=st.data())
def test_fuzzed_weights_file(world, data):
    from minimodel.nn.weights import load_model_weights

    good = (world["core"] / "final" / "model.safetensors").read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "model.safetensors"
        kind = data.draw(st.sampled_from(["damaged", "pickle", "other-shape", "dir"]))
        change = None
        if kind == "damaged":
            f.write_bytes(data.draw(file_bytes(good)))
        elif kind == "pickle":
            torch.save(world["model"].state_dict(), f)
        elif kind == "other-shape":
            from safetensors.torch import save_file
            sd = {k: v.clone() for k, v in world["model"].state_dict().items() if k != "lm_head.weight"}
            victim = data.draw(st.sampled_from(sorted(sd)))
            change = data.draw(st.sampled_from(["drop", "reshape", "extra", "dtype"]))
            if change == "drop":
                del sd[victim]
            elif change == "reshape":
                sd[victim] = torch.zeros(sd[victim].numel() + 1)
            elif change == "extra":
                sd[victim + ".bogus"] = torch.zeros(2)
            else:
                sd[victim] = sd[victim].to(torch.int64)
            save_file(sd, str(f))
        else:
            f.mkdir()
        if kind in ("pickle", "dir") or change in ("drop", "reshape", "extra"):
            # never a silent load: a missing, misshapen or foreign tensor is refused, naming the file
            with pytest.raises(UserError, match=re.escape(str(f))):
                load_model_weights(_fresh_model(world), f)
        expect_clean("checkpoint: load_model_weights", load_model_weights, _fresh_model(world), f)


@FUZZ
@given(data=st.data(), fix_sha=st.booleans())
def test_fuzzed_checkpoint_dir(world, data, fix_sha):
    """Damage step_10. A direct load raises a UserError naming the file; latest_checkpoint warns,
    names the file and falls back to step_5. With fix_sha the checksums are updated to the damaged
    files, so the damage reaches the loaders instead of the checksum check."""
    from minimodel.common.io import file_sha256
    from minimodel.train.checkpoint import META, latest_checkpoint, load_checkpoint

    with copy_of(world["ckpts"]) as root:
        step = root / "step_10"
        name = data.draw(st.sampled_from(["model.safetensors", "optimizer.pt", "rng.pt", META]))
        f = step / name
        if name == META:
            rewrite(f, data.draw(st.one_of(json_file(json.loads(f.read_text())), st.none())))
        else:
            rewrite(f, data.draw(st.one_of(file_bytes(f.read_bytes()), st.none(), st.just("dir"),
                                           st.just(b"\x80\x04K\x01."))))  # a pickle of the int 1
            if fix_sha and f.is_file():
                meta = json.loads((step / META).read_text())
                meta["files"][name] = file_sha256(f)
                (step / META).write_text(json.dumps(meta))
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            found = expect_clean("checkpoint: latest_checkpoint", latest_checkpoint, root)
        if found is None:  # step_5 is intact: only an unclean error (counted above) gets here
            assert SURVEY, "latest_checkpoint lost step_5, which is intact"
        elif found[0].name == "step_5":
            assert "step_10" in err.getvalue() and err.getvalue().count("\n") == 1, err.getvalue()
        model = _fresh_model(world)
        opt = [torch.optim.AdamW(model.parameters(), lr=1e-3)]
        rng = torch.get_rng_state()
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                expect_clean("checkpoint: load_checkpoint", load_checkpoint, step, model, opt)
        finally:
            torch.set_rng_state(rng)


# ---------------------------------------------------------------- bases and model directories

@FUZZ
@given(data=st.data())
def test_fuzzed_native_base(world, data):
    from eval.models import load_model
    from minimodel.models.loading import load

    with copy_of(world["core"]) as run:
        f = run / "final" / "minimodel.json"
        rewrite(f, data.draw(json_file(json.loads(f.read_text()), SMALL_JSON)))
        expect_clean("base: loading.load (minimodel run dir)", load, str(run))
        expect_clean("eval: load_model (minimodel run dir)", load_model, run, device="cpu")


def _hf_config_variants(data, good: dict) -> bytes | None:
    kind = data.draw(st.sampled_from(["fuzzed"] * 4 + ["unknown-type", "remote-code", "other-shape", "no-type"]))
    cfg = dict(good)
    if kind == "fuzzed":
        return data.draw(json_file(good, SMALL_JSON))
    if kind == "unknown-type":
        cfg["model_type"] = data.draw(st.sampled_from(["not_a_model", "", "bert", "t5"]))
    elif kind == "remote-code":
        cfg.update(model_type="custom_lm", auto_map={"AutoConfig": "modeling_custom.CustomConfig",
                                                     "AutoModelForCausalLM": "modeling_custom.CustomLM"})
    elif kind == "other-shape":
        key = data.draw(st.sampled_from(["hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size"]))
        cfg[key] = good[key] * 2
    else:
        cfg.pop("model_type")
    return json.dumps(cfg).encode()


@FUZZ
@given(data=st.data())
def test_fuzzed_hf_dir(world, data):
    from eval.models import load_model
    from minimodel.models.loading import load

    with copy_of(world["hf"]) as d:
        what = data.draw(st.sampled_from(["config"] * 3 + ["weights", "no-weights"]))
        if what == "config":
            rewrite(d / "config.json", _hf_config_variants(data, json.loads((d / "config.json").read_text())))
        elif what == "weights":
            f = d / "model.safetensors"
            rewrite(f, data.draw(file_bytes(f.read_bytes())))
        else:
            (d / "model.safetensors").unlink()
        with contextlib.redirect_stderr(io.StringIO()):
            expect_clean("base: loading.load (HF dir)", load, str(d))
            expect_clean("base: loading.load native=True (HF dir)", load, d, native=True)
            expect_clean("eval: load_model (HF dir)", load_model, d, device="cpu")


@FUZZ
@given(data=st.data())
def test_fuzzed_adapter_dir(world, data):
    from eval.models import load_model
    from minimodel.models.loading import load

    with copy_of(world["adapter"]) as d:
        name = data.draw(st.sampled_from(["adapter_config.json", "minimodel_adapter.json",
                                          "adapter_model.safetensors", "embeddings.safetensors"]))
        f = d / name
        if name.endswith(".json"):
            rewrite(f, data.draw(st.one_of(json_file(json.loads(f.read_text()), SMALL_JSON), st.none())))
        else:
            rewrite(f, data.draw(st.one_of(file_bytes(f.read_bytes()), st.none())))
        with contextlib.redirect_stderr(io.StringIO()):
            expect_clean("adapter: loading.load merge=False", load, d, merge=False)
            expect_clean("eval: load_model (adapter dir)", load_model, d, device="cpu")


# ---------------------------------------------------------------- raw sources and data_prep.prepare

LINES = st.one_of(
    st.builds(lambda t: json.dumps({"id": "x", "text": t}).encode(), st.text(max_size=30)),
    st.builds(lambda v: json.dumps(v).encode(), JSON),                        # any JSON value
    st.builds(lambda t: json.dumps({"text": t}).encode()[:-1], st.text(max_size=10)),  # cut short
    st.binary(max_size=20),                                                   # not UTF-8, NULs, anything
    st.sampled_from([b"", b"   ", b"\xff\xfe", b'{"text": "caf\xe9"}', b"\x1f\x8b\x08", b"{'text': 'x'}"]),
)


@st.composite
def raw_source(draw):
    suffix = draw(st.sampled_from([".jsonl", ".jsonl", ".txt", ".jsonl.gz", ".parquet", ".csv"]))
    if suffix == ".jsonl":
        body = b"\n".join(draw(st.lists(LINES, min_size=0, max_size=6)))
    else:
        body = draw(st.one_of(st.binary(max_size=80), st.text(max_size=80).map(str.encode)))
    return suffix, body


@FUZZ
@given(src=raw_source(), field=st.sampled_from(["text", "body"]), unit=st.sampled_from(["file", "line", "paragraph"]))
def test_fuzzed_raw_sources(world, src, field, unit):
    from data_prep.sources import read_files, records

    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / f"corpus{src[0]}"
        f.write_bytes(src[1])
        expect_clean("data_prep: read_files (raw text sources)", lambda: list(read_files(str(f), field, txt_unit=unit)))
        expect_clean("data_prep: records (SFT sources)", lambda: list(records(str(f))))


@settings(FUZZ, max_examples=int(25 * SCALE))
@given(src=raw_source(), tok=st.sampled_from(["good", "random", "missing", "dir"]))
def test_fuzzed_prepare_cli_inputs(world, src, tok):
    """python -m data_prep.prepare's body on a fuzzed source: a set or a clean error, never half a set."""
    from data_prep.prepare import main

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        f = tmp / f"corpus{src[0]}"
        f.write_bytes(src[1])
        t = tmp / "tok.model"
        if tok == "good":
            shutil.copy2(world["tok"], t)
        elif tok == "random":
            t.write_bytes(b"\x0a\x03abc" + src[1][:20])
        elif tok == "dir":
            t.mkdir()
        out = tmp / "out"
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            expect_clean("data_prep.prepare (main)", main, ["--out", str(out), "--files", str(f), "--tokenizer", str(t),
                                                            "--num-proc", "1", "--val-fraction", "0.5"])
        if not (out / "manifest.json").is_file():
            assert leftovers(tmp, "out") == [], leftovers(tmp, "out")


SFT_RECORD = st.one_of(
    JSON,
    st.fixed_dictionaries({"instruction": JSON, "output": JSON}, optional={"input": JSON, "system": JSON}),
    st.fixed_dictionaries({"messages": st.lists(st.one_of(JSON, st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "tool", ""]), "content": JSON})), max_size=3)}),
)


@settings(FUZZ, max_examples=int(30 * SCALE))
@given(recs=st.lists(SFT_RECORD, min_size=1, max_size=4))
def test_fuzzed_sft_records(world, recs):
    """data_prep.sft on fuzzed records: an SFT set or a clean error and no directory."""
    from data_prep.sft import prepare_sft

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sft"
        man = expect_clean("data_prep.sft (prepare_sft)", prepare_sft, out, world["tok"],
                           [(f"rec {i}", r) for i, r in enumerate(recs)])
        if man is None:
            assert leftovers(Path(tmp), "sft") == []


# ---------------------------------------------------------------- eval inputs

@FUZZ
@given(lines=st.lists(st.one_of(LINES, st.builds(lambda d: json.dumps(d).encode(), st.fixed_dictionaries(
    {"id": JSON, "lang": JSON, "kind": st.one_of(JSON, st.sampled_from(["encyclopedia", "instruction"])),
     "prompt": JSON}))), max_size=5))
def test_fuzzed_eval_prompts_and_heldout(world, lines):
    from eval.bpb import parse_set, read_texts
    from eval.generations import read_prompts

    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "en_x.jsonl"
        f.write_bytes(b"\n".join(lines))
        expect_clean("eval: read_prompts (generations)", read_prompts, f)
        expect_clean("eval: read_texts (bpb held-out)", read_texts, f)
        expect_clean("eval: parse_set (bpb --data)", parse_set, str(f))
        t = Path(tmp) / "en_y.txt"
        t.write_bytes(b"\n".join(lines))
        expect_clean("eval: read_texts (bpb held-out)", read_texts, t)


@FUZZ
@given(spec=st.one_of(st.text(max_size=20), st.sampled_from(["=", "x=", "en=", ":", "en_a=::", "SET:val", "SET",
                                                             "SET:nosplit", "en_x=SET:train", "Bad Name=SET"])),
       manifest=st.one_of(st.none(), st.just("keep"), JSON))
def test_fuzzed_bpb_set_specs(world, spec, manifest):
    """eval.bpb --data specs and the manifests they point at (shards scored with a native model)."""
    from eval.bpb import parse_set, shard_docs
    from eval.models import load_model

    with copy_of(world["set"]) as d:
        if manifest != "keep":
            rewrite(d / "manifest.json", None if manifest is None else json.dumps(manifest))
        s = expect_clean("eval: parse_set (bpb --data)", parse_set, spec.replace("SET", str(d)))
        if s is not None and s["kind"] == "shards":
            lm = load_model(world["core"], device="cpu")
            expect_clean("eval: shard_docs (bpb on shards)", shard_docs, Path(s["path"]), s["split"], lm)


@FUZZ
@given(data=st.data())
def test_fuzzed_report_inputs(world, data):
    """eval.report on a run directory whose config.toml, metrics.jsonl or eval/bpb.json is fuzzed."""
    from eval.report import main as report_main

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        (run / "eval").mkdir(parents=True)
        bpb = {"model": "run", "stage": "base", "sets": {"en_heldout": {"bpb": 1.5, "bytes": 100, "tokens": 40,
                                                                         "docs": 2}}}
        (run / "eval" / "bpb.json").write_text(json.dumps(bpb))
        (run / "config.toml").write_text(f'[data]\npath = "{world["set"]}"\n[train]\nsteps = 3\n')
        (run / "metrics.jsonl").write_text("\n".join(json.dumps({"step": i, "time": i, "loss": 3.0 - i,
                                                                 "tokens": 64 * i}) for i in range(3)))
        target = data.draw(st.sampled_from(["bpb", "toml", "metrics", "generations"]))
        if target == "bpb":
            rewrite(run / "eval" / "bpb.json", data.draw(json_file(bpb)))
        elif target == "toml":
            rewrite(run / "config.toml", data.draw(st.one_of(st.text(max_size=60).map(str.encode),
                                                             st.binary(max_size=30))))
        elif target == "metrics":
            rewrite(run / "metrics.jsonl", b"\n".join(data.draw(st.lists(LINES, max_size=4))))
        else:
            rewrite(run / "eval" / "generations.json", json.dumps(data.draw(JSON)))
        out = Path(tmp) / "report"
        with contextlib.redirect_stderr(io.StringIO()):
            rep = expect_clean("eval.report (main)", report_main.__wrapped__, [str(run), "--out", str(out)])
        if rep is None:
            assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())


# ---------------------------------------------------------------- the table

def test_zz_table_of_bad_inputs():
    """Print bad inputs tried / unclean errors per entry point (runs last; -s to see it)."""
    if not TRIED:
        pytest.skip("run with the fuzz tests of this file to get the table")
    rows = [f"{e:<48} {TRIED[e]:>6} {NOT_CLEAN[e]:>6}  {FIRST_PROBLEM.get(e, '')[:120]}" for e in sorted(TRIED)]
    table = "\n".join([f"{'entry point':<48} {'tried':>6} {'unclean':>6}", *rows,
                       f"{'total':<48} {sum(TRIED.values()):>6} {sum(NOT_CLEAN.values()):>6}"])
    print("\n" + table)
    if os.environ.get("BAD_INPUTS_TABLE"):
        Path(os.environ["BAD_INPUTS_TABLE"]).write_text(json.dumps(
            {e: {"tried": TRIED[e], "unclean": NOT_CLEAN[e], "first": FIRST_PROBLEM.get(e)} for e in TRIED}, indent=1))
    assert SURVEY or not NOT_CLEAN
