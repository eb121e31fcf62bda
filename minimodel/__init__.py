"""minimodel: pretrain a small core, teach it a new language, measure what it forgot."""
import logging

__version__ = "0.1.0"

# bitsandbytes' CPU backend (peft imports it wherever it is installed) warns at import that an optional
# kernel package is missing; that kernel would come from the hub, and the built-in path it falls back to is
# the one the kit uses. Only that module's import-time warning is silenced.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
