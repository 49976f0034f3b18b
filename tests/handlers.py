"""Handlers that tests register through the ``handlers`` setting; workers import them by name."""

from __future__ import annotations

import os
import time
from pathlib import Path

from memsched_grpc.handlers import HandlerContext
from memsched_grpc.models import MemoryItem, MemoryType


def record(ctx: HandlerContext) -> None:
    """Appends the item id to a per-cube file: the order the worker handled the cube's items in."""
    path = Path(os.environ["TEST_MEMSCHED_RECORD_DIR"]) / f"{ctx.message.user_id}.{ctx.message.mem_cube_id}"
    with path.open("a") as f:
        f.write(ctx.message.item_id + "\n")
    ctx.log("taskStatus", MemoryType.NOT_APPLICABLE, MemoryType.NOT_APPLICABLE, f"recorded {ctx.message.content}")
    ctx.cube.save()


def slow(ctx: HandlerContext) -> None:
    """Sleeps for the number of seconds in the content, then records like ``record``."""
    time.sleep(float(ctx.message.content or "0"))
    record(ctx)


def poison(ctx: HandlerContext) -> None:
    raise RuntimeError(f"poison item {ctx.message.item_id} always fails")


def flaky(ctx: HandlerContext) -> None:
    """Fails while the file 'broken' exists in the record dir, then records like ``record``."""
    if (Path(os.environ["TEST_MEMSCHED_RECORD_DIR"]) / "broken").exists():
        raise RuntimeError("dependency is down")
    record(ctx)


def tally(ctx: HandlerContext) -> None:
    """Stores one memory per item inside the item's own transaction: metadata 'applied' counts how often the
    item was applied, 'position' the order of first application in its cube. Unlike ``record`` (a file written
    outside LMDB, which a crash can leave ahead of the transaction), this shows what the scheduler committed."""
    cube, message = ctx.cube, ctx.message
    existing = cube.get(message.item_id)
    if existing is None:
        position = cube.size(MemoryType.LONG_TERM)
        item = MemoryItem(id=message.item_id, memory=f"tally {message.item_id}", memory_type=MemoryType.LONG_TERM)
        item.metadata.update(applied=1, position=position)
    else:
        applied = int(existing.metadata["applied"]) + 1
        item = existing.model_copy(update={"metadata": {**existing.metadata, "applied": applied}})
    cube.put(item)
    cube.save()
