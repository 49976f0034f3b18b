"""The soak test's handler: stores one memory per item, counting how often the item was applied.

It writes through the cube in the message's transaction, so a count above one means the scheduler
really applied an item twice (not merely that a worker died between a side effect and its commit)."""

from __future__ import annotations

from memsched_grpc.handlers import HandlerContext
from memsched_grpc.models import MemoryItem, MemoryType


def apply_once(ctx: HandlerContext) -> None:
    cube, message = ctx.cube, ctx.message
    existing = cube.get(message.item_id)
    if existing is None:
        item = MemoryItem(id=message.item_id, memory=message.content, memory_type=MemoryType.LONG_TERM)
        item.metadata["applied"] = 1
    else:
        item = existing.model_copy(update={"metadata": {"applied": int(existing.metadata.get("applied", 0)) + 1}})
    cube.put(item)
    cube.save()
