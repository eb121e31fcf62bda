"""Benchmarks, one JSON line per measurement:

    python -m scripts.bench train [...]      training step vs transformers (scripts/bench_train.py)
    python -m scripts.bench tokenize [...]   tokenisation throughput (scripts/bench_tokenize.py)
    python -m scripts.bench plasticity [...] cost of each [plasticity] switch (scripts/bench_plasticity.py)
    python -m scripts.bench generate [...]   sampling throughput and a digest of the samples (scripts/bench_generate.py)
"""
import importlib
import sys

BENCHES = {"train": "scripts.bench_train", "tokenize": "scripts.bench_tokenize",
           "plasticity": "scripts.bench_plasticity", "generate": "scripts.bench_generate"}


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHES:
        sys.exit(f"usage: python -m scripts.bench {{{','.join(BENCHES)}}} [options]")
    importlib.import_module(BENCHES[sys.argv[1]]).main(sys.argv[2:])


if __name__ == "__main__":
    main()
