"""A log item as it travels from a worker to the clients: its ScheduleLogForWebItem wire bytes, encoded once
in the worker, plus the few fields the server routes and filters by.

The server only forwards log items (to the submitting stream, to watchers, to the dashboard), so decoding
each one into a model and encoding it again for every response, ~14 µs a log item on the server's one GIL,
bought nothing. Whoever needs the whole item (the dashboard) decodes it.
"""

from __future__ import annotations

from typing import NamedTuple

from memsched.v1 import items_pb2
from memsched_grpc import convert
from memsched_grpc.models import LogItem


class EncodedLog(NamedTuple):
    user_id: str
    mem_cube_id: str
    label: str
    sequence: int
    data: bytes
    """A serialized ScheduleLogForWebItem."""

    @classmethod
    def of(cls, item: LogItem) -> EncodedLog:
        data = convert.log_to_proto(item).SerializeToString()
        return cls(item.user_id, item.mem_cube_id, item.label, item.sequence, data)

    @classmethod
    def from_bytes(cls, data: bytes) -> EncodedLog:
        log = items_pb2.ScheduleLogForWebItem.FromString(data)
        return cls(log.user_id, log.mem_cube_id, log.label, log.sequence, data)

    def proto(self) -> items_pb2.ScheduleLogForWebItem:
        return items_pb2.ScheduleLogForWebItem.FromString(self.data)

    def item(self) -> LogItem:
        return convert.log_from_proto(self.proto())
