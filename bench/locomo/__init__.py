"""LoCoMo retrieval benchmark: evidence recall of working memory after each question, over the real service."""
