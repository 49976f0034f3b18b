"""Retrieval without a model: a tokenizer made for conversation and an incremental lexical index."""
