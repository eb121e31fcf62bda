"""Run under torchrun by test_pretrain: train, then write this rank's parameters."""
import os
import sys

from safetensors.torch import save_file

from minimodel.config import load_config
from minimodel.pretrain import run

if __name__ == "__main__":
    out = sys.argv[1]
    result = run(load_config(None, sys.argv[2:]))
    rank = int(os.environ.get("RANK", "0"))  # the process group is gone after run()
    save_file({k: v.contiguous() for k, v in result["model"].state_dict().items() if k != "lm_head.weight"},
              f"{out}/rank{rank}.safetensors")
