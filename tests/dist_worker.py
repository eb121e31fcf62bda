"""Run under torchrun by the tests: train, then write this rank's parameters.

    python -m torch.distributed.run --nproc_per_node=2 tests/dist_worker.py OUT [overrides]
With MINIMODEL_TEST_PID_DIR set, each rank first writes its pid to <dir>/rank<N>.pid, so a
test can kill exactly one rank (tests/test_kill_resume.py)."""
import os
import sys

from safetensors.torch import save_file

from data_prep.atomic import write_text
from minimodel.config import load_config
from minimodel.pretrain import run

if __name__ == "__main__":
    out = sys.argv[1]
    rank = int(os.environ.get("RANK", "0"))  # read before run(): the process group is gone after it
    pid_dir = os.environ.get("MINIMODEL_TEST_PID_DIR")
    if pid_dir:
        write_text(os.path.join(pid_dir, f"rank{rank}.pid"), str(os.getpid()))  # atomic: never read half-written
    result = run(load_config(None, sys.argv[2:]))
    save_file({k: v.contiguous() for k, v in result["model"].state_dict().items() if k != "lm_head.weight"},
              f"{out}/rank{rank}.safetensors")
