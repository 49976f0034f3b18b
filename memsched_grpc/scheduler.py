"""MemScheduler, the service's core: validation, durable acceptance, dispatch, results, reads.

The servicer is a thin transport over this class; nothing here knows of gRPC (protobuf items come in
because they are also the inbox's storage format, and a decoded copy is never needed on the hot path).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from memsched.v1 import items_pb2
from memsched_grpc import __version__
from memsched_grpc.auth import ANONYMOUS, Principal
from memsched_grpc.config import Settings
from memsched_grpc.dispatcher import Dispatcher, Finished
from memsched_grpc.encoded_log import EncodedLog
from memsched_grpc.errors import InvalidItem, InvalidRequest, NotFound, Overloaded, ShuttingDown, StorageError
from memsched_grpc.feed import Feed, Subscription
from memsched_grpc.handlers import build_registry, registered_labels
from memsched_grpc.inbox import GroupCommitter, Inbox, Incoming, Record
from memsched_grpc.models import (
    CubeState,
    ItemStatus,
    MemoryCapacities,
    MemoryItem,
    MemorySizes,
    MemoryType,
    RejectCode,
    TaskState,
    WorkingEntry,
    cube_sizes,
)
from memsched_grpc.session import Ack, Completion, Rejection, Session
from memsched_grpc.store import keys
from memsched_grpc.store.shards import ShardSet
from memsched_grpc.validation import ItemValidator
from memsched_grpc.worker import QUERY_LABEL

log = logging.getLogger(__name__)

READABLE_TYPES = (MemoryType.WORKING, MemoryType.LONG_TERM, MemoryType.USER, MemoryType.ACTIVATION)
MAX_WAIT_SECONDS = 600.0
HOUSEKEEPING_SECONDS = 60.0


class InvalidItems(InvalidRequest):
    """Submit refuses a whole batch when any item is bad; every violation is listed."""

    def __init__(self, errors: list[InvalidItem]) -> None:
        first = errors[0]
        super().__init__(f"items[{first.index}].{first.field}", first.rule)
        self.errors = errors


@dataclass
class Partition:
    memory_type: MemoryType
    size: int
    capacity: int
    items: list[tuple[MemoryItem, WorkingEntry | None]] = field(default_factory=list)


@dataclass
class CubeSummary:
    state: CubeState
    pending: int


@dataclass
class CubeView:
    state: CubeState
    partitions: list[Partition]
    sizes: MemorySizes
    capacities: MemoryCapacities
    archived: list[MemoryItem] = field(default_factory=list)


class MemScheduler:
    def __init__(self, settings: Settings) -> None:
        build_registry(settings.handlers)  # a bad custom handler fails here, at start, not in a worker
        self.labels = registered_labels(settings.handlers)
        self.inbox = Inbox(settings.storage)
        # The shard count is fixed by the data dir; workers must use the same one.
        storage = settings.storage.model_copy(update={"shards": self.inbox.shards})
        self.settings = settings = settings.model_copy(update={"storage": storage})
        self.validator = ItemValidator(settings.limits, self.labels)
        self.feed = Feed()
        self.shards = ShardSet(settings.storage, self.inbox.shards)
        self.dispatcher = Dispatcher(settings, self.inbox, self._on_finished)
        self.committer = GroupCommitter(self.inbox, self.dispatcher.dispatch)
        self.dispatcher.finish_in_inbox = self.committer.finish
        self._origins: dict[str, Session] = {}
        self._origins_lock = threading.Lock()
        self._sessions: set[Session] = set()
        self._finish_observers: list[Callable[[list[Finished]], None]] = []
        self._accepting = False
        self.started_at = time.time()
        self._housekeeping_stop = threading.Event()
        self._housekeeper = threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True)
        self.version = __version__

    # lifecycle
    def start(self) -> None:
        """Spawn the workers (before any grpc object exists) and redeliver unfinished work."""
        self.committer.start()
        self.dispatcher.start(list(self.inbox.recover()))
        self._accepting = True
        self._housekeeper.start()

    def _housekeeping(self) -> None:
        """Forget finished items past the retention period, a bounded batch at a time."""
        retention_ns = int(self.settings.storage.status_retention_hours * 3600e9)
        while not self._housekeeping_stop.wait(HOUSEKEEPING_SECONDS):
            try:
                while self.inbox.purge_finished(time.time_ns() - retention_ns) and not self._housekeeping_stop.is_set():
                    pass
            except StorageError:
                log.exception("purging finished status records failed; retrying in %ss", HOUSEKEEPING_SECONDS)

    def refuse_new(self) -> None:
        """New items get UNAVAILABLE from now on; what is already accepted goes on."""
        self._accepting = False

    def stop(self, drain_seconds: float) -> None:
        """Stop accepting, let workers finish for up to ``drain_seconds``, then stop them and close LMDB.
        Whatever is unfinished stays in the inbox and runs at the next start."""
        self._accepting = False
        self.committer.stop()
        self._housekeeping_stop.set()
        if self._housekeeper.is_alive():
            self._housekeeper.join(10)
        left = self.dispatcher.wait_all_idle(drain_seconds)
        if left:
            log.warning("stopping with %d accepted items unfinished; they run at the next start", left)
        self.dispatcher.stop(timeout=10.0 + self.settings.workers.snapshot_seconds)
        for session in list(self._sessions):
            session.abort()
        self.feed.close_all()
        self.shards.close()
        self.inbox.close()

    # accepting
    def _prepare(self, item: items_pb2.ScheduleMessageItem, now: tuple[int, int]) -> Incoming:
        """``now`` is (seconds, nanos), read once per request: Timestamp.GetCurrentTime costs ~5 µs an item."""
        if not item.HasField("timestamp"):
            item.timestamp.seconds, item.timestamp.nanos = now
        return Incoming(
            item.item_id, item.user_id, item.mem_cube_id, item.label, item.task_id, item.SerializeToString()
        )

    def open_session(self) -> Session:
        session = Session()
        self._sessions.add(session)
        return session

    def close_session(self, session: Session) -> None:
        session.abort()
        self._sessions.discard(session)
        with self._origins_lock:
            for item_id in [k for k, v in self._origins.items() if v is session]:
                del self._origins[item_id]

    def submit_stream(
        self,
        session: Session,
        items: Sequence[items_pb2.ScheduleMessageItem],
        stop: threading.Event,
        principal: Principal = ANONYMOUS,
    ) -> None:
        """Validate, wait for backlog room (flow control: the stream is not read meanwhile), store; acks,
        rejections and later completions and log items arrive on the session."""
        rejections: list[Rejection] = []
        incoming: list[Incoming] = []
        now = divmod(time.time_ns(), 1_000_000_000)
        for index, item in enumerate(items):
            try:
                self.validator.check(item, index)
            except InvalidItem as e:
                rejections.append(Rejection(e.item_id, index, RejectCode.INVALID_ARGUMENT, e.field, e.rule))
                continue
            if not principal.may_act_for(item.user_id):
                reason = f"token {principal.name!r} may not act for this user"
                rejections.append(Rejection(item.item_id, index, RejectCode.PERMISSION_DENIED, "user_id", reason))
                continue
            incoming.append(self._prepare(item, now))
        if rejections:
            session.emit(list(rejections))
        if not incoming:
            return
        while not self.dispatcher.admit(len(incoming), timeout=0.25):
            if stop.is_set() or not self._accepting:
                break
        else:
            if self._accepting:
                session.expect(len(incoming))
                self.committer.submit(
                    incoming,
                    lambda records, error: self._stored(session, incoming, records, error),
                    source=session,
                    urgent=any(i.label == QUERY_LABEL for i in incoming),
                )
                return
            self.dispatcher.release(len(incoming))
        reason = "server is shutting down; resend to a live server with the same item_id"
        session.emit([Rejection(i.item_id, 0, RejectCode.UNAVAILABLE, "item_id", reason) for i in incoming])

    def _stored(
        self, session: Session, incoming: list[Incoming], records: list[Record | None] | None, error: Exception | None
    ) -> None:
        if records is None:
            self.dispatcher.release(len(incoming))
            reason = f"not stored ({error}); resend with the same item_id"
            session.emit([Rejection(i.item_id, 0, RejectCode.UNAVAILABLE, "item_id", reason) for i in incoming])
            session.settle(len(incoming))
            return
        events: list[Ack] = []
        duplicates = 0
        with self._origins_lock:
            for item, record in zip(incoming, records, strict=True):
                if record is None:
                    duplicates += 1
                    events.append(Ack(item.item_id, duplicate=True))
                else:
                    self._origins[item.item_id] = session
                    events.append(Ack(item.item_id))
        session.emit(list(events))
        if duplicates:
            self.dispatcher.release(duplicates)
            session.settle(duplicates)

    def submit(
        self, items: Sequence[items_pb2.ScheduleMessageItem], timeout: float = 60.0, principal: Principal = ANONYMOUS
    ) -> list[Ack]:
        """All-or-nothing batch: raises InvalidItems listing every bad item, PermissionDenied for an item of a
        user the caller may not act for, Overloaded when the backlog is full."""
        if not self._accepting:
            raise ShuttingDown("server is shutting down")
        for item in items:
            principal.check(item.user_id)
        errors: list[InvalidItem] = []
        for index, item in enumerate(items):
            try:
                self.validator.check(item, index)
            except InvalidItem as e:
                errors.append(e)
        if errors:
            raise InvalidItems(errors)
        if not items:
            return []
        now = divmod(time.time_ns(), 1_000_000_000)
        incoming = [self._prepare(item, now) for item in items]
        if not self.dispatcher.admit(len(incoming), timeout=0):
            raise Overloaded(f"backlog is at its limit of {self.settings.limits.max_backlog} items; retry later")
        done = threading.Event()
        outcome: list[list[Record | None] | Exception] = []

        def stored(records: list[Record | None] | None, error: Exception | None) -> None:
            if records is None:
                self.dispatcher.release(len(incoming))
                outcome.append(error or StorageError("not stored"))
            else:
                duplicates = sum(1 for r in records if r is None)
                if duplicates:
                    self.dispatcher.release(duplicates)
                outcome.append(records)
            done.set()

        self.committer.submit(incoming, stored, urgent=any(i.label == QUERY_LABEL for i in incoming))
        if not done.wait(timeout):
            raise StorageError("the inbox did not commit in time; resend with the same item_ids")
        result = outcome[0]
        if isinstance(result, Exception):
            raise StorageError(str(result)) from result
        return [Ack(i.item_id, duplicate=r is None) for i, r in zip(incoming, result, strict=True)]

    def add_finish_observer(self, observer: Callable[[list[Finished]], None]) -> None:
        """Call ``observer`` with every batch of finished items (metrics, dashboards); it must be quick."""
        self._finish_observers.append(observer)

    def _on_finished(self, finished: list[Finished]) -> None:
        for observer in self._finish_observers:
            try:
                observer(finished)
            except Exception:
                log.exception("finish observer %r failed", observer)
        self.feed.publish(log for f in finished for log in f.logs)
        with self._origins_lock:
            targets = [(self._origins.pop(f.record.item_id, None), f) for f in finished]
        for session, f in targets:
            if session is not None:
                session.finished(Completion(f.record.item_id, f.state, f.error), f.logs)

    # reading
    def status(self, item_id: str) -> ItemStatus:
        status = self.dispatcher.live_status(item_id) or self.inbox.status(item_id)
        if status is None:
            raise NotFound(f"no item with item_id {item_id!r} was accepted")
        return status

    def task_status(self, task_id: str) -> tuple[TaskState, list[ItemStatus]]:
        statuses = []
        for item_id in self.inbox.task_items(task_id):
            try:
                statuses.append(self.status(item_id))
            except NotFound:
                continue
        if not statuses:
            raise NotFound(f"no item with task_id {task_id!r} was accepted")
        states = {s.state for s in statuses}
        for state in (TaskState.FAILED, TaskState.IN_PROGRESS, TaskState.WAITING):
            if state in states:
                return state, statuses
        return TaskState.COMPLETED, statuses

    def wait_idle(self, user_id: str, mem_cube_id: str, timeout: float) -> int:
        return self.dispatcher.wait_idle(user_id, mem_cube_id, min(max(timeout, 0.0), MAX_WAIT_SECONDS))

    def read_memory(
        self, user_id: str, mem_cube_id: str, types: Sequence[MemoryType], limit: int, include_archived: bool = False
    ) -> CubeView:
        tables = self.shards.for_cube(user_id, mem_cube_id)
        key = keys.cube_key(user_id, mem_cube_id)
        caps = self.settings.scheduler.capacities
        wanted = list(types) or list(READABLE_TYPES)
        with tables.env.read() as txn:
            state = tables.load_state(txn, key) or CubeState(user_id=user_id, mem_cube_id=mem_cube_id)
            partitions = []
            for memory_type in wanted:
                if memory_type == MemoryType.WORKING:
                    part = Partition(memory_type, len(state.working), caps.working_memory_capacity)
                    for entry in state.working[: limit or None]:
                        item = tables.find_memory(txn, key, entry.id)
                        if item is not None:
                            part.items.append((item, entry))
                elif memory_type in (MemoryType.LONG_TERM, MemoryType.USER):
                    size = state.long_term_size if memory_type == MemoryType.LONG_TERM else state.user_size
                    capacity = (
                        caps.long_term_memory_capacity
                        if memory_type == MemoryType.LONG_TERM
                        else caps.user_memory_capacity
                    )
                    part = Partition(memory_type, size, capacity)
                    items = sorted(
                        tables.iter_memories(txn, key, memory_type), key=lambda m: m.created_at, reverse=True
                    )
                    part.items = [(m, None) for m in items[: limit or None]]
                elif memory_type == MemoryType.ACTIVATION:
                    part = Partition(memory_type, state.activation_size, caps.transformed_act_memory_capacity)
                else:
                    raise InvalidRequest("memory_types", f"{memory_type} is not a readable partition")
                partitions.append(part)
            archived: list[MemoryItem] = []
            if include_archived:
                for memory_type in (MemoryType.LONG_TERM, MemoryType.USER):
                    archived.extend(tables.iter_archive(txn, key, memory_type))
                archived.sort(key=lambda m: m.updated_at, reverse=True)
        return CubeView(state, partitions, cube_sizes(state), caps, archived[: limit or None])

    def history(self, user_id: str, mem_cube_id: str, last: int) -> list[EncodedLog]:
        """Recent log items of one cube, or of every cube of the user (each cube's in order)."""
        if last <= 0:
            return []
        cubes = [mem_cube_id] if mem_cube_id else self.cubes_of(user_id)
        out: list[EncodedLog] = []
        for cube in cubes:
            tables = self.shards.for_cube(user_id, cube)
            with tables.env.read() as txn:
                out.extend(tables.history(txn, keys.cube_key(user_id, cube), last))
        return out

    def cubes_of(self, user_id: str) -> list[str]:
        out: list[str] = []
        for tables in self.shards.all():
            with tables.env.read() as txn:
                out.extend(state.mem_cube_id for state in tables.iter_cubes(txn, user_id))
        return sorted(out)

    def watch(
        self, user_id: str, mem_cube_id: str, labels: Sequence[str], replay: int
    ) -> tuple[Subscription, list[EncodedLog]]:
        """Subscribe first, then read history, so nothing falls between replay and live items."""
        sub = self.feed.subscribe(user_id, mem_cube_id, labels)
        history = self.history(user_id, mem_cube_id, replay)
        return sub, [log for log in history if sub.matches(log)]

    def list_cubes(self, user_id: str) -> list[CubeSummary]:
        """Every cube with stored state (of one user, or all), with its pending count."""
        pending = self.dispatcher.pending_by_cube()
        out = []
        for tables in self.shards.all():
            with tables.env.read() as txn:
                states = list(tables.iter_cubes(txn, user_id))
            for st in states:
                out.append(CubeSummary(st, pending.get((st.user_id, st.mem_cube_id), 0)))
        seen = {(c.state.user_id, c.state.mem_cube_id) for c in out}
        for (user, cube), count in pending.items():  # cubes whose first item is still queued
            if (user, cube) not in seen and (not user_id or user == user_id):
                out.append(CubeSummary(CubeState(user_id=user, mem_cube_id=cube), count))
        return sorted(out, key=lambda c: (c.state.user_id, c.state.mem_cube_id))

    def cube_state(self, user_id: str, mem_cube_id: str) -> tuple[CubeState, dict[str, int]]:
        """A cube's state and the usage counts of its working memories."""
        tables = self.shards.for_cube(user_id, mem_cube_id)
        key = keys.cube_key(user_id, mem_cube_id)
        with tables.env.read() as txn:
            state = tables.load_state(txn, key)
            if state is None:
                raise NotFound(f"cube {mem_cube_id!r} of user {user_id!r} has no state yet")
            usage = {}
            for entry in state.working:
                item = tables.find_memory(txn, key, entry.id)
                usage[entry.id] = item.usage_count if item else 0
        return state, usage

    def dead_letters(self, user_id: str, mem_cube_id: str, limit: int) -> list[ItemStatus]:
        if mem_cube_id and not user_id:
            raise InvalidRequest("user_id", "is required when mem_cube_id is set")
        return self.inbox.dead_letters(user_id, mem_cube_id, limit or 1000)

    def redrive(self, item_ids: Sequence[str]) -> list[str]:
        if not item_ids:
            raise InvalidRequest("item_ids", "must list at least one item")
        if not self._accepting:
            raise ShuttingDown("server is shutting down")
        records = self.inbox.redrive(list(item_ids))
        self.dispatcher.redrive(records)
        return [r.item_id for r in records]

    def info_capacities(self) -> MemoryCapacities:
        return self.settings.scheduler.capacities

    @property
    def accepting(self) -> bool:
        return self._accepting
