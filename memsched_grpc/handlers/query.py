"""``query``: the user asked something. Logs ``addMessage``, then MemOS's query pipeline with its non-LLM
fallbacks: keywords and the query window; candidate search over LongTermMemory and UserMemory; merge with
working memory; drop near duplicates and very short items; score; write back at most the working
capacity; log ``scheduleMemory`` for each newcomer; rebuild activation memory when due.

importance = w_relevance · relevance + w_keyword · keyword overlap with the window + w_usage · capped usage,
where relevance is the lexical score over the best score of this query (0..1).
"""

from __future__ import annotations

import time
from collections import Counter

from memsched_grpc.handlers.add import cosine
from memsched_grpc.handlers.base import HandlerContext
from memsched_grpc.models import LogEntry, MemoryItem, MemoryType, WebLogLabel, WorkingEntry
from memsched_grpc.retrieval.tokenizer import keywords, stem, tokenize

MIN_MEMORY_CHARS = 3


def handle(ctx: HandlerContext) -> None:
    cube, message, config = ctx.cube, ctx.message, ctx.config
    state = cube.state
    state.queries += 1
    ctx.log(WebLogLabel.ADD_MESSAGE, MemoryType.USER_INPUT, MemoryType.NOT_APPLICABLE, f"[User] {message.content}")

    # 1. keywords and the window of recent queries
    state.query_window = [*state.query_window, message.content][-config.context_window_size :]
    window_counts: Counter[str] = Counter()
    for past in state.query_window:
        window_counts.update(keywords(past))
    state.keyword_counts = dict(window_counts)
    window_stems = {stem(w): n for w, n in window_counts.items()}

    # 2-3. intent fallback: always retrieve, with the query itself as the evidence
    query_tokens = tokenize(message.content)
    relevance = cube.relevance(query_tokens)
    candidates = sorted(relevance, key=lambda m: (-relevance[m], m))[: config.top_k]

    # 4. merge with the current working memory; drop near duplicates and very short items
    previous = {w.id: w for w in state.working}
    merged = list(dict.fromkeys([*candidates, *previous]))
    best = max(relevance.values(), default=0.0) or 1.0
    total_window = sum(window_stems.values()) or 1

    def importance(memory_id: str) -> tuple[float, float, float]:
        rel = relevance.get(memory_id, 0.0) / best
        tokens = set(cube.tokens(memory_id))
        kw = sum(n for s, n in window_stems.items() if s in tokens) / total_window
        entry = cube.entries.get(memory_id)
        usage = min(entry.usage_count if entry else 0, config.usage_cap) / config.usage_cap
        w = config.weights
        return w.relevance * rel + w.keyword * kw + w.usage * usage, rel, kw

    scored = sorted(((importance(m), m) for m in merged if m in cube.entries), key=lambda s: (-s[0][0], s[1]))
    chosen: list[WorkingEntry] = []
    for (score, rel, kw), memory_id in scored:
        tokens = cube.tokens(memory_id)
        if len(" ".join(tokens)) < MIN_MEMORY_CHARS:
            continue
        if any(cosine(tokens, cube.tokens(c.id)) >= config.working_dedup_threshold for c in chosen):
            continue
        chosen.append(WorkingEntry(id=memory_id, importance=score, relevance=rel, keyword_score=kw))
        if len(chosen) >= cube.capacities.working_memory_capacity:
            break

    # 7. write back; newcomers count as a use and are logged one by one
    cube.set_working(chosen)
    for entry in chosen:
        if entry.id in previous:
            continue
        item = cube.get(entry.id)
        if item is None:
            continue
        item = item.model_copy(update={"usage_count": item.usage_count + 1})
        cube.put(item)
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
