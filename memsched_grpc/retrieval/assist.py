"""MemOS's LLM steps of the query pipeline (keywords, intent, rerank), each with its deterministic fallback.

A step returns the LLM's answer only when the endpoint is configured, answers within the timeout and the answer
validates; otherwise it returns what MemOS does without an LLM (the query's own words; always retrieve, with the
query as the only evidence; relevance order). After a failure the endpoint is left alone for a cooldown, so a dead
endpoint costs one timeout per cooldown, not one per query.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from memsched_grpc.retrieval.llm import LLMClient, LLMError, json_in
from memsched_grpc.retrieval.settings import LLMConfig
from memsched_grpc.retrieval.tokenizer import keywords as fallback_keywords

log = logging.getLogger(__name__)

MAX_KEYWORDS = 20
MAX_EVIDENCES = 5
CANDIDATE_CHARS = 300

KEYWORDS_PROMPT = (
    "You extract search keywords from a user's question to a memory store. Reply with JSON only: "
    '{"keywords": ["...", ...]} with at most 20 short keywords or phrases, including useful synonyms.'
)
INTENT_PROMPT = (
    "You decide whether the memories currently in working memory already answer the user's question. Reply with "
    'JSON only: {"trigger_retrieval": true|false, "missing_evidences": ["...", ...]} where missing_evidences are '
    "short search phrases for the facts still needed (empty when nothing is missing)."
)
RERANK_PROMPT = (
    "You order candidate memories by how useful they are to answer the user's question. Reply with JSON only: "
    '{"order": [n, ...]} listing candidate numbers, most useful first.'
)


@dataclass(frozen=True)
class Intent:
    """Whether to search, and for what (MemOS's ``missing_evidences``)."""

    trigger_retrieval: bool
    evidences: list[str]


@dataclass(frozen=True)
class Keywords:
    """The query's keywords; only the LLM's (``from_llm``) add anything to the query's own words."""

    words: list[str]
    from_llm: bool


@dataclass
class StepStats:
    """How often each step used the LLM's answer or its fallback, for logs and tests."""

    used: dict[str, int] = field(default_factory=dict)
    fallback: dict[str, int] = field(default_factory=dict)


class Assistant:
    """The LLM steps over one endpoint; without ``base_url`` every step is its fallback and nothing is called."""

    def __init__(self, config: LLMConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.client = (
            LLMClient(config.base_url, config.api_key.get_secret_value(), config.timeout_seconds)
            if config.base_url
            else None
        )
        self.stats = StepStats()
        self._down_until = 0.0

    @property
    def enabled(self) -> bool:
        return self.client is not None

    def _ask(self, step: str, system: str, user: str) -> Any:
        """The JSON the endpoint answers, or None (then the caller falls back)."""
        if self.client is None or self.clock() < self._down_until:
            return None
        try:
            reply = self.client.chat(self.config.model, system, user, self.config.max_output_tokens)
            return json_in(reply)
        except LLMError as e:
            self._down_until = self.clock() + self.config.failure_cooldown_seconds
            log.warning(
                "LLM step %s failed, using its fallback for %.0fs: %s", step, self.config.failure_cooldown_seconds, e
            )
            return None

    def _count(self, step: str, used: bool) -> None:
        table = self.stats.used if used else self.stats.fallback
        table[step] = table.get(step, 0) + 1

    def keywords(self, query: str) -> Keywords:
        """Keywords of the query: the LLM's, else the query's own content words (first 20, unique)."""
        answer = self._ask("keywords", KEYWORDS_PROMPT, query) if self.config.keywords else None
        raw = answer.get("keywords") if isinstance(answer, dict) else answer
        if isinstance(raw, list):
            words = list(dict.fromkeys(w.strip() for w in raw if isinstance(w, str) and w.strip()))[:MAX_KEYWORDS]
            if words:
                self._count("keywords", True)
                return Keywords(words, from_llm=True)
        self._count("keywords", False)
        return Keywords(fallback_keywords(query, MAX_KEYWORDS), from_llm=False)

    def intent(self, query: str, working: Sequence[str]) -> Intent:
        """Whether working memory misses something; fallback: always retrieve, with the query as the evidence."""
        answer = None
        if self.config.intent and working:
            listing = "\n".join(f"- {_clip(t)}" for t in working)
            answer = self._ask("intent", INTENT_PROMPT, f"Question: {query}\n\nWorking memory:\n{listing}")
        if isinstance(answer, dict) and isinstance(answer.get("trigger_retrieval"), bool):
            missing = answer.get("missing_evidences", [])
            evidences = (
                [e.strip() for e in missing if isinstance(e, str) and e.strip()] if isinstance(missing, list) else []
            )
            self._count("intent", True)
            if not answer["trigger_retrieval"]:
                return Intent(False, [])
            return Intent(True, evidences[:MAX_EVIDENCES] or [query])
        self._count("intent", False)
        return Intent(True, [query])

    def rerank(self, query: str, candidates: Sequence[str]) -> list[int] | None:
        """A permutation of candidate positions, best first, or None when the LLM gave no usable order. Numbers
        it does not know are ignored; candidates it leaves out follow in their incoming order."""
        if len(candidates) < 2:
            return None
        listing = "\n".join(f"{n}. {_clip(t)}" for n, t in enumerate(candidates, 1))
        answer = self._ask("rerank", RERANK_PROMPT, f"Question: {query}\n\nCandidates:\n{listing}")
        raw = answer.get("order") if isinstance(answer, dict) else answer
        if isinstance(raw, list):
            picked = [
                n - 1 for n in raw if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= len(candidates)
            ]
            order = list(dict.fromkeys(picked))
            if order:
                self._count("rerank", True)
                seen = set(order)
                return order + [i for i in range(len(candidates)) if i not in seen]
        self._count("rerank", False)
        return None


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= CANDIDATE_CHARS else text[: CANDIDATE_CHARS - 1] + "…"
