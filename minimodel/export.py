"""Export a core as a Hugging Face model directory that verifies itself.

    python -m minimodel.export RUN_DIR OUT_DIR [--checkpoint step_N]

OUT_DIR gets config.json (Qwen3 with QK-norm, Llama without), model.safetensors,
generation_config.json, tokenizer.json + tokenizer_config.json (chat template included)
+ tokenizer.model, and minimodel.json (the native ModelConfig). Before the directory
appears it is reloaded with AutoModelForCausalLM / AutoTokenizer and compared with the
native model (fp32 logits on a fixed batch, max abs diff < 1e-4) and with sentencepiece
(token ids on English and Korean text, chat template vs minimodel.tokenizers.chat.encode_chat); a
mismatch is a UserError and nothing is written.
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
