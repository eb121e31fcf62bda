"""Raw text -> tokenizer -> token shards + manifest (the trainer's input)."""
