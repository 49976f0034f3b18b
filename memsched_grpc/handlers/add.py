"""``add``: new memories arrive. Content is plain text (one memory) or a JSON list of chat messages
({role, content}, optionally id, metadata, memory_type), one memory each.

Exact duplicates (same text but for case and spacing) and near duplicates (token cosine at or above
``dedup_threshold``) update the existing memory and log ``updateMemory``; new ones log ``addMemory``.
As in MemOS, a new memory also enters working memory at the front (the oldest entries fall off past
the working capacity); the next query re-ranks it. When a partition passes its capacity, the memory of
least value is archived (``archiveMemory``): fewest
uses first, then least recently updated; memories in working memory are never archived.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

from memsched_grpc.errors import PermanentError
from memsched_grpc.handlers.base import HandlerContext
from memsched_grpc.models import MemoryItem, MemoryType, Message, WebLogLabel, WorkingEntry, utcnow
from memsched_grpc.retrieval.tokenizer import keywords, tokenize

KEY_WORDS = 8
MAX_MERGED = 20
NEAR_DUPLICATE_MIN_TOKENS = 4


class InvalidContent(PermanentError):
    """The add message's content is not usable memory; the message fails with this reason."""


@dataclass
class NewMemory:
    text: str
    memory_type: MemoryType
    memory_id: str
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    key: str = ""


def _memory_type(value: Any, default: MemoryType) -> MemoryType:
    if value in (None, ""):
        return default
    try:
        memory_type = MemoryType(value)
    except ValueError as e:
        raise InvalidContent(f"memory_type {value!r} is not LongTermMemory or UserMemory") from e
    if memory_type not in (MemoryType.LONG_TERM, MemoryType.USER):
        raise InvalidContent(f"memory_type {value!r} is not LongTermMemory or UserMemory")
    return memory_type


def parse(message: Message) -> list[NewMemory]:
    """The memories an add message carries; ids are derived from the item id so a redelivery repeats them."""
    content = message.content.strip()
    info = message.info
    default_type = _memory_type(info.get("memory_type"), MemoryType.LONG_TERM)
    raw_metadata = info.get("metadata")
    base_metadata: dict[str, Any] = raw_metadata if isinstance(raw_metadata, dict) else {}
    if content.startswith("["):
        try:
            chat = json.loads(content)
        except json.JSONDecodeError:
            chat = None
        if isinstance(chat, list):
            return [_from_chat(message, i, entry, default_type, base_metadata) for i, entry in enumerate(chat)]
    if not content:
        raise InvalidContent("content is empty: an add message needs text or a JSON list of chat messages")
    return [NewMemory(content, default_type, f"{message.item_id}-0", metadata=dict(base_metadata))]


def _from_chat(message: Message, i: int, entry: Any, default_type: MemoryType, base: dict[str, Any]) -> NewMemory:
    if not isinstance(entry, dict) or not isinstance(entry.get("content"), str) or not entry["content"].strip():
        raise InvalidContent(f"content[{i}] must be an object with a non-empty string 'content'")
    role = entry.get("role", "")
    metadata = {**base, **(entry.get("metadata") or {})}
    if role:
        metadata.setdefault("role", role)
    memory_type = _memory_type(entry.get("memory_type"), MemoryType.USER if role == "user" else default_type)
    memory_id = str(entry.get("id") or f"{message.item_id}-{i}")
    tags = [str(t) for t in entry.get("tags", [])] if isinstance(entry.get("tags"), list) else []
    return NewMemory(entry["content"].strip(), memory_type, memory_id, tags, metadata, str(entry.get("key", "")))


def _near_duplicate_of(counts: Counter[str], squares: int, other: tuple[str, ...], threshold: float) -> float:
    """The cosine of token counts between ``other`` and the new memory (its ``counts`` and their sum of squares) if
    it can reach ``threshold``, else 0. Most candidates share a rare word and little else: their dot product, summed
    over their own tokens, is checked first against a bound (a count vector's sum of squares is at least its token
    count), which skips building a Counter for each of them. The bound leaves a little room for rounding, so it
    never skips a memory whose cosine is at the threshold."""
    dot = sum(map(counts.get, other, repeat(0)))
    if not dot or dot * dot < threshold * threshold * squares * len(other) * (1 - 1e-9):
        return 0.0
    return dot / math.sqrt(squares * sum(v * v for v in Counter(other).values()))


