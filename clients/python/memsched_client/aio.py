"""The asyncio memsched client (grpc.aio): the same methods as MemschedClient, awaitable."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio
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
from memsched_client.client import SessionResult
from memsched_client.errors import MemschedError, Unavailable, from_grpc
from memsched_client.models import (
    Ack,
    CubeMemory,
    CubeState,
    CubeSummary,
    IdleResult,
    ItemLike,
    ItemStatus,
    MemoryItem,
    MemoryType,
    ScheduleLogForWebItem,
    ServerInfo,
    SessionEvent,
    StatusReport,
    session_events,
)

T = TypeVar("T")


class AsyncSession:
    """A Session stream under asyncio: ``await send(items)``, ``async for event in session``, ``await close()``.
    Sending and receiving may run in different tasks."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._closed = False
        self._cancelled = False

    async def send(self, items: ItemLike | Iterable[ItemLike]) -> list[str]:
        """Send one request carrying ``items``; returns their item_ids."""
        if self._closed:
            raise MemschedError("the session is closed for sending")
        batch = as_items(items)
        try:
            await self._call.write(scheduler_pb2.SessionRequest(items=batch))
        except grpc.RpcError as e:
            raise from_grpc(e) from e
        return [i.item_id for i in batch]

    async def close(self) -> None:
        """Half-close: no more items; the server ends the stream once every accepted item has completed."""
        if not self._closed:
            self._closed = True
            await self._call.done_writing()

    def cancel(self) -> None:
        self._cancelled = True
        self._closed = True
        self._call.cancel()

    async def events(self) -> AsyncIterator[SessionEvent]:
        try:
            async for response in self._call:
                for event in session_events(response):
                    yield event
        except grpc.RpcError as e:
            if self._cancelled and e.code() == grpc.StatusCode.CANCELLED:
                return
            raise from_grpc(e) from e
        except grpc.aio.UsageError:
            if not self._cancelled:
                raise

    def __aiter__(self) -> AsyncIterator[SessionEvent]:
        return self.events()

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()


