"""The native model against transformers' Qwen3/Llama, and KV-cache generation."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from minimodel.models.hf_convert import to_hf_config
from minimodel.nn.generate import filter_logits, generate
from minimodel.nn.model import MiniModel, model_config_from


@pytest.mark.parametrize("qk_norm,hf_class", [(True, "Qwen3ForCausalLM"), (False, "LlamaForCausalLM")])
@pytest.mark.parametrize("tied", [True, False])
def test_logits_match_transformers(qk_norm, hf_class, tied):
    cfg = model_config_from("tiny", qk_norm=qk_norm, tie_embeddings=tied, rope_theta=10000.0)
    torch.manual_seed(0)
    ours = MiniModel(cfg).eval()
    hf = AutoModelForCausalLM.from_config(to_hf_config(cfg)).eval()
    assert type(hf).__name__ == hf_class
    x = torch.randint(0, cfg.vocab_size, (2, 48))
    with torch.no_grad():
        before = (ours(x) - hf(x).logits).abs().max().item()
        hf.load_state_dict(ours.state_dict(), strict=True)
        diff = (ours(x) - hf(x).logits).abs().max().item()
    assert before > 1e-2, "the comparison must not pass before the weights are loaded"
    assert diff < 1e-4


def test_presets_have_their_documented_sizes():
    sizes = {name: MiniModel(model_config_from(name)).num_params() for name in ("tiny", "26m")}
    assert 1e6 <= sizes["tiny"] <= 2e6
    assert 24e6 <= sizes["26m"] <= 28e6
    with torch.device("meta"):
        big = MiniModel(model_config_from("104m"))
    assert 100e6 <= big.num_params() <= 108e6
    assert big.config.d_model == 768 and big.config.n_layers == 16 and big.config.n_kv_heads == 2


def test_qk_norm_bounds_attention_logits():
    """With huge q/k projections the logit explodes without QK-norm, and stays bounded with it."""
    logits = {}
    for qk in (True, False):
        torch.manual_seed(0)
        m = MiniModel(model_config_from("tiny", qk_norm=qk)).eval()
        with torch.no_grad():
            for a in m.attention_modules():
                a.q_proj.weight.mul_(50)
                a.k_proj.weight.mul_(50)
                a.record_max_logit = True
            m(torch.randint(0, 4096, (1, 32)))
        logits[qk] = max(a.max_logit for a in m.attention_modules())
    head_dim = 32
    assert logits[True] <= head_dim ** 0.5 + 1e-3  # |q|,|k| <= sqrt(d) after RMSNorm (unit gains)
    assert logits[False] > 10 * logits[True]


def test_kv_cache_generation_matches_full_recompute():
    torch.manual_seed(0)
    m = MiniModel(model_config_from("tiny")).eval()
    prompt = torch.randint(0, 4096, (2, 7))
    out = generate(m, prompt, max_new_tokens=12, temperature=0)
    ref = prompt
    with torch.no_grad():
        for _ in range(12):
            ref = torch.cat((ref, m(ref)[:, -1].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(out, ref)


class ConcatCache:
    """The cache generate used before preallocation: every step concatenates onto the past."""

    def __init__(self, max_len):
        self.length, self.k, self.v = 0, None, None

    def append(self, k, v):
        self.k = k if self.k is None else torch.cat((self.k, k), dim=2)
        self.v = v if self.v is None else torch.cat((self.v, v), dim=2)
        self.length = self.k.shape[2]
        return self.k, self.v


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_preallocated_cache_samples_what_concatenation_sampled(monkeypatch, dtype):
    """Same seed, same samples, bit for bit: the preallocated cache changes where keys live, not what
    attention computes (a 26m-shaped layer, batch 8, temperature 1 and nucleus sampling)."""
    import minimodel.nn.generate as gen_module

    torch.manual_seed(0)
    m = MiniModel(model_config_from("26m", n_layers=2, max_seq_len=96)).eval().to(dtype)
    prompt = torch.randint(0, 6400, (8, 9))

    def draw():
        return generate(m, prompt, 80, temperature=1.0, top_p=0.95, generator=torch.Generator().manual_seed(3))

    new = draw()
    monkeypatch.setattr(gen_module, "KVCache", ConcatCache)
    old = draw()
    assert new.shape == (8, 89) and torch.equal(new, old)
    assert len({tuple(r) for r in new[:, 9:].tolist()}) == 8  # really sampled: every row differs


def test_kv_cache_refuses_more_positions_than_allocated():
    from minimodel.nn.model import KVCache

    cache = KVCache(4)
    cache.append(torch.zeros(1, 2, 3, 8), torch.zeros(1, 2, 3, 8))
    with pytest.raises(ValueError, match="KV cache of 4 positions cannot take 5"):
        cache.append(torch.zeros(1, 2, 2, 8), torch.zeros(1, 2, 2, 8))


def test_sampling_is_seeded_and_respects_top_k():
    torch.manual_seed(0)
    m = MiniModel(model_config_from("tiny")).eval()
    prompt = torch.randint(0, 4096, (1, 5))
    a = generate(m, prompt, 10, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(1))
    b = generate(m, prompt, 10, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[True, False, False, True]]
    # probabilities ~ [0.09, 0.67, 0.24, 0.03]: top_p=0.7 keeps the two largest
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[True, False, False, True]]


def test_generation_stops_at_eos():
    torch.manual_seed(0)
    m = MiniModel(model_config_from("tiny")).eval()
    prompt = torch.randint(0, 4096, (1, 4))
    first = generate(m, prompt, 1, temperature=0)[0, -1].item()
    out = generate(m, prompt, 20, temperature=0, eos_id=first)
    assert out.shape[1] == 5 and out[0, -1].item() == first


def test_inverse_transform_sampling_follows_the_distribution_and_skips_zero_mass():
    from minimodel.nn.generate import sample

    probs = torch.tensor([[0.0, 0.7, 0.0, 0.3]]).repeat(20000, 1)
    ids = sample(probs, torch.Generator().manual_seed(0))
    counts = torch.bincount(ids, minlength=4).float() / len(ids)
    assert counts[0] == counts[2] == 0  # filtered tokens never come out
    assert abs(counts[1].item() - 0.7) < 0.015 and abs(counts[3].item() - 0.3) < 0.015
    assert torch.equal(ids, sample(probs, torch.Generator().manual_seed(0)))  # seeded
