"""The training benchmark's measurements on a real (tiny) step: throughput of both
implementations, the optimizer's share, and the memory each keeps per micro-batch."""
import torch

from minimodel.nn.model import MiniModel, model_config_from
from scripts.bench_train import bench_preset, native_loss, saved_for_backward_bytes


def test_bench_reports_both_models_and_their_memory():
    r = bench_preset("tiny", seq=64, batch=2, rounds=2, warmup=1, optim="adamw", dtype="bf16",
                     compile_=False, device=torch.device("cpu"))
    assert r["native_tok_s"] > 0 and r["hf_tok_s"] > 0 and r["ratio_vs_hf"] > 0
    assert 0 < r["optimizer_share"] < 1 and r["mfu"] > 0
    assert r["native_saved_for_backward_mib"] > 0 and r["hf_saved_for_backward_mib"] > 0
    ratio = r["native_saved_for_backward_mib"] / r["hf_saved_for_backward_mib"]
    assert r["saved_ratio_native_vs_hf"] == round(ratio, 3)


def test_saved_activations_grow_with_the_micro_batch_():
    torch.manual_seed(0)
    model = MiniModel(model_config_from("tiny", vocab_size=512, d_model=64, n_layers=2, ffn_dim=128))

    def saved(batch):
        x = torch.randint(0, 512, (batch, 32))
        return saved_for_backward_bytes(model, native_loss, x, x, torch.device("cpu"), "fp32")

    one, two, four = saved(1), saved(2), saved(4)
    per_sequence = two - one
    assert per_sequence > 0 and abs((four - two) - 2 * per_sequence) <= 0.01 * four  # linear in the batch
    assert all(p.grad is None for p in model.parameters())  # the measurement leaves no gradients behind