class AsyncLogWatch:
    """A WatchLogs stream under asyncio."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._cancelled = False

    async def __aiter__(self) -> AsyncIterator[ScheduleLogForWebItem]:
        try:
            async for response in self._call:
                for log in response.logs:
                    yield ScheduleLogForWebItem.from_proto(log)
        except grpc.RpcError as e:
            if self._cancelled and e.code() == grpc.StatusCode.CANCELLED:
                return
            raise from_grpc(e) from e

    def cancel(self) -> None:
        self._cancelled = True
        self._call.cancel()


class AsyncMemschedClient:
    """An asyncio connection to a memsched server; create it inside the running event loop.

    >>> async with AsyncMemschedClient("127.0.0.1:50051") as client:
    ...     await client.submit(item)
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        token: str | None = None,
        tls: TlsOptions | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.address = address
        self.timeout = timeout
        opts = channel_options(tls, options)
        self.channel = (
            grpc.aio.secure_channel(address, tls.credentials(), options=opts)
            if tls
            else grpc.aio.insecure_channel(address, options=opts)
        )
        self.stub = scheduler_pb2_grpc.SchedulerStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self._metadata = auth_metadata(token)

    async def _unary(self, method: Callable[..., Awaitable[T]], request: Any, timeout: float | None = None) -> T:
        try:
            return await method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise from_grpc(e) from e

    async def wait_ready(self, timeout: float = 10.0) -> None:
        import asyncio

        try:
            await asyncio.wait_for(self.channel.channel_ready(), timeout)
        except TimeoutError as e:
            raise Unavailable(grpc.StatusCode.UNAVAILABLE, f"no server at {self.address} after {timeout}s") from e

    async def close(self) -> None:
        await self.channel.close(None)

    async def __aenter__(self) -> AsyncMemschedClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def submit(self, items: ItemLike | Iterable[ItemLike], timeout: float | None = None) -> list[Ack]:
        """Store a batch in one call (all or nothing); one ack per item, in order."""
        request = scheduler_pb2.SubmitRequest(items=as_items(items))
        response = await self._unary(self.stub.Submit, request, timeout)
        return [Ack(item_id=a.item_id, duplicate=a.duplicate) for a in response.acks]

    def session(self) -> AsyncSession:
        """Open a bidirectional Session stream."""
        stub: Any = self.stub  # grpc-stubs types the sync signature; grpc.aio also takes no request iterator
        return AsyncSession(stub.Session(metadata=self._metadata))

    async def run_session(self, items: Iterable[ItemLike], batch_size: int = 500) -> SessionResult:
        """Send ``items`` in batches on one stream, close it, collect every event until all have completed."""
        result = SessionResult()
        session = self.session()
        batch: list[ItemLike] = []
        try:
            for item in items:
                batch.append(item)
                if len(batch) >= batch_size:
                    await session.send(batch)
                    batch = []
            if batch:
                await session.send(batch)
            await session.close()
            async for event in session:
                result.add(event)
        except BaseException:
            session.cancel()
            raise
        return result

    def watch_logs(
        self, user_id: str, mem_cube_id: str = "", replay: int = 0, labels: Sequence[str] = ()
    ) -> AsyncLogWatch:
        request = scheduler_pb2.WatchLogsRequest(
            user_id=user_id, mem_cube_id=mem_cube_id, replay=replay, labels=list(labels)
        )
        return AsyncLogWatch(self.stub.WatchLogs(request, metadata=self._metadata))

    async def get_memory(
        self,
        user_id: str,
        mem_cube_id: str,
        memory_types: Sequence[MemoryType] = (),
        limit: int = 0,
        include_archived: bool = False,
    ) -> CubeMemory:
        request = scheduler_pb2.GetMemoryRequest(
            user_id=user_id,
            mem_cube_id=mem_cube_id,
            memory_types=[t.to_proto() for t in memory_types],
            limit=limit,
            include_archived=include_archived,
        )
        return CubeMemory.from_proto(await self._unary(self.stub.GetMemory, request))

    async def working_memory(self, user_id: str, mem_cube_id: str) -> list[MemoryItem]:
        return (await self.get_memory(user_id, mem_cube_id, [MemoryType.WORKING])).working

    async def get_status(self, item_id: str | None = None, *, task_id: str | None = None) -> StatusReport:
        if (item_id is None) == (task_id is None):
            raise ValueError("give exactly one of item_id and task_id")
        request = (
            scheduler_pb2.GetStatusRequest(task_id=task_id)
            if task_id is not None
            else scheduler_pb2.GetStatusRequest(item_id=item_id or "")
        )
        return StatusReport.from_proto(await self._unary(self.stub.GetStatus, request))

    async def wait_idle(self, user_id: str, mem_cube_id: str = "", timeout: float = 30.0) -> IdleResult:
        request = scheduler_pb2.WaitIdleRequest(user_id=user_id, mem_cube_id=mem_cube_id)
        request.timeout.FromNanoseconds(int(timeout * 1e9))
        response = await self._unary(self.stub.WaitIdle, request, timeout + WAIT_SLACK_SECONDS)
        return IdleResult(idle=response.idle, pending=response.pending)

    async def get_info(self) -> ServerInfo:
        return ServerInfo.from_proto(await self._unary(self.stub.GetInfo, scheduler_pb2.GetInfoRequest()))

    async def list_cubes(self, user_id: str = "") -> list[CubeSummary]:
        response = await self._unary(self.stub.ListCubes, scheduler_pb2.ListCubesRequest(user_id=user_id))
        return [CubeSummary.from_proto(c) for c in response.cubes]

    async def get_cube_state(self, user_id: str, mem_cube_id: str) -> CubeState:
        request = scheduler_pb2.GetCubeStateRequest(user_id=user_id, mem_cube_id=mem_cube_id)
        return CubeState.from_proto(await self._unary(self.stub.GetCubeState, request))

    async def list_dead_letters(self, user_id: str = "", mem_cube_id: str = "", limit: int = 0) -> list[ItemStatus]:
        request = scheduler_pb2.ListDeadLettersRequest(user_id=user_id, mem_cube_id=mem_cube_id, limit=limit)
        return [ItemStatus.from_proto(s) for s in (await self._unary(self.stub.ListDeadLetters, request)).items]

    async def redrive_dead_letters(self, item_ids: Sequence[str]) -> list[str]:
        request = scheduler_pb2.RedriveDeadLettersRequest(item_ids=list(item_ids))
        return list((await self._unary(self.stub.RedriveDeadLetters, request)).item_ids)

    async def health(self, service: str = "") -> str:
        request = health_pb2.HealthCheckRequest(service=service)
        try:
            response = await self._health.Check(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            raise from_grpc(e) from e
        return HEALTH_NAMES.get(response.status, "UNKNOWN")
