"""Run under torchrun by the tests: train, then write this rank's parameters.

    python -m torch.distributed.run --nproc_per_node=2 tests/dist_worker.py OUT [overrides]
With MINIMODEL_TEST_PID_DIR set, each rank first writes its pid to <dir>/rank<N>.pid, so a
test can kill exactly one rank (tests/test_kill_resume.py). With MINIMODEL_TEST_FAULT=R:S, rank R's
layer-1 MLP outputs inf in its S-th training forward (tests/test_numerics.py)."""
import os
import sys

from safetensors.torch import save_file

from minimodel.common.io import write_text
from minimodel.config import load_config
from minimodel.pretrain import Pretrain
from minimodel.stages.lifecycle import run_stage


def inject_fault(at_forward: int):
    """inf out of model.layers.1.mlp from the given training forward until the next one, so the
    trainer's diagnostic re-run sees it too (as a fault caused by the batch would be)."""
    import math

    import torch

    from minimodel.nn.model import MiniModel

    state = {"n": 0, "on": False}
    original = MiniModel.__init__

    def hook(module, args, output):
        if module.training and torch.is_grad_enabled():
            state["n"] += 1
            state["on"] = state["n"] == at_forward
        return output + math.inf if state["on"] else output

    def init(model, *args, **kwargs):
        original(model, *args, **kwargs)
        model.model.layers[1].mlp.register_forward_hook(hook)

    MiniModel.__init__ = init


if __name__ == "__main__":
    out = sys.argv[1]
    rank = int(os.environ.get("RANK", "0"))  # read before run(): the process group is gone after it
    pid_dir = os.environ.get("MINIMODEL_TEST_PID_DIR")
    if pid_dir:
        write_text(os.path.join(pid_dir, f"rank{rank}.pid"), str(os.getpid()))  # atomic: never read half-written
    fault = os.environ.get("MINIMODEL_TEST_FAULT")
    if fault and int(fault.split(":")[0]) == rank:
        inject_fault(int(fault.split(":")[1]))
    result = run_stage(Pretrain(), load_config(None, sys.argv[2:]), exits_after=True)  # as the stage's CLI runs it
    save_file({k: v.contiguous() for k, v in result["model"].state_dict().items() if k != "lm_head.weight"},
              f"{out}/rank{rank}.safetensors")
