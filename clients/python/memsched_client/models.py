"""pydantic models of the memsched.v1 messages, shaped like MemOS's own types, with protobuf conversion.

MemOS code passes ``ScheduleMessageItem`` objects and reads ``ScheduleLogForWebItem`` dictionaries; these
models keep MemOS's field names and string conventions ("LongTermMemory", "completed") so that code keeps
working, while ``to_proto`` / ``from_proto`` speak the wire contract.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any, Literal, cast

from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel, ConfigDict, Field

from memsched.v1 import items_pb2, scheduler_pb2


def _now() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return str(uuid.uuid4())


class MemoryType(enum.StrEnum):
    """MemOS's memory type strings."""

    UNSPECIFIED = ""
    WORKING = "WorkingMemory"
    LONG_TERM = "LongTermMemory"
    USER = "UserMemory"
    TEXT = "TextMemory"
    ACTIVATION = "ActivationMemory"
    PARAMETER = "ParameterMemory"
    USER_INPUT = "UserInput"
    NOT_APPLICABLE = "NotApplicable"

    def to_proto(self) -> items_pb2.MemoryType.ValueType:
        return _MEMORY_TYPE_TO_PROTO[self]

    @classmethod
    def from_proto(cls, value: int) -> MemoryType:
        return _MEMORY_TYPE_FROM_PROTO.get(value, cls.UNSPECIFIED)

    @classmethod
    def parse(cls, text: str) -> MemoryType:
        """Accept MemOS's names ("WorkingMemory") and short ones ("working", "long_term", "ltm")."""
        key = text.strip().lower().replace("-", "").replace("_", "")
        for member in cls:
            if member is not cls.UNSPECIFIED and key in (member.value.lower(), member.name.lower().replace("_", "")):
                return member
        aliases = {"wm": cls.WORKING, "ltm": cls.LONG_TERM, "um": cls.USER, "act": cls.ACTIVATION}
        if key in aliases:
            return aliases[key]
        raise ValueError(f"unknown memory type {text!r}")


_MEMORY_TYPE_TO_PROTO: dict[MemoryType, items_pb2.MemoryType.ValueType] = {
    MemoryType.UNSPECIFIED: items_pb2.MEMORY_TYPE_UNSPECIFIED,
    MemoryType.WORKING: items_pb2.MEMORY_TYPE_WORKING_MEMORY,
    MemoryType.LONG_TERM: items_pb2.MEMORY_TYPE_LONG_TERM_MEMORY,
    MemoryType.USER: items_pb2.MEMORY_TYPE_USER_MEMORY,
    MemoryType.TEXT: items_pb2.MEMORY_TYPE_TEXT_MEMORY,
    MemoryType.ACTIVATION: items_pb2.MEMORY_TYPE_ACTIVATION_MEMORY,
    MemoryType.PARAMETER: items_pb2.MEMORY_TYPE_PARAMETER_MEMORY,
    MemoryType.USER_INPUT: items_pb2.MEMORY_TYPE_USER_INPUT,
    MemoryType.NOT_APPLICABLE: items_pb2.MEMORY_TYPE_NOT_APPLICABLE,
}
_MEMORY_TYPE_FROM_PROTO: dict[int, MemoryType] = {int(v): k for k, v in _MEMORY_TYPE_TO_PROTO.items()}


class TaskStatus(enum.StrEnum):
    """Where an item or task stands, in MemOS's lower-case spelling."""

    UNSPECIFIED = ""
    WAITING = "waiting"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"

    def to_proto(self) -> items_pb2.TaskStatus.ValueType:
        return _STATUS_TO_PROTO[self]

    @classmethod
    def from_proto(cls, value: int) -> TaskStatus:
        return _STATUS_FROM_PROTO.get(value, cls.UNSPECIFIED)


_STATUS_TO_PROTO: dict[TaskStatus, items_pb2.TaskStatus.ValueType] = {
    TaskStatus.UNSPECIFIED: items_pb2.TASK_STATUS_UNSPECIFIED,
    TaskStatus.WAITING: items_pb2.TASK_STATUS_WAITING,
    TaskStatus.IN_PROGRESS: items_pb2.TASK_STATUS_IN_PROGRESS,
    TaskStatus.COMPLETED: items_pb2.TASK_STATUS_COMPLETED,
    TaskStatus.FAILED: items_pb2.TASK_STATUS_FAILED,
}
_STATUS_FROM_PROTO: dict[int, TaskStatus] = {int(v): k for k, v in _STATUS_TO_PROTO.items()}


