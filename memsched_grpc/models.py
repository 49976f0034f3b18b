"""Domain types shared by the server process and the workers; nothing here knows of gRPC or protobuf."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


def utcnow() -> datetime:
    return datetime.now(UTC)


class MemoryType(enum.StrEnum):
    """MemOS's memory type strings, the names a web UI shows."""

    WORKING = "WorkingMemory"
    LONG_TERM = "LongTermMemory"
    USER = "UserMemory"
    TEXT = "TextMemory"
    ACTIVATION = "ActivationMemory"
    PARAMETER = "ParameterMemory"
    USER_INPUT = "UserInput"
    NOT_APPLICABLE = "NotApplicable"


class TaskState(enum.StrEnum):
    """Life of an accepted item: waiting -> in_progress -> completed | failed."""

    WAITING = "waiting"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"


class WebLogLabel(enum.StrEnum):
    """The labels a MemOS web UI expects on ScheduleLogForWebItem."""

    ADD_MESSAGE = "addMessage"
    ADD_MEMORY = "addMemory"
    UPDATE_MEMORY = "updateMemory"
    SCHEDULE_MEMORY = "scheduleMemory"
    MERGE_MEMORY = "mergeMemory"
    ARCHIVE_MEMORY = "archiveMemory"
    KNOWLEDGE_BASE_UPDATE = "knowledgeBaseUpdate"
    TASK_STATUS = "taskStatus"


class Message(BaseModel):
    """A ScheduleMessageItem as handlers see it."""

    model_config = ConfigDict(frozen=True)

    item_id: str
    user_id: str
    mem_cube_id: str
    label: str
    content: str = ""
    mem_cube: str = ""
    timestamp: datetime = Field(default_factory=utcnow)
    session_id: str = ""
    task_id: str = ""
    trace_id: str = ""
    user_name: str = ""
    info: dict[str, Any] = Field(default_factory=dict)


class MemorySizes(BaseModel):
    """Items per partition; -1 means not initialised (MemOS's default)."""

    long_term_memory_size: int = -1
    user_memory_size: int = -1
    working_memory_size: int = -1
    transformed_act_memory_size: int = -1


class MemoryCapacities(BaseModel):
    """Capacity per partition, MemOS's defaults; -1 means disabled."""

    model_config = ConfigDict(extra="forbid")

    long_term_memory_capacity: int = Field(default=10_000, ge=1)
    user_memory_capacity: int = Field(default=10_000, ge=1)
    working_memory_capacity: int = Field(default=20, ge=1)
    transformed_act_memory_capacity: int = Field(default=-1, ge=-1)


class MemoryItem(BaseModel):
    """One memory in a cube's LongTermMemory or UserMemory partition."""

    id: str
    memory: str
    memory_type: MemoryType = MemoryType.LONG_TERM
    key: str = ""
    tags: list[str] = Field(default_factory=list)
    source_item_id: str = ""
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    usage_count: int = 0
    metadata: dict[str, Any] = Field(default_factory=dict)
    sequence: int = 0
    """Insertion order within the cube (1, 2, ...), set when first stored; retrieval takes a memory's
    neighbours in this order. 0: stored before the order was kept."""


class WorkingEntry(BaseModel):
    """A memory's place in working memory: a reference into LongTermMemory or UserMemory plus its scores."""

    id: str
    importance: float = 0.0
    relevance: float = 0.0
    keyword_score: float = 0.0


class LogEntry(BaseModel):
    """One structured line of a log item (memcube_log_content)."""

    content: str
    ref_id: str = ""
    from_memory_type: MemoryType = MemoryType.NOT_APPLICABLE
    to_memory_type: MemoryType = MemoryType.NOT_APPLICABLE


class LogItem(BaseModel):
    """A ScheduleLogForWebItem: one thing the scheduler did, as a web UI shows it."""

    item_id: str
    user_id: str
    mem_cube_id: str
    label: str
    from_memory_type: MemoryType
    to_memory_type: MemoryType
    log_content: str
    current_memory_sizes: MemorySizes
    memory_capacities: MemoryCapacities
    timestamp: datetime = Field(default_factory=utcnow)
    task_id: str = ""
    status: TaskState = TaskState.COMPLETED
    memcube_name: str = ""
    memory_len: int = 0
    memcube_log_content: list[LogEntry] = Field(default_factory=list)
    metadata: list[MemoryItem] = Field(default_factory=list)
    source_item_id: str = ""
    sequence: int = 0


class ItemStatus(BaseModel):
    """The durable status record of an accepted item; also the record that makes item ids unique."""

    item_id: str
    user_id: str
    mem_cube_id: str
    label: str
    task_id: str = ""
    state: TaskState = TaskState.WAITING
    error: str = ""
    attempts: int = 0
    accepted_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    seq: int = 0


class CubeState(BaseModel):
    """Everything about a cube except its memories: working memory, query window, counters, activation."""

    user_id: str
    mem_cube_id: str
    memcube_name: str = ""
    long_term_size: int = 0
    user_size: int = 0
    archived_size: int = 0
    working: list[WorkingEntry] = Field(default_factory=list)
    next_log_seq: int = 1
    query_window: list[str] = Field(default_factory=list)
    keyword_counts: dict[str, int] = Field(default_factory=dict)
    activation_text: str = ""
    activation_size: int = 0
    activation_built_at: float = 0.0
    queries: int = 0
    answers: int = 0


def cube_sizes(state: CubeState) -> MemorySizes:
    return MemorySizes(**size_fields(state))


def size_fields(state: CubeState) -> dict[str, int]:
    """A cube's partition sizes by MemorySizes field name (the protobuf message has the same names)."""
    return {
        "long_term_memory_size": state.long_term_size,
        "user_memory_size": state.user_size,
        "working_memory_size": len(state.working),
        "transformed_act_memory_size": state.activation_size,
    }


class RejectCode(enum.IntEnum):
    """Why an item was refused; the values are google.rpc.Code numbers."""

    INVALID_ARGUMENT = 3
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    UNAVAILABLE = 14
