"""The retrieval parts a worker process builds once from configuration: embedder, LLM assistant, reranker.

Loading a model takes a second and the assistant remembers when its endpoint last failed, so they are built once
per process and per configuration (the configuration is frozen, hence a usable key) and shared by every cube the
worker holds. Cubes keep only their own index.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from memsched_grpc.retrieval.assist import Assistant
from memsched_grpc.retrieval.embedders import Embedder, build_embedder
from memsched_grpc.retrieval.rerankers import Reranker, build_reranker
from memsched_grpc.retrieval.settings import RetrievalConfig


@dataclass(frozen=True)
class Components:
    embedder: Embedder | None
    assistant: Assistant
    reranker: Reranker


@functools.cache
def components(config: RetrievalConfig) -> Components:
    assistant = Assistant(config.llm)
    embedder = build_embedder(config.embedder, config.llm)
    return Components(embedder, assistant, build_reranker(config.reranker, assistant))
