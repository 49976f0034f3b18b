"""Domain objects as the JSON the dashboard page reads: small, flat, and only what the page shows.

Every number on the page comes from here, built from what MemScheduler already exposes (cube states,
the log feed, finish reports); the dashboard keeps no state of its own that could disagree with them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from memsched_grpc.models import LogItem, MemoryCapacities, MemorySizes, MemoryType
from memsched_grpc.scheduler import CubeSummary, CubeView

Json = dict[str, Any]
MAX_KEYWORDS = 40
"""Keywords of the query window shown, most frequent first; the rest only add noise to the page."""


def partition_sizes(sizes: MemorySizes, capacities: MemoryCapacities, activation: bool) -> list[Json]:
    """Size against capacity per partition; ActivationMemory only where it is enabled."""
    parts = [
        (MemoryType.WORKING, sizes.working_memory_size, capacities.working_memory_capacity),
        (MemoryType.LONG_TERM, sizes.long_term_memory_size, capacities.long_term_memory_capacity),
        (MemoryType.USER, sizes.user_memory_size, capacities.user_memory_capacity),
    ]
    if activation:
        parts.append(
            (MemoryType.ACTIVATION, sizes.transformed_act_memory_size, capacities.transformed_act_memory_capacity)
        )
    return [{"type": str(kind), "size": max(size, 0), "capacity": capacity} for kind, size, capacity in parts]


def cube_summary(summary: CubeSummary, counts: Mapping[str, int], capacities: MemoryCapacities) -> Json:
    state = summary.state
    return {
        "user_id": state.user_id,
        "mem_cube_id": state.mem_cube_id,
        "pending": summary.pending,
        "completed": counts.get("completed", 0),
        "failed": counts.get("failed", 0),
        "working": len(state.working),
        "working_capacity": capacities.working_memory_capacity,
        "long_term": state.long_term_size,
        "user": state.user_size,
    }


def cube_view(view: CubeView, activation: bool, pending: int) -> Json:
    """The one-cube panel: partitions, working memory with scores and usage, query window and keywords."""
    state = view.state
    working = []
    for partition in view.partitions:
        if partition.memory_type != MemoryType.WORKING:
            continue
        for rank, (item, entry) in enumerate(partition.items, 1):
            working.append(
                {
                    "rank": rank,
                    "id": item.id,
                    "key": item.key,
                    "memory": item.memory,
                    "source": str(item.memory_type),
                    "tags": item.tags,
                    "importance": entry.importance if entry else 0.0,
                    "relevance": entry.relevance if entry else 0.0,
                    "keyword_score": entry.keyword_score if entry else 0.0,
                    "usage_count": item.usage_count,
                }
            )
    keywords = sorted(state.keyword_counts.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_KEYWORDS]
    return {
        "user_id": state.user_id,
        "mem_cube_id": state.mem_cube_id,
        "memcube_name": state.memcube_name,
        "pending": pending,
        "queries": state.queries,
        "answers": state.answers,
        "archived": state.archived_size,
        "partitions": partition_sizes(view.sizes, view.capacities, activation),
        "working": working,
        "query_window": state.query_window,
        "keywords": [[word, count] for word, count in keywords],
        "activation_text": state.activation_text if activation else "",
    }


def log_item(log: LogItem, cause_label: str) -> Json:
    """A ScheduleLogForWebItem as a feed row; sizes and capacities ride along for the fill-over-time graph."""
    sizes, caps = log.current_memory_sizes, log.memory_capacities
    return {
        "id": log.item_id,
        "seq": log.sequence,
        "user_id": log.user_id,
        "mem_cube_id": log.mem_cube_id,
        "label": log.label,
        "from": str(log.from_memory_type),
        "to": str(log.to_memory_type),
        "content": log.log_content,
        "t": log.timestamp.timestamp(),
        "task_id": log.task_id,
        "status": str(log.status),
        "source": log.source_item_id,
        "cause": cause_label,
        "fill": {p["type"]: [p["size"], p["capacity"]] for p in partition_sizes(sizes, caps, activation=True)},
    }