class RejectionCode(enum.IntEnum):
    """Why the server refused an item; the values are google.rpc.Code numbers."""

    UNSPECIFIED = 0
    INVALID_ARGUMENT = 3
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    UNAVAILABLE = 14


def _timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value if value.tzinfo else value.replace(tzinfo=UTC))
    return ts


def _datetime(message: Any, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    return cast(datetime, getattr(message, field).ToDatetime(tzinfo=UTC))


def _struct(value: dict[str, Any]) -> Struct | None:
    if not value:
        return None
    out = Struct()
    out.update(value)
    return out


def _dict(message: Any, field: str) -> dict[str, Any]:
    if not message.HasField(field):
        return {}
    result: dict[str, Any] = json_format.MessageToDict(getattr(message, field))
    return result


class ScheduleMessageItem(BaseModel):
    """A message for the scheduler, as MemOS's ScheduleMessageItem (``mem_cube`` is a reference string here:
    the service keeps memory itself, so a cube object has nothing to travel with)."""

    model_config = ConfigDict(extra="forbid")

    item_id: str = Field(default_factory=_new_id)
    user_id: str
    mem_cube_id: str
    label: str
    mem_cube: str = ""
    content: str = ""
    timestamp: datetime = Field(default_factory=_now)
    session_id: str = ""
    task_id: str = ""
    trace_id: str = ""
    user_name: str = ""
    info: dict[str, Any] = Field(default_factory=dict)

    def to_proto(self) -> items_pb2.ScheduleMessageItem:
        return items_pb2.ScheduleMessageItem(
            item_id=self.item_id,
            user_id=self.user_id,
            mem_cube_id=self.mem_cube_id,
            label=self.label,
            mem_cube=self.mem_cube,
            content=self.content,
            timestamp=_timestamp(self.timestamp),
            session_id=self.session_id,
            task_id=self.task_id,
            trace_id=self.trace_id,
            user_name=self.user_name,
            info=_struct(self.info),
        )

    @classmethod
    def from_proto(cls, item: items_pb2.ScheduleMessageItem) -> ScheduleMessageItem:
        return cls(
            item_id=item.item_id,
            user_id=item.user_id,
            mem_cube_id=item.mem_cube_id,
            label=item.label,
            mem_cube=item.mem_cube,
            content=item.content,
            timestamp=_datetime(item, "timestamp") or _now(),
            session_id=item.session_id,
            task_id=item.task_id,
            trace_id=item.trace_id,
            user_name=item.user_name,
            info=_dict(item, "info"),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, as MemOS's ``to_dict`` (timestamp in ISO 8601)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScheduleMessageItem:
        return cls.model_validate(data)


class MemorySizes(BaseModel):
    """Items per partition; -1 means not initialised."""

    long_term_memory_size: int = -1
    user_memory_size: int = -1
    working_memory_size: int = -1
    transformed_act_memory_size: int = -1

    def to_proto(self) -> items_pb2.MemorySizes:
        return items_pb2.MemorySizes(**self.model_dump())

    @classmethod
    def from_proto(cls, sizes: items_pb2.MemorySizes) -> MemorySizes:
        return cls(
            long_term_memory_size=sizes.long_term_memory_size,
            user_memory_size=sizes.user_memory_size,
            working_memory_size=sizes.working_memory_size,
            transformed_act_memory_size=sizes.transformed_act_memory_size,
        )


class MemoryCapacities(BaseModel):
    """Capacity per partition; -1 means disabled."""

    long_term_memory_capacity: int = 10_000
    user_memory_capacity: int = 10_000
    working_memory_capacity: int = 20
    transformed_act_memory_capacity: int = -1

    def to_proto(self) -> items_pb2.MemoryCapacities:
        return items_pb2.MemoryCapacities(**self.model_dump())

    @classmethod
    def from_proto(cls, caps: items_pb2.MemoryCapacities) -> MemoryCapacities:
        return cls(
            long_term_memory_capacity=caps.long_term_memory_capacity,
            user_memory_capacity=caps.user_memory_capacity,
            working_memory_capacity=caps.working_memory_capacity,
            transformed_act_memory_capacity=caps.transformed_act_memory_capacity,
        )


class MemcubeLogEntry(BaseModel):
    """One structured line of a log item."""

    content: str
    ref_id: str = ""
    from_memory_type: MemoryType = MemoryType.UNSPECIFIED
    to_memory_type: MemoryType = MemoryType.UNSPECIFIED

    def to_proto(self) -> items_pb2.MemcubeLogEntry:
        return items_pb2.MemcubeLogEntry(
            content=self.content,
            ref_id=self.ref_id,
            from_memory_type=self.from_memory_type.to_proto(),
            to_memory_type=self.to_memory_type.to_proto(),
        )

    @classmethod
    def from_proto(cls, entry: items_pb2.MemcubeLogEntry) -> MemcubeLogEntry:
        return cls(
            content=entry.content,
            ref_id=entry.ref_id,
            from_memory_type=MemoryType.from_proto(entry.from_memory_type),
            to_memory_type=MemoryType.from_proto(entry.to_memory_type),
        )


class MemoryMetadata(BaseModel):
    """A memory a log item touched (MemOS's per-memory metadata dict)."""

    id: str
    key: str = ""
    memory: str = ""
    memory_type: MemoryType = MemoryType.UNSPECIFIED
    tags: list[str] = Field(default_factory=list)
    updated_at: datetime | None = None

    def to_proto(self) -> items_pb2.MemoryMetadata:
        return items_pb2.MemoryMetadata(
            id=self.id,
            key=self.key,
            memory=self.memory,
            memory_type=self.memory_type.to_proto(),
            tags=self.tags,
            updated_at=_timestamp(self.updated_at),
        )

    @classmethod
    def from_proto(cls, meta: items_pb2.MemoryMetadata) -> MemoryMetadata:
        return cls(
            id=meta.id,
            key=meta.key,
            memory=meta.memory,
            memory_type=MemoryType.from_proto(meta.memory_type),
            tags=list(meta.tags),
            updated_at=_datetime(meta, "updated_at"),
        )


class ScheduleLogForWebItem(BaseModel):
    """A report of something the scheduler did, as MemOS's ScheduleLogForWebItem: what a web UI shows."""

    item_id: str = Field(default_factory=_new_id)
    user_id: str
    mem_cube_id: str
    label: str
    from_memory_type: MemoryType
    to_memory_type: MemoryType
    log_content: str
    current_memory_sizes: MemorySizes = Field(default_factory=MemorySizes)
    memory_capacities: MemoryCapacities = Field(default_factory=MemoryCapacities)
    timestamp: datetime = Field(default_factory=_now)
    task_id: str = ""
    status: TaskStatus = TaskStatus.COMPLETED
    memcube_name: str = ""
    memory_len: int = 0
    memcube_log_content: list[MemcubeLogEntry] = Field(default_factory=list)
    metadata: list[MemoryMetadata] = Field(default_factory=list)
    source_item_id: str = ""
    sequence: int = 0

    def to_proto(self) -> items_pb2.ScheduleLogForWebItem:
        return items_pb2.ScheduleLogForWebItem(
            item_id=self.item_id,
            user_id=self.user_id,
            mem_cube_id=self.mem_cube_id,
            label=self.label,
            from_memory_type=self.from_memory_type.to_proto(),
            to_memory_type=self.to_memory_type.to_proto(),
            log_content=self.log_content,
            current_memory_sizes=self.current_memory_sizes.to_proto(),
            memory_capacities=self.memory_capacities.to_proto(),
            timestamp=_timestamp(self.timestamp),
            task_id=self.task_id,
            status=self.status.to_proto(),
            memcube_name=self.memcube_name,
            memory_len=self.memory_len,
            memcube_log_content=[e.to_proto() for e in self.memcube_log_content],
            metadata=[m.to_proto() for m in self.metadata],
            source_item_id=self.source_item_id,
            sequence=self.sequence,
        )

    @classmethod
    def from_proto(cls, log: items_pb2.ScheduleLogForWebItem) -> ScheduleLogForWebItem:
        return cls(
            item_id=log.item_id,
            user_id=log.user_id,
            mem_cube_id=log.mem_cube_id,
            label=log.label,
            from_memory_type=MemoryType.from_proto(log.from_memory_type),
            to_memory_type=MemoryType.from_proto(log.to_memory_type),
            log_content=log.log_content,
            current_memory_sizes=MemorySizes.from_proto(log.current_memory_sizes),
            memory_capacities=MemoryCapacities.from_proto(log.memory_capacities),
            timestamp=_datetime(log, "timestamp") or _now(),
            task_id=log.task_id,
            status=TaskStatus.from_proto(log.status),
            memcube_name=log.memcube_name,
            memory_len=log.memory_len,
            memcube_log_content=[MemcubeLogEntry.from_proto(e) for e in log.memcube_log_content],
            metadata=[MemoryMetadata.from_proto(m) for m in log.metadata],
            source_item_id=log.source_item_id,
            sequence=log.sequence,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, as MemOS's ``to_dict`` (what ``get_web_log_messages`` returns)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScheduleLogForWebItem:
        return cls.model_validate(data)


class MemoryItem(BaseModel):
    """A memory as stored in a partition."""

    id: str
    memory: str
    memory_type: MemoryType
    key: str = ""
    tags: list[str] = Field(default_factory=list)
    source_item_id: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    usage_count: int = 0
    importance: float = 0.0
    metadata: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_proto(cls, item: items_pb2.MemoryItem) -> MemoryItem:
        return cls(
            id=item.id,
            memory=item.memory,
            memory_type=MemoryType.from_proto(item.memory_type),
            key=item.key,
            tags=list(item.tags),
            source_item_id=item.source_item_id,
            created_at=_datetime(item, "created_at"),
            updated_at=_datetime(item, "updated_at"),
            usage_count=item.usage_count,
            importance=item.importance,
            metadata=_dict(item, "metadata"),
        )


class MemoryPartition(BaseModel):
    """One partition of a cube; ``size`` may exceed ``len(items)`` when a limit applied."""

    memory_type: MemoryType
    size: int
    capacity: int
    items: list[MemoryItem] = Field(default_factory=list)

    @classmethod
    def from_proto(cls, part: scheduler_pb2.MemoryPartition) -> MemoryPartition:
        return cls(
            memory_type=MemoryType.from_proto(part.memory_type),
            size=part.size,
            capacity=part.capacity,
            items=[MemoryItem.from_proto(i) for i in part.items],
        )


class CubeMemory(BaseModel):
    """A cube's memory as GetMemory returns it."""

    partitions: list[MemoryPartition] = Field(default_factory=list)
    sizes: MemorySizes = Field(default_factory=MemorySizes)
    capacities: MemoryCapacities = Field(default_factory=MemoryCapacities)
    activation_memory: str = ""
    archived: list[MemoryItem] = Field(default_factory=list)
    """Memories archived by capacity eviction, newest first (only when asked for with include_archived)."""

    def partition(self, memory_type: MemoryType) -> MemoryPartition | None:
        return next((p for p in self.partitions if p.memory_type == memory_type), None)

    @property
    def working(self) -> list[MemoryItem]:
        """Working memory in schedule order (empty when it was not asked for)."""
        part = self.partition(MemoryType.WORKING)
        return part.items if part else []

    @classmethod
    def from_proto(cls, resp: scheduler_pb2.GetMemoryResponse) -> CubeMemory:
        return cls(
            partitions=[MemoryPartition.from_proto(p) for p in resp.partitions],
            sizes=MemorySizes.from_proto(resp.sizes),
            capacities=MemoryCapacities.from_proto(resp.capacities),
            activation_memory=resp.activation_memory,
            archived=[MemoryItem.from_proto(i) for i in resp.archived],
        )


class ItemStatus(BaseModel):
    """The status of one accepted item."""

    item_id: str
    user_id: str = ""
    mem_cube_id: str = ""
    label: str = ""
    task_id: str = ""
    status: TaskStatus = TaskStatus.UNSPECIFIED
    error: str = ""
    attempts: int = 0
    accepted_at: datetime | None = None
    finished_at: datetime | None = None

    @classmethod
    def from_proto(cls, s: scheduler_pb2.ItemStatus) -> ItemStatus:
        return cls(
            item_id=s.item_id,
            user_id=s.user_id,
            mem_cube_id=s.mem_cube_id,
            label=s.label,
            task_id=s.task_id,
            status=TaskStatus.from_proto(s.status),
            error=s.error,
            attempts=s.attempts,
            accepted_at=_datetime(s, "accepted_at"),
            finished_at=_datetime(s, "finished_at"),
        )


class StatusReport(BaseModel):
    """An item's or a task's aggregate status with each item's."""

    status: TaskStatus
    items: list[ItemStatus] = Field(default_factory=list)

    @classmethod
    def from_proto(cls, resp: scheduler_pb2.GetStatusResponse) -> StatusReport:
        return cls(status=TaskStatus.from_proto(resp.status), items=[ItemStatus.from_proto(i) for i in resp.items])


class IdleResult(BaseModel):
    """The outcome of WaitIdle."""

    idle: bool
    pending: int = 0


class ServerInfo(BaseModel):
    """What the server handles."""

    labels: list[str]
    capacities: MemoryCapacities
    workers: int
    version: str
    started_at: datetime | None = None

    @classmethod
    def from_proto(cls, resp: scheduler_pb2.GetInfoResponse) -> ServerInfo:
        return cls(
            labels=list(resp.labels),
            capacities=MemoryCapacities.from_proto(resp.capacities),
            workers=resp.workers,
            version=resp.version,
            started_at=_datetime(resp, "started_at"),
        )


class CubeSummary(BaseModel):
    """A cube and how busy it is."""

    user_id: str
    mem_cube_id: str
    pending: int = 0
    sizes: MemorySizes = Field(default_factory=MemorySizes)
    memcube_name: str = ""

    @classmethod
    def from_proto(cls, c: scheduler_pb2.CubeSummary) -> CubeSummary:
        return cls(
            user_id=c.user_id,
            mem_cube_id=c.mem_cube_id,
            pending=c.pending,
            sizes=MemorySizes.from_proto(c.sizes),
            memcube_name=c.memcube_name,
        )


class WorkingMemoryScore(BaseModel):
    """A working-memory entry's scores."""

    id: str
    importance: float = 0.0
    relevance: float = 0.0
    keyword_score: float = 0.0
    usage_count: int = 0


class CubeState(BaseModel):
    """What the scheduler knows about a cube beyond its memories."""

    query_window: list[str] = Field(default_factory=list)
    keyword_counts: dict[str, int] = Field(default_factory=dict)
    working_memory: list[WorkingMemoryScore] = Field(default_factory=list)
    queries: int = 0
    answers: int = 0
    activation_built_at: datetime | None = None
    archived: int = 0

    @classmethod
    def from_proto(cls, resp: scheduler_pb2.GetCubeStateResponse) -> CubeState:
        return cls(
            query_window=list(resp.query_window),
            keyword_counts=dict(resp.keyword_counts),
            working_memory=[
                WorkingMemoryScore(
                    id=w.id,
                    importance=w.importance,
                    relevance=w.relevance,
                    keyword_score=w.keyword_score,
                    usage_count=w.usage_count,
                )
                for w in resp.working_memory
            ],
            queries=resp.queries,
            answers=resp.answers,
            activation_built_at=_datetime(resp, "activation_built_at"),
            archived=resp.archived,
        )


class Ack(BaseModel):
    """An item is durably stored and will be handled."""

    kind: Literal["ack"] = "ack"
    item_id: str
    duplicate: bool = False


class Rejection(BaseModel):
    """An item was refused; the stream and the other items go on."""

    kind: Literal["rejection"] = "rejection"
    item_id: str
    index: int = 0
    code: RejectionCode = RejectionCode.UNSPECIFIED
    field: str = ""
    reason: str = ""

    def __str__(self) -> str:
        return f"item {self.item_id or f'#{self.index}'} rejected ({self.code.name}): {self.field}: {self.reason}"


class Completion(BaseModel):
    """An accepted item was handled (``completed``) or failed on every attempt (``failed``, with the error)."""

    kind: Literal["completion"] = "completion"
    item_id: str
    status: TaskStatus
    error: str = ""


SessionEvent = Ack | Rejection | Completion | ScheduleLogForWebItem
"""What a Session yields, in the order the server sent it."""


def session_events(resp: scheduler_pb2.SessionResponse) -> list[SessionEvent]:
    """Flatten one SessionResponse: acks, rejections, then log items, then completions (a completion comes
    after the log items of its item, so a consumer that stops at the completion has seen them)."""
    out: list[SessionEvent] = [Ack(item_id=a.item_id, duplicate=a.duplicate) for a in resp.acks]
    out.extend(
        Rejection(item_id=r.item_id, index=r.index, code=_rejection_code(r.code), field=r.field, reason=r.reason)
        for r in resp.rejections
    )
    out.extend(ScheduleLogForWebItem.from_proto(log) for log in resp.logs)
    out.extend(
        Completion(item_id=c.item_id, status=TaskStatus.from_proto(c.status), error=c.error) for c in resp.completions
    )
    return out


def _rejection_code(value: int) -> RejectionCode:
    try:
        return RejectionCode(value)
    except ValueError:
        return RejectionCode.UNSPECIFIED


ItemLike = ScheduleMessageItem | items_pb2.ScheduleMessageItem | dict[str, Any]
"""What the clients accept as an item: the pydantic model, the protobuf message, or a dict of its fields."""


def to_proto_item(item: ItemLike) -> items_pb2.ScheduleMessageItem:
    if isinstance(item, items_pb2.ScheduleMessageItem):
        return item
    if isinstance(item, ScheduleMessageItem):
        return item.to_proto()
    if isinstance(item, dict):
        return ScheduleMessageItem.model_validate(item).to_proto()
    raise TypeError(f"expected a ScheduleMessageItem, its protobuf message or a dict, not {type(item).__name__}")
