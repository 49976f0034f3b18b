"""The synchronous memsched client: one method per RPC, pydantic models in and out, named errors."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from memsched.v1 import scheduler_pb2, scheduler_pb2_grpc
from memsched_client._common import (
    DEFAULT_ADDRESS,
    DEFAULT_TIMEOUT,
    HEALTH_NAMES,
    WAIT_SLACK_SECONDS,
    TlsOptions,
    as_items,
    auth_metadata,
    channel_options,
)
from memsched_client.errors import MemschedError, Unavailable, from_grpc
from memsched_client.models import (
    Ack,
    Completion,
    CubeMemory,
    CubeState,
    CubeSummary,
    IdleResult,
    ItemLike,
    ItemStatus,
    MemoryItem,
    MemoryType,
    Rejection,
    ScheduleLogForWebItem,
    ServerInfo,
    SessionEvent,
    StatusReport,
    session_events,
)

T = TypeVar("T")


@dataclass
class SessionResult:
    """Everything a finished session reported."""

    acks: list[Ack] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    completions: list[Completion] = field(default_factory=list)
    logs: list[ScheduleLogForWebItem] = field(default_factory=list)

    def add(self, event: SessionEvent) -> None:
        if isinstance(event, Ack):
            self.acks.append(event)
        elif isinstance(event, Rejection):
            self.rejections.append(event)
        elif isinstance(event, Completion):
            self.completions.append(event)
        else:
            self.logs.append(event)


class Session:
    """A bidirectional Session stream. ``send`` items (batches are the fast way), iterate to receive acks,
    rejections, log items and completions; ``close`` says no more items will come, after which the server
    ends the stream once every accepted item has completed. Leaving a ``with`` block cancels the stream:
    acknowledged items are durable and still run, their events are just not received."""

    def __init__(self, stub: scheduler_pb2_grpc.SchedulerStub, metadata: tuple[tuple[str, str], ...]) -> None:
        self._requests: queue.SimpleQueue[scheduler_pb2.SessionRequest | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._cancelled = False
        self._call: Any = stub.Session(self._feed(), metadata=metadata)

    def _feed(self) -> Iterator[scheduler_pb2.SessionRequest]:
        while (request := self._requests.get()) is not None:
            yield request

    def send(self, items: ItemLike | Iterable[ItemLike]) -> list[str]:
        """Queue one request carrying ``items``; returns their item_ids (the keys of the acks to expect)."""
        batch = as_items(items)
        with self._lock:
            if self._closed:
                raise MemschedError("the session is closed for sending")
            self._requests.put(scheduler_pb2.SessionRequest(items=batch))
        return [i.item_id for i in batch]

    def close(self) -> None:
        """Half-close: no more items. Idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._requests.put(None)

    def cancel(self) -> None:
        """End the stream now; iteration stops without an error."""
        self._cancelled = True
        self.close()
        self._call.cancel()

    def responses(self) -> Iterator[scheduler_pb2.SessionResponse]:
        """The raw protobuf responses, for callers that want to skip model conversion."""
        try:
            yield from self._call
        except grpc.RpcError as e:
            if self._cancelled and e.code() == grpc.StatusCode.CANCELLED:
                return
            raise from_grpc(e) from e
        finally:
            self.close()  # the stream is over: release grpc's thread that waits in _feed for more requests

    def events(self) -> Iterator[SessionEvent]:
        for response in self.responses():
            yield from session_events(response)

    def __iter__(self) -> Iterator[SessionEvent]:
        return self.events()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class LogWatch:
    """A WatchLogs stream: iterate for log items (replayed history first, then live); ``cancel`` ends it."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._cancelled = False

    def batches(self) -> Iterator[list[ScheduleLogForWebItem]]:
        try:
            for response in self._call:
                yield [ScheduleLogForWebItem.from_proto(x) for x in response.logs]
        except grpc.RpcError as e:
            if self._cancelled and e.code() == grpc.StatusCode.CANCELLED:
                return
            raise from_grpc(e) from e

    def __iter__(self) -> Iterator[ScheduleLogForWebItem]:
        for batch in self.batches():
            yield from batch

    def cancel(self) -> None:
        self._cancelled = True
        self._call.cancel()

    def __enter__(self) -> LogWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class MemschedClient:
    """A connection to a memsched server.

    >>> with MemschedClient("127.0.0.1:50051") as client:
    ...     client.submit(ScheduleMessageItem(user_id="u1", mem_cube_id="c1", label="add", content="..."))

    ``token`` is sent as ``authorization: Bearer <token>`` on every call; ``tls`` switches to a TLS channel.
    Unary calls use ``timeout`` seconds unless a method says otherwise; streams have no deadline.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        token: str | None = None,
        tls: TlsOptions | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        options: Sequence[tuple[str, Any]] = (),
        channel: grpc.Channel | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        if channel is None:
            opts = channel_options(tls, options)
            channel = (
                grpc.secure_channel(address, tls.credentials(), options=opts)
                if tls
                else grpc.insecure_channel(address, options=opts)
            )
            self._owns_channel = True
        else:
            self._owns_channel = False
        self.channel = channel
        self.stub = scheduler_pb2_grpc.SchedulerStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)
        self._metadata = auth_metadata(token)

    # plumbing
    def _unary(self, method: Callable[..., T], request: Any, timeout: float | None = None) -> T:
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise from_grpc(e) from e

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the server answers; Unavailable after ``timeout`` seconds.

        A health check with wait_for_ready rather than grpc.channel_ready_future: the future polls from a
        thread of its own that fails if the channel is closed soon after."""
        request = health_pb2.HealthCheckRequest()
        try:
            self._health.Check(request, timeout=timeout, wait_for_ready=True, metadata=self._metadata)
        except grpc.RpcError as e:
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise Unavailable(grpc.StatusCode.UNAVAILABLE, f"no server at {self.address} after {timeout}s") from e
            # any other status came from the server itself: it is reachable

    def close(self) -> None:
        if self._owns_channel:
            self.channel.close()

    def __enter__(self) -> MemschedClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # sending
    def submit(self, items: ItemLike | Iterable[ItemLike], timeout: float | None = None) -> list[Ack]:
        """Store a batch in one call (all or nothing); returns one ack per item, in order.
        Raises InvalidArgument (with ``violations``) when any item is bad, ResourceExhausted when full."""
        request = scheduler_pb2.SubmitRequest(items=as_items(items))
        response = self._unary(self.stub.Submit, request, timeout)
        return [Ack(item_id=a.item_id, duplicate=a.duplicate) for a in response.acks]

    def session(self) -> Session:
        """Open a bidirectional Session stream."""
        return Session(self.stub, self._metadata)

    def run_session(
        self,
        items: Iterable[ItemLike],
        batch_size: int = 500,
        on_event: Callable[[SessionEvent], None] | None = None,
    ) -> SessionResult:
        """Send ``items`` on one stream in batches, close it, and collect every event until each accepted
        item has completed. ``on_event`` sees each event as it arrives (progress bars)."""
        result = SessionResult()
        session = self.session()
        batch: list[ItemLike] = []
        try:
            for item in items:
                batch.append(item)
                if len(batch) >= batch_size:
                    session.send(batch)
                    batch = []
            if batch:
                session.send(batch)
            session.close()
            for event in session:
                result.add(event)
                if on_event is not None:
                    on_event(event)
        except BaseException:
            session.cancel()
            raise
        return result

    # reading
    def watch_logs(self, user_id: str, mem_cube_id: str = "", replay: int = 0, labels: Sequence[str] = ()) -> LogWatch:
        """Watch the log items of a user (or one cube), after replaying up to ``replay`` per cube."""
        request = scheduler_pb2.WatchLogsRequest(
            user_id=user_id, mem_cube_id=mem_cube_id, replay=replay, labels=list(labels)
        )
        return LogWatch(self.stub.WatchLogs(request, metadata=self._metadata))

    def get_memory(
        self,
        user_id: str,
        mem_cube_id: str,
        memory_types: Sequence[MemoryType] = (),
        limit: int = 0,
        include_archived: bool = False,
    ) -> CubeMemory:
        """A cube's partitions (default: working, long-term, user and activation), sizes and capacities; with
        ``include_archived`` also the memories evicted by capacity (up to ``limit``)."""
        request = scheduler_pb2.GetMemoryRequest(
            user_id=user_id,
            mem_cube_id=mem_cube_id,
            memory_types=[t.to_proto() for t in memory_types],
            limit=limit,
            include_archived=include_archived,
        )
        return CubeMemory.from_proto(self._unary(self.stub.GetMemory, request))

    def working_memory(self, user_id: str, mem_cube_id: str) -> list[MemoryItem]:
        """The cube's working memory, in schedule order."""
        return self.get_memory(user_id, mem_cube_id, [MemoryType.WORKING]).working

    def get_status(self, item_id: str | None = None, *, task_id: str | None = None) -> StatusReport:
        """The status of one item, or (``task_id=``) the aggregate of a task's items. NotFound if unknown."""
        if (item_id is None) == (task_id is None):
            raise ValueError("give exactly one of item_id and task_id")
        request = (
            scheduler_pb2.GetStatusRequest(task_id=task_id)
            if task_id is not None
            else scheduler_pb2.GetStatusRequest(item_id=item_id or "")
        )
        return StatusReport.from_proto(self._unary(self.stub.GetStatus, request))

    def wait_idle(self, user_id: str, mem_cube_id: str = "", timeout: float = 30.0) -> IdleResult:
        """Wait up to ``timeout`` seconds until nothing of the user (or cube) is waiting or in progress."""
        request = scheduler_pb2.WaitIdleRequest(user_id=user_id, mem_cube_id=mem_cube_id)
        request.timeout.FromNanoseconds(int(timeout * 1e9))
        response = self._unary(self.stub.WaitIdle, request, timeout + WAIT_SLACK_SECONDS)
        return IdleResult(idle=response.idle, pending=response.pending)

    def get_info(self) -> ServerInfo:
        return ServerInfo.from_proto(self._unary(self.stub.GetInfo, scheduler_pb2.GetInfoRequest()))

    def list_cubes(self, user_id: str = "") -> list[CubeSummary]:
        response = self._unary(self.stub.ListCubes, scheduler_pb2.ListCubesRequest(user_id=user_id))
        return [CubeSummary.from_proto(c) for c in response.cubes]

    def get_cube_state(self, user_id: str, mem_cube_id: str) -> CubeState:
        request = scheduler_pb2.GetCubeStateRequest(user_id=user_id, mem_cube_id=mem_cube_id)
        return CubeState.from_proto(self._unary(self.stub.GetCubeState, request))

    def list_dead_letters(self, user_id: str = "", mem_cube_id: str = "", limit: int = 0) -> list[ItemStatus]:
        request = scheduler_pb2.ListDeadLettersRequest(user_id=user_id, mem_cube_id=mem_cube_id, limit=limit)
        return [ItemStatus.from_proto(s) for s in self._unary(self.stub.ListDeadLetters, request).items]

    def redrive_dead_letters(self, item_ids: Sequence[str]) -> list[str]:
        """Queue failed items again; returns the ids that were dead letters."""
        request = scheduler_pb2.RedriveDeadLettersRequest(item_ids=list(item_ids))
        return list(self._unary(self.stub.RedriveDeadLetters, request).item_ids)

    def health(self, service: str = "") -> str:
        """The grpc.health.v1 status name: SERVING, NOT_SERVING or SERVICE_UNKNOWN."""
        request = health_pb2.HealthCheckRequest(service=service)
        try:
            response = self._health.Check(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            raise from_grpc(e) from e
        return HEALTH_NAMES.get(response.status, "UNKNOWN")
