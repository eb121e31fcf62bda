"""Korean continued pretraining of an English core on the CPU demo: LoRA vs full fine-tuning at the
same token budget, with and without English replay. Prints JSON (and writes OUT/results.json).

    python -m scripts.bench_cpt --out runs/bench_cpt [--steps 150] [--core-steps 300]

The base is the tiny core pretrained on data/demo_en_base (English-only tokenizer, 4096 pieces);
CPT reads data/demo_ko_ext with data/demo_en_ext as replay (that tokenizer extended with Korean
pieces: the embeddings grow, new rows from their sub-pieces). Bits per byte are measured at the
end on every held-out window of each language; English is compared with the base on its own
tokenizer (the model before any resize). Targets (issue 5): LoRA's Korean bpb within 5% of full
fine-tuning's, and English bpb with 5% replay at most +3% over the base.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

ARMS = {  # name: (lora enabled, replay ratio)
    "lora_replay5": (True, 0.05),
    "lora_replay0": (True, 0.0),
    "full_replay5": (False, 0.05),
    "full_replay0": (False, 0.0),
}


@torch.no_grad()
def full_bpb(lm, set_dir: Path, seq_len: int) -> float:
    """Bits per byte over every held-out window of a set (not the training-time sample)."""
    from minimodel.data.windows import TokenShards, token_byte_lengths

    val = TokenShards(set_dir, "val", seq_len, lm.config.vocab_size)
    tb = token_byte_lengths(set_dir / val.manifest["tokenizer"]["file"], lm.config.vocab_size)
    lm.eval()
    nll = nbytes = 0.0
    for s in range(0, val.n_windows, 16):
        x, y = val.batch(range(s, min(s + 16, val.n_windows)))
        nll += lm(x, y, reduction="sum").item()
        nbytes += tb[y].sum().item()
    return nll / math.log(2) / nbytes


def main(argv=None):
    from minimodel.config import CptConfig, load_config
    from minimodel.cpt import run as cpt
    from minimodel.models.loading import load
    from minimodel.pretrain import run as pretrain
    from minimodel.train.tracking import read_metrics

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench_cpt")
    ap.add_argument("--data", default="data")
    ap.add_argument("--core-steps", type=int, default=300)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--lora-lr", type=float, default=2e-3)
    ap.add_argument("--full-lr", type=float, default=1e-3)
    ap.add_argument("--embedding-lr-mult", type=float, default=0.2)
    ap.add_argument("--arms", default=",".join(ARMS))
    a = ap.parse_args(argv)
    out, data = Path(a.out), Path(a.data)
    torch.set_num_threads(max(torch.get_num_threads(), 1))

    core = out / "core_en"
    if not (core / "final" / "model.safetensors").is_file():
        pretrain(load_config("recipes/configs/core_tiny.toml", [
            "model.vocab_size=4096", f"data.path={data / 'demo_en_base'}", f"train.out_dir={core}",
            f"train.steps={a.core_steps}", "train.progress=false"]))
    base = load(str(core))
    results = {"machine": f"2-core CPU dev box ({platform.processor() or platform.machine()}), torch "
                          f"{torch.__version__}", "base": str(core),
               "base_en_bpb": full_bpb(base, data / "demo_en_base", a.seq_len),
               "tokens_per_arm": a.steps * a.micro_batch * a.seq_len, "arms": {}}
    for name in a.arms.split(","):
        lora, ratio = ARMS[name]
        run_dir = out / name
        overrides = [f"base.path={core}", f"data.path={data / 'demo_ko_ext'}", f"train.out_dir={run_dir}",
                     f"replay.path={data / 'demo_en_ext'}", f"replay.ratio={ratio}",
                     f"lora.enabled={str(lora).lower()}", f"lora.rank={a.rank}", "lora.alpha=32",
                     f"lora.embedding_lr_mult={a.embedding_lr_mult}",
                     f"optim.lr={a.lora_lr if lora else a.full_lr}", "optim.warmup_steps=10",
                     f"data.seq_len={a.seq_len}", f"train.steps={a.steps}", f"train.micro_batch={a.micro_batch}",
                     f"train.eval_every={max(a.steps // 3, 1)}", "train.eval_batches=4",
                     f"train.ckpt_every={a.steps}", "train.progress=false"]
        t0 = time.perf_counter()
        result = cpt(load_config("recipes/configs/cpt_tiny.toml", overrides, cls=CptConfig))
        wall = time.perf_counter() - t0
        lm = result["model"]
        logged = [m for m in read_metrics(run_dir) if "val_bpb_en" in m]
        arm = {"lora": lora, "replay": ratio, "wall_s": round(wall, 1),
               "tok_per_s": round(result["tokens"] / wall),
               "ko_bpb": full_bpb(lm, data / "demo_ko_ext", a.seq_len),
               "en_bpb": full_bpb(lm, data / "demo_en_ext", a.seq_len),
               "curve": [{k: round(m[k], 4) if isinstance(m[k], float) else m[k]
                          for k in ("step", "val_bpb_ko", "val_bpb_en") if k in m} for m in logged],
               "trainable_params": result["info"]["trainable_params"], "params": result["info"]["params"]}
        arm["en_rel_change"] = arm["en_bpb"] / results["base_en_bpb"] - 1
        results["arms"][name] = arm
        print(json.dumps({name: {k: v for k, v in arm.items() if k != "curve"}}), flush=True)
    arms = results["arms"]
    if "lora_replay5" in arms and "full_replay5" in arms:
        gap = arms["lora_replay5"]["ko_bpb"] / arms["full_replay5"]["ko_bpb"] - 1
        results["targets"] = {
            "lora_vs_full_ko_bpb_rel": gap, "lora_within_5pct_of_full": gap <= 0.05,
            "en_rel_change_lora_replay5": arms["lora_replay5"]["en_rel_change"],
            "en_within_3pct_with_replay5": arms["lora_replay5"]["en_rel_change"] <= 0.03,
        }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
