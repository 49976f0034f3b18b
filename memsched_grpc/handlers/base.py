"""What a handler gets: the message, its cube (written through in the message's transaction), settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from memsched_grpc.config import SchedulerConfig
from memsched_grpc.cube import Cube
from memsched_grpc.encoded_log import EncodedLog
from memsched_grpc.models import LogEntry, MemoryItem, MemoryType, Message


@dataclass
class HandlerContext:
    message: Message
    cube: Cube
    config: SchedulerConfig
    logs: list[EncodedLog] = field(default_factory=list)

    def log(
        self,
        label: str,
        from_type: MemoryType,
        to_type: MemoryType,
        content: str,
        memories: list[MemoryItem] | None = None,
        entries: list[LogEntry] | None = None,
        memories_as: MemoryType | None = None,
    ) -> EncodedLog:
        """Record a log item; it reaches the submitting stream and every watcher once the message commits
        (``.item()`` decodes it). ``memories_as``: the partition ``memories`` are shown in, when not their own."""
        log = self.cube.log(self.message, label, from_type, to_type, content, memories, entries, memories_as)
        self.logs.append(log)
        return log


Handler = Callable[[HandlerContext], None]
