"""Export a run's model (final/ or a checkpoint) as a Hugging Face directory that verifies itself.

    python -m minimodel.export RUN_DIR OUT_DIR [--checkpoint step_N]

What the directory holds, and how it is checked before it appears: minimodel.models.export.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from minimodel.common.errors import cli_entry
from minimodel.models.export import export_run


@cli_entry
def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m minimodel.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="a run directory (runs/NAME) or its final/ directory")
    ap.add_argument("out_dir", help="where the Hugging Face directory goes (may be RUN_DIR/final)")
    ap.add_argument("--checkpoint", help="export checkpoints/step_N instead of final/")
    a = ap.parse_args(sys.argv[1:] if argv is None else argv)
    return export_run(a.run_dir, a.out_dir, a.checkpoint)


if __name__ == "__main__":
    main()
