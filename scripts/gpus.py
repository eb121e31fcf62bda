"""The GPUs the planner knows: peak bf16 FLOP/s, memory, an assumed MFU, a price, an all-reduce bandwidth.

Peak FLOP/s are dense bf16 tensor-core figures with fp32 accumulation from the vendor
datasheets (no sparsity; GeForce cards run fp32-accumulate at half their fp16-accumulate
rate, which is why a 4090 is 165 and not 330 TFLOP/s). `memory_gib` is what the card
reports, not the marketing GB.
"""
from __future__ import annotations

from dataclasses import dataclass

from minimodel.common.errors import UserError


@dataclass(frozen=True)
class GPU:
    name: str
    peak_bf16_flops: float
    memory_gib: float
    mfu: float                # assumed model FLOPs utilisation (see ASSUMED_MFU)
    usd_per_hour: float       # see PRICES_AS_OF
    allreduce_gbps: float     # assumed all-reduce bus bandwidth between GPUs of one node, GB/s


# Assumed MFU for a ~100M model at seq 1024 with bf16 autocast and torch.compile. These are
# assumptions, not measurements: small models leave big GPUs idler (kernel launch and
# memory-bound norms/softmax weigh more), hence lower values on H100/H200. The training
# benchmarks (scripts/bench.py, docs/benchmarks.md) calibrate them: edit this one table.
ASSUMED_MFU = {"3090": 0.40, "4090": 0.40, "a100-40gb": 0.40, "a100-80gb": 0.40, "h100": 0.35, "h200": 0.35}

# On-demand $/GPU-hour, typical community-cloud list prices. Dated: edit them, or pass
# --usd-per-gpu-hour.
PRICES_AS_OF = "2026-11"
USD_PER_GPU_HOUR = {"3090": 0.22, "4090": 0.35, "a100-40gb": 1.20, "a100-80gb": 1.50, "h100": 2.40, "h200": 3.50}

# All-reduce bus bandwidth: GeForce cards talk over PCIe without peer-to-peer (through host
# memory), data-centre cards over NVLink. Rough effective figures for a ring all-reduce.
ALLREDUCE_GBPS = {"3090": 10.0, "4090": 10.0, "a100-40gb": 200.0, "a100-80gb": 200.0, "h100": 350.0, "h200": 350.0}

_SPECS = {  # name: (peak bf16 FLOP/s, memory GiB)
    "3090": (71e12, 24.0),
    "4090": (165.2e12, 24.0),
    "a100-40gb": (312e12, 40.0),
    "a100-80gb": (312e12, 80.0),
    "h100": (989e12, 79.6),     # SXM; the PCIe card is ~756 TFLOP/s
    "h200": (989e12, 140.4),
}

GPUS: dict[str, GPU] = {
    n: GPU(n, peak, mem, ASSUMED_MFU[n], USD_PER_GPU_HOUR[n], ALLREDUCE_GBPS[n])
    for n, (peak, mem) in _SPECS.items()
}

ALIASES = {"rtx3090": "3090", "rtx4090": "4090", "a100": "a100-80gb", "a100-40": "a100-40gb",
           "a100-80": "a100-80gb", "h100-sxm": "h100", "a10040gb": "a100-40gb", "a10080gb": "a100-80gb"}


def get_gpu(name: str) -> GPU:
    key = name.strip().lower().replace(" ", "").replace("_", "-")
    key = ALIASES.get(key, ALIASES.get(key.replace("-", ""), key))
    if key not in GPUS:
        raise UserError(f"unknown GPU {name!r}; known GPUs: {', '.join(GPUS)} "
                        "(add one to scripts/gpus.py)")
    return GPUS[key]