def handle(ctx: HandlerContext) -> None:
    cube, message = ctx.cube, ctx.message
    now = utcnow()
    for new in parse(message):
        tokens = tokenize(new.text)
        existing_id = cube.find_exact(new.text) or _near_duplicate(ctx, tokens)
        existing = cube.get(existing_id) if existing_id else None
        if existing is not None:
            merged = existing.model_copy(
                update={
                    "memory": new.text if len(new.text) > len(existing.memory) else existing.memory,
                    "updated_at": now,
                    "tags": list(dict.fromkeys([*existing.tags, *new.tags])),
                    "metadata": _merge_metadata(existing.metadata, new.metadata),
                }
            )
            cube.put(merged)
            ctx.log(
                WebLogLabel.UPDATE_MEMORY,
                merged.memory_type,
                merged.memory_type,
                f"[{merged.memory_type}] {merged.key}: {merged.memory}",
                [merged],
            )
            continue
        item = MemoryItem(
            id=new.memory_id,
            memory=new.text,
            memory_type=new.memory_type,
            key=new.key or " ".join(new.text.split()[:KEY_WORDS]),
            tags=new.tags or keywords(new.text, 5),
            source_item_id=message.item_id,
            created_at=now,
            updated_at=now,
            metadata=new.metadata,
            sequence=cube.next_sequence,  # numbered here, so put() need not copy the item
        )
        if cube.get(item.id) is not None:
            raise InvalidContent(f"memory id {item.id!r} already exists with other text")
        item = cube.put(item, tokens)
        working = [WorkingEntry(id=item.id), *cube.state.working]
        cube.set_working(working[: cube.capacities.working_memory_capacity])
        ctx.log(
            WebLogLabel.ADD_MEMORY,
            MemoryType.USER_INPUT,
            item.memory_type,
            f"[{item.memory_type}] {item.key}: {item.memory}",
            [item],
        )
        _enforce_capacity(ctx, item.memory_type)
    cube.save()


def _near_duplicate(ctx: HandlerContext, tokens: list[str]) -> str | None:
    if len(tokens) < NEAR_DUPLICATE_MIN_TOKENS:
        return None
    # A memory at cosine >= threshold shares nearly every term of the new one, so it holds at least one of
    # the new one's rarest terms unless it differs in all of them: candidates come from those terms only.
    threshold = ctx.config.dedup_threshold
    counts = Counter(tokens)
    squares = sum(v * v for v in counts.values())
    best, best_id = threshold, None
    for memory_id in ctx.cube.terms.sharing_rarest(tokens):
        similarity = _near_duplicate_of(counts, squares, ctx.cube.tokens(memory_id), threshold)
        if similarity >= best:
            best, best_id = similarity, memory_id
    return best_id


def _merge_metadata(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Keep the first occurrence's metadata; later occurrences are listed under 'merged' (bounded)."""
    if not new or new == old:
        return old
    merged = list(old.get("merged", []))[-(MAX_MERGED - 1) :]
    return {**old, "merged": [*merged, new]}


def _enforce_capacity(ctx: HandlerContext, memory_type: MemoryType) -> None:
    cube = ctx.cube
    working = {w.id for w in cube.state.working}
    while cube.size(memory_type) > cube.capacity(memory_type):
        victims = [
            (e.usage_count, e.updated_at, memory_id)
            for memory_id, e in cube.entries.items()
            if e.memory_type == memory_type and memory_id not in working
        ]
        if not victims:
            return
        item = cube.archive(min(victims)[2])
        if item is None:
            return
        ctx.log(
            WebLogLabel.ARCHIVE_MEMORY,
            memory_type,
            MemoryType.NOT_APPLICABLE,
            f"[{memory_type}→Archive] {item.key}: {item.memory}",
            [item],
        )
