"""The CUDA paths (`pytest -m gpu`; scripts/gpu_check.py runs them first): a bf16 training step with
and without torch.compile, resume on the GPU, the all-masked SFT batch, KV-cache generation, the
export round trip from GPU weights.

Without CUDA they skip; MINIMODEL_TEST_DEVICE=cpu runs them on the CPU instead (the GPU check's CPU
dry run does, so the tests cannot rot between GPU sessions).
"""
import os

# cuBLAS is deterministic only with a fixed workspace, set before CUDA starts (for the resume test).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import tiny_overrides  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from minimodel.nn.model import MiniModel, model_config_from  # noqa: E402

DEVICE = os.environ.get("MINIMODEL_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not DEVICE, reason="needs CUDA (MINIMODEL_TEST_DEVICE=cpu runs these paths on the CPU)")]
VOCAB = 512


def tiny_model(seed: int = 0) -> MiniModel:
    torch.manual_seed(seed)
    cfg = model_config_from("tiny", vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                            ffn_dim=128, max_seq_len=128)
    return MiniModel(cfg).to(DEVICE)


@pytest.fixture(scope="module")
def fixture_set(tmp_path_factory):
    """A prepared set with a byte-level BPE tokenizer (tokenizer.json: no protobuf needed)."""
    from scripts.gpu_data import fixture_set as build

    return build(tmp_path_factory.mktemp("gpu_set") / "set", vocab_size=VOCAB, n_docs=40)


def train_steps(model, steps: int, compiled: bool) -> list[float]:
    from minimodel.config import OptimConfig
    from minimodel.train.optim import build_optimizers

    opts = build_optimizers(model, OptimConfig(name="muon", lr=0.01, adam_lr=0.01))
    net = torch.compile(model, dynamic=False) if compiled else model
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, VOCAB, (4, 64), generator=g).to(DEVICE)
    losses = []
    for _ in range(steps):
        with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16):
            loss = net(x, x.roll(-1, dims=1))
        loss.backward()
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_bf16_step_learns(compiled):
    if compiled and DEVICE == "cpu":
        pytest.skip("torch.compile's cold start takes about a minute on a small CPU; the GPU run compiles")
    losses = train_steps(tiny_model(), 8, compiled)
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < losses[0] - 0.5, losses  # a repeated batch is learned fast
    if compiled:  # the compiled step computes what the eager one does (bf16 tolerance)
        eager = train_steps(tiny_model(), 1, False)
        assert abs(losses[0] - eager[0]) < 0.02 * eager[0], (losses[0], eager[0])


def max_weight_diff(a_dir, b_dir) -> float:
    a, b = load_file(a_dir / "model.safetensors"), load_file(b_dir / "model.safetensors")
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_resume_matches_a_straight_run(fixture_set, tmp_path):
    """Stopped at step 2 and resumed, the weights at step 4 equal a straight run's as exactly as two
    straight runs equal each other: bitwise where the kernels are deterministic."""
    from minimodel.config import load_config
    from minimodel.pretrain import run

    # Muon on the GPU (the recipe's optimizer); AdamW on the CPU, where a Muon step costs 0.4 s
    # (tests/test_pretrain.py covers Muon's resume there)
    optim = {"optim.name": "muon", "optim.lr": 0.01} if DEVICE == "cuda" else {"optim.name": "adamw", "optim.lr": 3e-3}
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        extra = {**optim, "train.device": DEVICE, "train.steps": 6, "train.ckpt_every": 2, "train.eval_every": 100,
                 "train.eval_batches": 1, "train.attn_logit_every": 0, "model.vocab_size": VOCAB}
        for name, stops in (("straight", [4]), ("again", [4]), ("resumed", [2, 4])):
            for stop in stops:  # stop_at_step: checkpoint and exit there, before the final export
                run(load_config(None, tiny_overrides(fixture_set, tmp_path / name, **extra,
                                                     **{"train.stop_at_step": stop})))
    finally:
        torch.use_deterministic_algorithms(False)
    step = lambda name: tmp_path / name / "checkpoints" / "step_4"  # noqa: E731
    noise = max_weight_diff(step("straight"), step("again"))
    assert max_weight_diff(step("straight"), step("resumed")) <= noise


def test_all_masked_batch_gives_zero_loss_and_gradient():
    """An SFT window whose targets are all masked (a prompt longer than seq_len) is 0, not NaN."""
    model = tiny_model()
    x = torch.randint(0, VOCAB, (2, 32), device=DEVICE)
    y = torch.full_like(x, -100)
    with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16):
        loss = model(x, y)
    loss.backward()
    assert loss.item() == 0.0
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_kv_cache_generation_equals_recomputing():
    from minimodel.nn.generate import generate

    model = tiny_model().eval()
    prompt = torch.randint(0, VOCAB, (2, 7), device=DEVICE)
    out = generate(model, prompt, max_new_tokens=12, temperature=0)
    ref = prompt
    with torch.no_grad():
        for _ in range(12):
            ref = torch.cat((ref, model(ref)[:, -1].argmax(-1, keepdim=True)), dim=1)
    assert out.device == prompt.device and torch.equal(out, ref)


def test_export_round_trip_from_device_weights(fixture_set, tmp_path):
    """Weights trained on the device export to a Hugging Face directory that transformers reloads with
    the same logits (export_model checks < 1e-4 in fp32) and the same tensors, bit for bit."""
    from minimodel.models.export import export_model
    from minimodel.models.loading import load

    model = tiny_model()
    train_steps(model, 2, False)
    out, report = export_model(model, fixture_set / "tokenizer.json", tmp_path / "hf")
    assert report["max_abs_logit_diff"] < 1e-4
    assert next(model.parameters()).device.type == torch.device(DEVICE).type  # the live model stays put
    saved = load_file(out / "model.safetensors")
    live = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    assert all(torch.equal(saved[k], live[k]) for k in saved)
    back = load(out)
    x = torch.randint(0, VOCAB, (2, 32))
    with torch.no_grad():
        assert torch.allclose(back.logits(x), model.float()(x.to(DEVICE)).cpu(), atol=1e-3)
