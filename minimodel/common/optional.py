"""Optional packages (pyproject extras): the module, or one line naming the setting, the extra and the way out."""
from __future__ import annotations

from minimodel.common.errors import UserError, error_gist

QUANT_EXTRA = "pip install 'minimodel[quant]'"


def import_bitsandbytes(setting: str, instead: str):
    """bitsandbytes (the `quant` extra), or a UserError naming `setting` and what to set `instead`."""
    try:
        import bitsandbytes
    except (ImportError, RuntimeError, OSError) as e:  # missing, or a build that finds no native library
        raise UserError(f"{setting} needs bitsandbytes, which does not import here ({error_gist(e)}); "
                        f"{QUANT_EXTRA}, or set {instead}") from None
    return bitsandbytes
