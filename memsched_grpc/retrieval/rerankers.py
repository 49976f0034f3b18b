"""Second-stage rerankers over the best fused candidates, chosen by ``scheduler.retrieval.reranker.kind``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from memsched_grpc.retrieval.assist import Assistant
from memsched_grpc.retrieval.settings import RerankerConfig


class Reranker(Protocol):
    """Orders candidates for a query; must return a permutation of ``range(len(candidates))``, best first."""

    def rerank(self, query: str, candidates: Sequence[str]) -> list[int]: ...


class FusedOrder:
    """MemOS's fallback: keep the relevance order the first stage produced."""

    def rerank(self, query: str, candidates: Sequence[str]) -> list[int]:
        return list(range(len(candidates)))


class LLMReranker:
    """Asks the LLM for the order; keeps the fused order when the LLM is absent, slow or answers garbage."""

    def __init__(self, assistant: Assistant) -> None:
        self.assistant = assistant

    def rerank(self, query: str, candidates: Sequence[str]) -> list[int]:
        order = self.assistant.rerank(query, candidates)
        return order if order is not None else list(range(len(candidates)))


def build_reranker(config: RerankerConfig, assistant: Assistant) -> Reranker:
    if config.kind == "llm":
        return LLMReranker(assistant)
    return FusedOrder()
