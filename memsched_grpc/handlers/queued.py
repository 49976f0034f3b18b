"""The queued labels of later MemOS versions. Their MemOS handlers need an LLM and MemOS's graph store;
memsched accepts them, keeps them durably, processes them in cube order and reports their status, and
logs what it received so a UI shows them. A deployment that needs more registers its own handler for the
label (see handlers/__init__.py)."""

from __future__ import annotations

from memsched_grpc.handlers.base import Handler, HandlerContext
from memsched_grpc.models import MemoryType, WebLogLabel

QUEUED_LABELS = (
    "mem_update",
    "mem_read",
    "mem_organize",
    "mem_archive",
    "mem_feedback",
    "pref_add",
    "mem_dream",
    "api_mix_search",
)


def _record(ctx: HandlerContext) -> None:
    ctx.log(
        WebLogLabel.TASK_STATUS,
        MemoryType.NOT_APPLICABLE,
        MemoryType.NOT_APPLICABLE,
        f"[{ctx.message.label}] received: {ctx.message.content[:200]}",
    )
    ctx.cube.save()


HANDLERS: dict[str, Handler] = {label: _record for label in QUEUED_LABELS}
