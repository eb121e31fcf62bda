"""minimodel: pretrain a small core, teach it a new language, measure what it forgot."""
__version__ = "0.1.0"
