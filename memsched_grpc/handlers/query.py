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
import math
import time
from collections import Counter

from memsched_grpc.handlers.base import HandlerContext
from memsched_grpc.models import LogEntry, MemoryItem, MemoryType, WebLogLabel, WorkingEntry
from memsched_grpc.retrieval.components import components
from memsched_grpc.retrieval.tokenizer import keywords, stem

log = logging.getLogger(__name__)

MIN_MEMORY_CHARS = 3


class _KeptVectors:
    """Token-count vectors of the memories kept so far, with postings, so a candidate is compared only with the
    kept memories it shares a word with (MemOS compares by TF-IDF cosine; raw counts keep the check independent
    of the rest of the cube)."""

    def __init__(self) -> None:
        self.counts: list[Counter[str]] = []
        self.norms: list[float] = []
        self.postings: dict[str, list[int]] = {}

    def most_similar(self, counts: Counter[str]) -> float:
        """The highest cosine of ``counts`` (a candidate's token counts) with a kept memory's."""
        dots: dict[int, float] = {}
        for token, n in counts.items():
            for j in self.postings.get(token, ()):
                dots[j] = dots.get(j, 0.0) + n * self.counts[j][token]
        if not dots:
            return 0.0
        norm = math.sqrt(sum(v * v for v in counts.values()))
        return max(dot / (norm * self.norms[j]) for j, dot in dots.items())

    def add(self, counts: Counter[str]) -> None:
        j = len(self.counts)
        self.counts.append(counts)
        self.norms.append(math.sqrt(sum(v * v for v in counts.values())))
        for token in counts:
            self.postings.setdefault(token, []).append(j)


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
    vectors = _KeptVectors()
    kept: list[str] = []
    for memory_id in merged:
        if len(kept) >= enough:
            break
        tokens = cube.tokens(memory_id)
        if len(" ".join(tokens)) < MIN_MEMORY_CHARS:
            continue
        counts = Counter(tokens)
        if vectors.most_similar(counts) >= config.working_dedup_threshold:
            continue
        vectors.add(counts)
        kept.append(memory_id)

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
        tokens = set(cube.tokens(memory_id))
        kw = sum(n for s, n in window_stems.items() if s in tokens) / total_window
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
            [_as_working(item)],
            [
                LogEntry(
                    content=move, ref_id=item.id, from_memory_type=item.memory_type, to_memory_type=MemoryType.WORKING
                )
            ],
        )

    # 8. activation memory
    if config.enable_activation_memory:
        _refresh_activation(ctx)
    cube.save()


def _as_working(item: MemoryItem) -> MemoryItem:
    return item.model_copy(update={"memory_type": MemoryType.WORKING})


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
        [_as_working(i) for i in items],
    )
