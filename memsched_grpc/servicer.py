"""The gRPC transport: convert, validate requests, call one MemScheduler method, answer. No scheduling here."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc

from memsched.v1 import items_pb2, scheduler_pb2, scheduler_pb2_grpc
from memsched_grpc import convert
from memsched_grpc.auth import Authenticator, Principal
from memsched_grpc.config import AuthConfig
from memsched_grpc.encoded_log import EncodedLog
from memsched_grpc.errors import InvalidRequest, MemschedError, NotFound
from memsched_grpc.feed import Subscription, WatcherOverflow
from memsched_grpc.models import MemoryType, cube_sizes
from memsched_grpc.scheduler import MemScheduler
from memsched_grpc.session import Ack, Completion, Event, Rejection
from memsched_grpc.status import abort

log = logging.getLogger(__name__)
T = TypeVar("T")
POLL_SECONDS = 0.5
DEFAULT_WAIT_SECONDS = 30.0


def _require(field: str, value: str) -> None:
    if not value:
        raise InvalidRequest(field, "is required and must not be empty")


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self, scheduler: MemScheduler, authenticator: Authenticator | None = None) -> None:
        self.scheduler = scheduler
        self.auth = authenticator or Authenticator(AuthConfig())

    def _principal(self, context: grpc.ServicerContext) -> Principal:
        return self._call(context, lambda: self.auth.authenticate(context.invocation_metadata()))

    def _for_user(self, context: grpc.ServicerContext, user_id: str) -> Principal:
        """Authenticate and require the right to act for ``user_id`` (which must be given)."""
        principal = self._principal(context)

        def check() -> None:
            _require("user_id", user_id)
            principal.check(user_id)

        self._call(context, check)
        return principal

    def _call(self, context: grpc.ServicerContext, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except MemschedError as e:
            abort(context, e)
        except Exception as e:
            log.exception("unexpected error in %s", fn)
            abort(context, e)

    def Session(
        self, request_iterator: Iterator[scheduler_pb2.SessionRequest], context: grpc.ServicerContext
    ) -> Iterator[scheduler_pb2.SessionResponse]:
        principal = self._principal(context)
        session = self.scheduler.open_session()
        stop = threading.Event()

        def read() -> None:
            try:
                for request in request_iterator:
                    self.scheduler.submit_stream(session, request.items, stop, principal)
            except grpc.RpcError:
                pass  # the client went away; what was stored stays stored
            except Exception:
                log.exception("session reader failed")
                session.abort()
            finally:
                session.input_done()

        reader = threading.Thread(target=read, name="session-reader", daemon=True)
        context.add_callback(stop.set)
        context.add_callback(session.abort)
        reader.start()
        try:
            while True:
                events = session.next_events(POLL_SECONDS)
                if events is None:
                    return
                if events:
                    yield _session_response(events)
                elif not context.is_active():
                    return
        finally:
            stop.set()
            self.scheduler.close_session(session)

    def Submit(
        self, request: scheduler_pb2.SubmitRequest, context: grpc.ServicerContext
    ) -> scheduler_pb2.SubmitResponse:
        principal = self._principal(context)
        acks = self._call(context, lambda: self.scheduler.submit(request.items, principal=principal))
        return scheduler_pb2.SubmitResponse(
            acks=[scheduler_pb2.ItemAck(item_id=a.item_id, duplicate=a.duplicate) for a in acks]
        )

    def WatchLogs(
        self, request: scheduler_pb2.WatchLogsRequest, context: grpc.ServicerContext
    ) -> Iterator[scheduler_pb2.WatchLogsResponse]:
        self._for_user(context, request.user_id)

        def start() -> tuple[Subscription, list[EncodedLog]]:
            if request.replay < 0:
                raise InvalidRequest("replay", "must not be negative")
            return self.scheduler.watch(request.user_id, request.mem_cube_id, list(request.labels), request.replay)

        sub, replayed = self._call(context, start)
        context.add_callback(sub.close)
        try:
            last_seen: dict[str, int] = {}
            for i in range(0, len(replayed), 500):
                chunk = replayed[i : i + 500]
                for item in chunk:
                    last_seen[item.mem_cube_id] = item.sequence
                yield _watch_response(chunk)
            while context.is_active() and not sub.closed:
                try:
                    logs = sub.get(POLL_SECONDS)
                except WatcherOverflow as e:
                    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
                fresh = [x for x in logs if x.sequence > last_seen.get(x.mem_cube_id, 0)]
                if fresh:
                    yield _watch_response(fresh)
        finally:
            sub.close()

    def GetMemory(
        self, request: scheduler_pb2.GetMemoryRequest, context: grpc.ServicerContext
    ) -> scheduler_pb2.GetMemoryResponse:
        self._for_user(context, request.user_id)

        def read() -> scheduler_pb2.GetMemoryResponse:
            _require("mem_cube_id", request.mem_cube_id)
            if request.limit < 0:
                raise InvalidRequest("limit", "must not be negative")
            types = []
            for value in request.memory_types:
                memory_type = convert.MEMORY_TYPE_FROM_PROTO.get(value)
                if memory_type is None:
                    raise InvalidRequest("memory_types", f"{value} is not a memory type")
                types.append(memory_type)
            view = self.scheduler.read_memory(
                request.user_id, request.mem_cube_id, types, request.limit, request.include_archived
            )
            return scheduler_pb2.GetMemoryResponse(
                partitions=[
                    scheduler_pb2.MemoryPartition(
                        memory_type=convert.MEMORY_TYPE_TO_PROTO[p.memory_type],
                        size=p.size,
                        capacity=p.capacity,
                        items=[
                            _working(convert.memory_to_proto(item, entry.importance if entry else 0.0), p.memory_type)
                            for item, entry in p.items
                        ],
                    )
                    for p in view.partitions
                ],
                sizes=convert.sizes_to_proto(view.sizes),
                capacities=convert.capacities_to_proto(view.capacities),
                activation_memory=view.state.activation_text,
                archived=[convert.memory_to_proto(m) for m in view.archived],
            )

        return self._call(context, read)

    def GetStatus(
        self, request: scheduler_pb2.GetStatusRequest, context: grpc.ServicerContext
    ) -> scheduler_pb2.GetStatusResponse:
        principal = self._principal(context)

        def read() -> scheduler_pb2.GetStatusResponse:
            target = request.WhichOneof("target")
            if target == "item_id" and request.item_id:
                status = self.scheduler.status(request.item_id)
                principal.check(status.user_id)
                return scheduler_pb2.GetStatusResponse(
                    status=convert.STATE_TO_PROTO[status.state], items=[convert.status_to_proto(status)]
                )
            if target == "task_id" and request.task_id:
                state, statuses = self.scheduler.task_status(request.task_id)
                for item_status in statuses:
                    principal.check(item_status.user_id)
                return scheduler_pb2.GetStatusResponse(
                    status=convert.STATE_TO_PROTO[state], items=[convert.status_to_proto(s) for s in statuses]
                )
            raise InvalidRequest("target", "set a non-empty item_id or task_id")

        return self._call(context, read)

    def WaitIdle(
        self, request: scheduler_pb2.WaitIdleRequest, context: grpc.ServicerContext
    ) -> scheduler_pb2.WaitIdleResponse:
        self._for_user(context, request.user_id)

        def wait() -> scheduler_pb2.WaitIdleResponse:
            timeout = (
                request.timeout.ToTimedelta().total_seconds() if request.HasField("timeout") else DEFAULT_WAIT_SECONDS
            )
            if timeout < 0:
                raise InvalidRequest("timeout", "must not be negative")
            pending = self.scheduler.wait_idle(request.user_id, request.mem_cube_id, timeout)
            return scheduler_pb2.WaitIdleResponse(idle=pending == 0, pending=pending)

        return self._call(context, wait)

    def GetInfo(
        self, request: scheduler_pb2.GetInfoRequest, context: grpc.ServicerContext
    ) -> scheduler_pb2.GetInfoResponse:
        self._principal(context)
        s = self.scheduler
        return scheduler_pb2.GetInfoResponse(
            labels=s.labels,
            capacities=convert.capacities_to_proto(s.info_capacities()),
            workers=s.settings.workers.count,
            version=s.version,
            started_at=convert.timestamp(s.started_at),
        )

    def ListCubes(
        self, request: scheduler_pb2.ListCubesRequest, context: grpc.ServicerContext
    ) -> scheduler_pb2.ListCubesResponse:
        principal = self._principal(context)

        def read() -> scheduler_pb2.ListCubesResponse:
            if request.user_id:
                principal.check(request.user_id)
            return scheduler_pb2.ListCubesResponse(
                cubes=[
                    scheduler_pb2.CubeSummary(
                        user_id=c.state.user_id,
                        mem_cube_id=c.state.mem_cube_id,
                        pending=c.pending,
                        sizes=convert.sizes_to_proto(cube_sizes(c.state)),
                        memcube_name=c.state.memcube_name or c.state.mem_cube_id,
                    )
                    for c in self.scheduler.list_cubes(request.user_id)
                    if principal.may_act_for(c.state.user_id)
                ]
            )

        return self._call(context, read)

    def GetCubeState(
        self, request: scheduler_pb2.GetCubeStateRequest, context: grpc.ServicerContext
    ) -> scheduler_pb2.GetCubeStateResponse:
        self._for_user(context, request.user_id)

        def read() -> scheduler_pb2.GetCubeStateResponse:
            _require("mem_cube_id", request.mem_cube_id)
            state, usage = self.scheduler.cube_state(request.user_id, request.mem_cube_id)
            return scheduler_pb2.GetCubeStateResponse(
                query_window=state.query_window,
                keyword_counts=state.keyword_counts,
                working_memory=[
                    scheduler_pb2.WorkingMemoryScore(
                        id=w.id,
                        importance=w.importance,
                        relevance=w.relevance,
                        keyword_score=w.keyword_score,
                        usage_count=usage.get(w.id, 0),
                    )
                    for w in state.working
                ],
                queries=state.queries,
                answers=state.answers,
                activation_built_at=convert.timestamp(state.activation_built_at) if state.activation_built_at else None,
                archived=state.archived_size,
            )

        return self._call(context, read)

    def ListDeadLetters(
        self, request: scheduler_pb2.ListDeadLettersRequest, context: grpc.ServicerContext
    ) -> scheduler_pb2.ListDeadLettersResponse:
        principal = self._principal(context)

        def read() -> scheduler_pb2.ListDeadLettersResponse:
            if request.limit < 0:
                raise InvalidRequest("limit", "must not be negative")
            if request.user_id:
                principal.check(request.user_id)
            elif not principal.all_users:
                raise InvalidRequest("user_id", "is required for a token limited to some users")
            items = self.scheduler.dead_letters(request.user_id, request.mem_cube_id, request.limit)
            return scheduler_pb2.ListDeadLettersResponse(items=[convert.status_to_proto(s) for s in items])

        return self._call(context, read)

    def RedriveDeadLetters(
        self, request: scheduler_pb2.RedriveDeadLettersRequest, context: grpc.ServicerContext
    ) -> scheduler_pb2.RedriveDeadLettersResponse:
        principal = self._principal(context)

        def redrive() -> list[str]:
            for item_id in request.item_ids:
                try:
                    principal.check(self.scheduler.status(item_id).user_id)
                except NotFound:
                    continue  # not a dead letter: the re-drive leaves it out
            return self.scheduler.redrive(list(request.item_ids))

        ids = self._call(context, redrive)
        return scheduler_pb2.RedriveDeadLettersResponse(item_ids=ids)


def _working(item: items_pb2.MemoryItem, partition: MemoryType) -> items_pb2.MemoryItem:
    if partition == MemoryType.WORKING:
        item.memory_type = items_pb2.MEMORY_TYPE_WORKING_MEMORY
    return item


def _session_response(events: list[Event]) -> scheduler_pb2.SessionResponse:
    response = scheduler_pb2.SessionResponse()
    add_ack = response.acks.add
    for event in events:
        if isinstance(event, Ack):  # the commonest event by far
            if event.duplicate:
                add_ack(item_id=event.item_id, duplicate=True)
            else:
                add_ack(item_id=event.item_id)
        elif isinstance(event, Rejection):
            response.rejections.add(
                item_id=event.item_id, index=event.index, code=int(event.code), field=event.field, reason=event.reason
            )
        elif isinstance(event, Completion):
            response.completions.add(
                item_id=event.item_id, status=convert.STATE_TO_PROTO[event.state], error=event.error
            )
        else:
            response.logs.add().MergeFromString(event.data)
    return response


def _watch_response(logs: list[EncodedLog]) -> scheduler_pb2.WatchLogsResponse:
    response = scheduler_pb2.WatchLogsResponse()
    add = response.logs.add
    for log in logs:
        add().MergeFromString(log.data)
    return response
