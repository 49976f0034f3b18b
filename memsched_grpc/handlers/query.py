"""``query``: the user asked something. Logs ``addMessage``, then MemOS's query pipeline, each LLM step with its
deterministic fallback (retrieval/assist.py):

1. keywords of the query (LLM, else its content words) and the window of recent queries;
2. intent: does working memory already answer it, and what evidence is missing (LLM, else: retrieve, with the
   query as the evidence);
3. search LongTermMemory and UserMemory for each evidence with the cube's retriever (lexical and conversational
   signals fused, optionally a dense embedder: retrieval/retriever.py), k = max(1, top_k // evidences) each;
4. merge with working memory; drop near duplicates and very short items;
5. rerank the best candidates (reranker.kind; fallback: relevance order);
6. score importance = w_relevance · rank score + w_keyword · keyword overlap with the window + w_usage · capped
   usage, where the rank score is the memory's place in relevance order (the best 1, evenly down to 1/n over
   the n kept memories the query found relevant, 0 for the others);
7. write back at most the working capacity; log ``scheduleMemory`` for each newcomer;
8. rebuild activation memory when due.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from memsched_grpc.handlers.base import HandlerContext
from memsched_grpc.models import LogEntry, MemoryType, WebLogLabel, WorkingEntry
from memsched_grpc.retrieval.components import components
from memsched_grpc.retrieval.tokenizer import keywords, stem

log = logging.getLogger(__name__)

MIN_MEMORY_CHARS = 3


BLOCK_SLACK = 8
"""Candidates compared in a block beyond those still needed, so that a few near duplicates cost no second block."""


def _distinct(
    candidates: list[str], tokens_of: Callable[[str], tuple[str, ...]], threshold: float, enough: int
) -> list[str]:
    """The first ``enough`` of ``candidates`` (best first) that are not too short and not a near duplicate of one
    kept before them: a cosine of token counts of at least ``threshold`` (MemOS compares by TF-IDF cosine; raw
    counts keep the check independent of the rest of the cube).

    A block of candidates is compared all pairs at once (``_cosines``); only the few candidates with a similar
    earlier one need the sequential check against what was kept. A query keeps ~40 of its candidates: pair by pair
    in Python that cost ~1 ms."""
    kept: list[str] = []
    kept_tokens: list[tuple[str, ...]] = []
    position = 0
    while len(kept) < enough and position < len(candidates):
        block = candidates[position : position + enough - len(kept) + BLOCK_SLACK]
        position += len(block)
        tokens = kept_tokens + [tokens_of(m) for m in block]
        similar = _cosines(tokens) >= threshold
        similar &= np.tri(len(tokens), k=-1, dtype=np.bool_)  # only earlier ones count
        suspects = set(np.flatnonzero(similar.any(axis=1)).tolist())
        kept_rows = list(range(len(kept)))
        for row, memory_id in enumerate(block, start=len(kept_tokens)):
            if len(kept) >= enough:
                break
            if len(" ".join(tokens[row])) < MIN_MEMORY_CHARS:
                continue
            if row in suspects and similar[row, kept_rows].any():
                continue
            kept.append(memory_id)
            kept_rows.append(row)
        kept_tokens = [tokens[r] for r in kept_rows]
    return kept


def _cosines(tokens: list[tuple[str, ...]]) -> npt.NDArray[np.float64]:
    """The cosine of every pair of token-count vectors, from one product of their count matrix. The counts are small
    integers, so dot products and squared norms are exact and each cosine is the one a pairwise loop computes
    (NaN for a memory without tokens)."""
    flat = [t for held in tokens for t in held]
    columns = {t: i for i, t in enumerate(dict.fromkeys(flat))}
    cols = np.fromiter(map(columns.__getitem__, flat), dtype=np.int64, count=len(flat))
    width = max(len(columns), 1)
    rows = np.repeat(np.arange(len(tokens), dtype=np.int64), [len(held) for held in tokens])
    counts = np.bincount(rows * width + cols, minlength=len(tokens) * width).reshape(len(tokens), width)
    dots = counts.astype(np.float64) @ counts.T.astype(np.float64)
    norms = np.sqrt(np.diagonal(dots))
    with np.errstate(divide="ignore", invalid="ignore"):
        cosines: npt.NDArray[np.float64] = dots / (norms[:, None] * norms[None, :])
    return cosines


def handle(ctx: HandlerContext) -> None:
    cube, message, config = ctx.cube, ctx.message, ctx.config
    retrieval = config.retrieval
    parts = components(retrieval)
    assistant = parts.assistant
    state = cube.state
    state.queries += 1
    query = message.content
    ctx.log(WebLogLabel.ADD_MESSAGE, MemoryType.USER_INPUT, MemoryType.NOT_APPLICABLE, f"[User] {query}")

    # 1. keywords and the window of recent queries
    query_keywords = assistant.keywords(query)
    state.query_window = [*state.query_window, query][-config.context_window_size :]
    window_counts: Counter[str] = Counter(query_keywords.words)
    for past in state.query_window[:-1]:
        window_counts.update(keywords(past))
    state.keyword_counts = dict(window_counts)
    window_stems: Counter[str] = Counter()
    for word, n in window_counts.items():
        for part in word.lower().split():
            window_stems[stem(part)] += n
    expansion = query_keywords.words if query_keywords.from_llm else []

    # 2-3. intent, then one search per evidence
    retriever = cube.retriever(retrieval)
    previous = {w.id: w for w in state.working}
    working_texts: list[str] = []
    if assistant.enabled and retrieval.llm.intent:
        working_texts = [item.memory for item in (cube.get(w) for w in previous) if item is not None]
    intent = assistant.intent(query, working_texts)
    evidences = intent.evidences or [query]
    pool = max(config.top_k, retrieval.candidate_pool)
    ranking = retriever.evidence_rank(evidences, max(1, pool // len(evidences)), expansion)
    relevance = ranking.score_map()
    candidates = [memory_id for memory_id, _ in ranking.top(pool)] if intent.trigger_retrieval else []

    # 4. merge with the current working memory; drop near duplicates and very short items. Importance can lift
    # a memory only a little above its relevance rank, so twice the capacity is enough to keep.
    capacity = cube.capacities.working_memory_capacity
    merged = [m for m in dict.fromkeys([*candidates, *previous]) if m in cube.entries]
    merged.sort(key=lambda m: -relevance.get(m, 0.0))
    enough = max(2 * capacity, retrieval.reranker.top_n if retrieval.reranker.kind != "none" else 0)
    kept = _distinct(merged, cube.tokens, config.working_dedup_threshold, enough)

    # 5. rerank the head; the reordered memories take the head's relevance values in their new order
    head = kept[: retrieval.reranker.top_n]
    if len(head) > 1 and retrieval.reranker.kind != "none":
        texts = [item.memory if item else "" for item in (cube.get(m) for m in head)]
        order = parts.reranker.rerank(query, texts)
        if sorted(order) == list(range(len(head))):
            values = sorted((relevance.get(m, 0.0) for m in head), reverse=True)
            head = [head[i] for i in order]
            relevance.update(zip(head, values, strict=True))
            kept = head + kept[len(head) :]

    # 6. importance. Relevance enters as a rank score, the memory's place in relevance order (MemOS's non-LLM
    # fallback is relevance order; importance weighs the rank), not as the fused score itself: fused scores fall
    # steeply past the first few memories, so near the capacity cut-off neighbours differ by far less than the
    # keyword and usage terms can add, and those terms reshuffled the retriever's order there (LoCoMo dev: 4
    # evidence turns of the ranking's top 20 pushed out, none with the rank score). Keyword and usage still
    # break near-ties: each place is worth w_relevance / n.
    ranked = [m for m in kept if relevance.get(m, 0.0) > 0]
    rank_score = {m: (len(ranked) - i) / len(ranked) for i, m in enumerate(ranked)}
    total_window = sum(window_stems.values()) or 1
    weights = config.weights

    def importance(memory_id: str) -> WorkingEntry:
        rel = rank_score.get(memory_id, 0.0)
        kw = sum(window_stems.get(s, 0) for s in set(cube.tokens(memory_id))) / total_window
        entry = cube.entries[memory_id]
        usage = min(entry.usage_count, config.usage_cap) / config.usage_cap
        score = weights.relevance * rel + weights.keyword * kw + weights.usage * usage
        return WorkingEntry(id=memory_id, importance=score, relevance=rel, keyword_score=kw)

    scored = sorted((importance(m) for m in kept), key=lambda w: -w.importance)
    chosen = scored[:capacity]

    # 7. write back; newcomers count as a use and are logged one by one
    cube.set_working(chosen)
    for entry in chosen:
        if entry.id in previous:
            continue
        item = cube.record_use(entry.id)
        if item is None:
            continue
        move = f"[{item.memory_type}→WorkingMemory] {item.key}: {item.memory}"
        ctx.log(
            WebLogLabel.SCHEDULE_MEMORY,
            item.memory_type,
            MemoryType.WORKING,
            move,
            [item],
            [
                LogEntry(
                    content=move, ref_id=item.id, from_memory_type=item.memory_type, to_memory_type=MemoryType.WORKING
                )
            ],
            memories_as=MemoryType.WORKING,
        )

    # 8. activation memory
    if config.enable_activation_memory:
        _refresh_activation(ctx)
    cube.save()


def _refresh_activation(ctx: HandlerContext) -> None:
    """Rebuild the activation text from the top working memories, at most every interval and only on change."""
    cube, config = ctx.cube, ctx.config
    state = cube.state
    now = time.time()
    if state.activation_built_at and now - state.activation_built_at < config.act_mem_update_interval:
        return
    top = [cube.get(w.id) for w in state.working[: config.activation_top_n]]
    items = [i for i in top if i is not None]
    text = "\n".join(f"{n}. {item.memory}" for n, item in enumerate(items, 1))
    if text == state.activation_text:
        return
    state.activation_text = text
    state.activation_size = len(items)
    state.activation_built_at = now
    ctx.log(
        WebLogLabel.SCHEDULE_MEMORY,
        MemoryType.TEXT,
        MemoryType.ACTIVATION,
        f"[TextMemory→ActivationMemory] {len(items)} memories assembled",
        items,
        memories_as=MemoryType.WORKING,
    )
