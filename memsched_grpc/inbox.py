"""The durable inbox: accepted items are committed to LMDB (group commit) before anyone hears "ack",
stay there until their handler finished, and are found again after a crash.

It also holds each item's status record, which doubles as the registry of item ids that makes a resent
item a duplicate instead of a second execution.

The item_id index is written once per acceptance (item_id -> its sequence number) and never when the item
finishes: the outcome goes to tables keyed by sequence number, which finished items reach nearly in order.
Item ids are random, so an index write dirties a page of its own; finishing 40 items used to rewrite ~40
scattered index pages in the commit the next acks waited for. Data dirs written before keep the outcome's
letter (C or F) in the index value too; it is read the same way, the tables keyed by seq decide.

A final status is written on the commit thread for every finished item, so it is packed by hand (~0.6 µs)
rather than as the ItemStatus model's JSON (~12 µs); values written as JSON by earlier versions still read.
"""

from __future__ import annotations

import logging
import queue
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import lmdb

from memsched_grpc.config import StorageConfig
from memsched_grpc.errors import ShuttingDown, StorageError
from memsched_grpc.models import ItemStatus, TaskState
from memsched_grpc.store import keys
from memsched_grpc.store.environment import Environment, as_bytes

log = logging.getLogger(__name__)

DB_NAMES = ("status", "pending", "tasks", "meta", "dead", "finished", "final")
_ACCEPTED = b"W"  # first byte of an index value; the 8 bytes after it are the item's sequence number
MAX_GROUP_ITEMS = 20_000  # accepted items per commit (a larger request commits whole), and finished items held
FINISH_DELAY = 0.02  # seconds a finished item may wait to be recorded in the inbox (see GroupCommitter._run)
_FINAL_VERSION = b"\x01"  # first byte of a packed final status; JSON ones (earlier versions) start with "{"
_FINAL_HEAD = struct.Struct(">Iqq")  # attempts, accepted_ns, finished_ns
_FINAL_SEP = "\x1f"  # ids cannot hold control characters (validation); the error, which may, comes last


@dataclass(slots=True)
class Incoming:
    """A validated item on its way into the inbox; payload is its ScheduleMessageItem encoding."""

    item_id: str
    user_id: str
    mem_cube_id: str
    label: str
    task_id: str
    payload: bytes


@dataclass(slots=True)
class Record:
    """An accepted, unfinished item as the dispatcher tracks it."""

    seq: int
    item_id: str
    user_id: str
    mem_cube_id: str
    label: str
    task_id: str
    payload: bytes
    accepted_ns: int
    attempts: int = 0
    error: str = ""
    worker: int = -1
    outcome: TaskState | None = None
    """Set once a worker reported it finished, before the inbox records that (status reads see it at once)."""

    def status(self, state: TaskState, finished: bool = False) -> ItemStatus:
        return ItemStatus(
            item_id=self.item_id,
            user_id=self.user_id,
            mem_cube_id=self.mem_cube_id,
            label=self.label,
            task_id=self.task_id,
            state=state,
            error=self.error,
            attempts=self.attempts,
            accepted_at=datetime.fromtimestamp(self.accepted_ns / 1e9, UTC),
            finished_at=datetime.now(UTC) if finished else None,
            seq=self.seq,
        )

    def final_value(self, state: TaskState, finished_ns: int) -> bytes:
        """The packed final status stored under the item's seq (read back by ``final_status``)."""
        head = _FINAL_HEAD.pack(self.attempts, self.accepted_ns, finished_ns)
        fields = (state.value, self.item_id, self.user_id, self.mem_cube_id, self.label, self.task_id, self.error)
        return _FINAL_VERSION + head + _FINAL_SEP.join(fields).encode(errors="replace")


def final_status(seq: int, value: bytes) -> ItemStatus:
    """A final status as stored by ``Record.final_value``, or as JSON by versions before it."""
    if value[:1] != _FINAL_VERSION:
        return ItemStatus.model_validate_json(value)
    attempts, accepted_ns, finished_ns = _FINAL_HEAD.unpack_from(value, 1)
    state, item_id, user_id, mem_cube_id, label, task_id, error = (
        value[1 + _FINAL_HEAD.size :].decode().split(_FINAL_SEP, 6)
    )
    return ItemStatus(
        item_id=item_id,
        user_id=user_id,
        mem_cube_id=mem_cube_id,
        label=label,
        task_id=task_id,
        state=TaskState(state),
        error=error,
        attempts=attempts,
        accepted_at=datetime.fromtimestamp(accepted_ns / 1e9, UTC),
        finished_at=datetime.fromtimestamp(finished_ns / 1e9, UTC),
        seq=seq,
    )


class Inbox:
    def __init__(self, storage: StorageConfig) -> None:
        # No nested transactions here, so the inbox may write through its map (see Environment).
        self.env = Environment(
            storage.data_dir / "inbox", storage.map_size_mb << 20, storage.sync, DB_NAMES, storage.inbox_writemap
        )
        self._status = self.env.dbs["status"]
        self._pending = self.env.dbs["pending"]
        self._tasks = self.env.dbs["tasks"]
        self._meta = self.env.dbs["meta"]
        self._dead = self.env.dbs["dead"]
        self._finished = self.env.dbs["finished"]
        self._final = self.env.dbs["final"]
        self._seq_lock = threading.Lock()  # accept and redrive both hand out sequence numbers
        self.shards = self._fix_shards(storage.shards)
        with self.env.read() as txn:
            raw = txn.get(b"next_seq", db=self._meta)
        self._next_seq = int.from_bytes(raw, "big") if raw else 1

    def _fix_shards(self, wanted: int) -> int:
        """The shard count is part of the data layout: the first start records it, later starts obey it."""

        def fix(txn: lmdb.Transaction) -> int:
            raw = txn.get(b"shards", db=self._meta)
            if raw is None:
                txn.put(b"shards", str(wanted).encode(), db=self._meta)
                return wanted
            return int(raw)

        shards = self.env.write(fix)
        if shards != wanted:
            log.warning("data dir was created with %d shards; ignoring storage.shards=%d", shards, wanted)
        return shards

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def accept(self, items: list[Incoming], done: list[tuple[Record, TaskState]] | None = None) -> list[Record | None]:
        """Store new items, and finish ``done`` items, in one transaction (one fsync for both).
        Returns a Record per new item, None per duplicate id."""
        with self._seq_lock:
            return self._accept(items, done or [])

    def _accept(self, items: list[Incoming], done: list[tuple[Record, TaskState]]) -> list[Record | None]:
        now = time.time_ns()
        start_seq = self._next_seq

        def write(txn: lmdb.Transaction) -> list[Record | None]:
            seq = start_seq
            out: list[Record | None] = []
            put = txn.put
            status_db, pending_db, tasks_db = self._status, self._pending, self._tasks
            stamp = now.to_bytes(8, "big")
            for item in items:
                item_key = item.item_id.encode()
                seq_key = keys.seq_key(seq)
                if not put(item_key, _ACCEPTED + seq_key, db=status_db, overwrite=False):
                    out.append(None)
                    continue
                put(seq_key, stamp + item.payload, db=pending_db, append=True)
                if item.task_id:
                    put(item.task_id.encode() + keys.CUBE_SEP + item_key, b"", db=tasks_db)
                out.append(
                    Record(
                        seq, item.item_id, item.user_id, item.mem_cube_id, item.label, item.task_id, item.payload, now
                    )
                )
                seq += 1
            put(b"next_seq", seq.to_bytes(8, "big"), db=self._meta)
            self._finish_in(txn, done, now)
            return out

        records = self.env.write(write)
        self._next_seq = start_seq + sum(1 for r in records if r is not None)
        return records

    def finish(self, done: list[tuple[Record, TaskState]]) -> None:
        """Record final states and take the items off the pending table, in one transaction of its own
        (the GroupCommitter usually does this inside an accept's transaction instead)."""
        now = time.time_ns()
        self.env.write(lambda txn: self._finish_in(txn, done, now))

    def _finish_in(self, txn: lmdb.Transaction, done: list[tuple[Record, TaskState]], now: int) -> None:
        """Only tables keyed by seq (and the finished-at index, in time order) change: not the item_id index.
        Failed items keep their payload in the dead-letter table, from where they can be re-driven."""
        finished_at = now.to_bytes(8, "big")
        for record, state in done:
            seq = keys.seq_key(record.seq)
            txn.put(seq, record.final_value(state, now), db=self._final)
            if state == TaskState.FAILED:
                txn.put(seq, record.accepted_ns.to_bytes(8, "big") + record.payload, db=self._dead)
            txn.delete(seq, db=self._pending)
            txn.put(finished_at + record.item_id.encode(), b"", db=self._finished)

    def _final_status(self, txn: lmdb.Transaction, index_value: bytes) -> ItemStatus | None:
        seq = index_value[1:9]
        raw = txn.get(seq, db=self._final)
        return None if raw is None else final_status(int.from_bytes(seq, "big"), as_bytes(raw))

    def purge_finished(self, older_than_ns: int, limit: int = 10_000) -> int:
        """Forget up to ``limit`` items that finished before ``older_than_ns``: their status record, and with it
        the memory of their item_id (resent later, such an id counts as new). Dead letters are kept until
        re-driven. Returns how many were forgotten."""
        horizon = older_than_ns.to_bytes(8, "big")

        def write(txn: lmdb.Transaction) -> int:
            cursor = txn.cursor(db=self._finished)
            purged = 0
            if not cursor.first():
                return 0
            while purged < limit:
                key = as_bytes(cursor.key())
                if not key or key[:8] >= horizon:
                    break
                item_key = key[8:]
                raw = txn.get(item_key, db=self._status)
                if raw is not None:
                    value = as_bytes(raw)
                    if txn.get(value[1:9], db=self._dead) is not None:
                        if not cursor.next():  # a dead letter is kept until it is re-driven
                            break
                        continue
                    # Without a final status under its current seq, the item was re-driven and is pending
                    # again: keep it.
                    status = self._final_status(txn, value)
                    if status is not None:
                        if status.task_id:
                            txn.delete(status.task_id.encode() + keys.CUBE_SEP + item_key, db=self._tasks)
                        txn.delete(value[1:9], db=self._final)
                        txn.delete(item_key, db=self._status)
                        purged += 1
                if not cursor.delete():
                    break
            return purged

        return self.env.write(write)

    def dead_letters(self, user_id: str, mem_cube_id: str, limit: int) -> list[ItemStatus]:
        """Failed items, oldest first, optionally of one user or cube."""
        from memsched.v1 import items_pb2

        out: list[ItemStatus] = []
        with self.env.read() as txn:
            for _, raw in txn.cursor(db=self._dead):
                item = items_pb2.ScheduleMessageItem.FromString(as_bytes(raw)[8:])
                if (user_id and item.user_id != user_id) or (mem_cube_id and item.mem_cube_id != mem_cube_id):
                    continue
                index = txn.get(item.item_id.encode(), db=self._status)
                status = None if index is None else self._final_status(txn, as_bytes(index))
                if status is not None:
                    out.append(status)
                if len(out) >= limit:
                    break
        return out

    def redrive(self, item_ids: list[str]) -> list[Record]:
        """Move dead letters back to the pending table under fresh sequence numbers (order of ``item_ids``)."""
        with self._seq_lock:
            start_seq = self._next_seq

            def write(txn: lmdb.Transaction) -> list[Record]:
                seq = start_seq
                out = []
                for item_id in dict.fromkeys(item_ids):
                    raw = txn.get(item_id.encode(), db=self._status)
                    if raw is None:
                        continue
                    old = as_bytes(raw)[1:9]
                    dead = txn.get(old, db=self._dead)  # only failed items have a dead letter
                    if dead is None:
                        continue
                    value = as_bytes(dead)
                    txn.delete(old, db=self._dead)
                    txn.delete(old, db=self._final)
                    txn.put(keys.seq_key(seq), value, db=self._pending, append=True)
                    txn.put(item_id.encode(), _ACCEPTED + keys.seq_key(seq), db=self._status)
                    out.append(_pending_record(seq, value))
                    seq += 1
                txn.put(b"next_seq", seq.to_bytes(8, "big"), db=self._meta)
                return out

            records = self.env.write(write)
            self._next_seq = start_seq + len(records)
            return records

    def recover(self) -> Iterator[Record]:
        """Every accepted, unfinished item in acceptance order (after a crash or a stop)."""
        with self.env.read() as txn:
            rows = list(txn.cursor(db=self._pending))
        for key, raw in rows:
            yield _pending_record(int.from_bytes(key, "big"), as_bytes(raw))

    def status(self, item_id: str) -> ItemStatus | None:
        """The stored status (WAITING for anything not finished); the dispatcher overlays live progress."""
        with self.env.read() as txn:
            raw = txn.get(item_id.encode(), db=self._status)
            if raw is None:
                return None
            final = self._final_status(txn, as_bytes(raw))
            if final is not None:
                return final
            pending = txn.get(as_bytes(raw)[1:9], db=self._pending)
        if pending is None:
            return None
        return _pending_record(int.from_bytes(raw[1:9], "big"), as_bytes(pending)).status(TaskState.WAITING)

    def task_items(self, task_id: str) -> list[str]:
        prefix = task_id.encode() + keys.CUBE_SEP
        out = []
        with self.env.read() as txn:
            cursor = txn.cursor(db=self._tasks)
            if cursor.set_range(prefix):
                for raw in cursor.iternext(values=False):
                    key = as_bytes(raw)
                    if not key.startswith(prefix):
                        break
                    out.append(key[len(prefix) :].decode())
        return out

    def close(self) -> None:
        self.env.close()


AcceptCallback = Callable[[list[Record | None] | None, Exception | None], None]


@dataclass(slots=True)
class _Accept:
    items: list[Incoming]
    callback: AcceptCallback
    source: object
    """The stream (or call) the items came from: its requests commit in the order they were submitted."""
    urgent: bool


FinishCallback = Callable[[Exception | None], None]


@dataclass(slots=True)
class _Finish:
    done: list[tuple[Record, TaskState]]
    on_committed: FinishCallback


class GroupCommitter:
    """One thread that commits what every stream accepts and every finished item, together: one fsync for
    many items. Accepts and finishes share the inbox's single write lock, so taking turns for it costs more
    than committing both in one transaction."""

    def __init__(self, inbox: Inbox, after_commit: Callable[[list[Record]], None]) -> None:
        self.inbox = inbox
        self.after_commit = after_commit
        self._requests: queue.SimpleQueue[_Accept | _Finish | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="inbox-commit", daemon=True)
        self._lock = threading.Lock()
        self._open = True

    def start(self) -> None:
        self._thread.start()

    def submit(
        self, items: list[Incoming], callback: AcceptCallback, source: object | None = None, urgent: bool = False
    ) -> None:
        """``callback(records, None)`` after the commit, or ``callback(None, error)``; runs on the commit thread.
        Requests of one ``source`` commit in submission order; an ``urgent`` one (someone waits for its result)
        goes ahead of other sources' requests."""
        with self._lock:
            if self._open:
                self._requests.put(_Accept(items, callback, object() if source is None else source, urgent))
                return
        callback(None, ShuttingDown("the inbox no longer accepts items"))

    def finish(self, done: list[tuple[Record, TaskState]], on_committed: FinishCallback) -> None:
        """Finish items in the next group commit; ``on_committed(error)`` runs on the commit thread after it.
        After stop(), they commit at once in a transaction of their own."""
        with self._lock:
            if self._open:
                self._requests.put(_Finish(done, on_committed))
                return
        finish_now(self.inbox, done, on_committed)

    def stop(self) -> None:
        """Commit what is queued, then stop; later finishes commit on their own."""
        with self._lock:
            self._open = False
            self._requests.put(None)
        self._thread.join(30)

    def _run(self) -> None:
        """Accepts commit as soon as the previous commit is done: a client waits for their acks. Finishes are
        only recorded (their outcome is told already), so they wait up to FINISH_DELAY and then ride along with
        the next commit: fewer, larger finish groups write each status page once for many items, and the
        accept commits that clients wait for stay small."""
        waiting: deque[_Accept] = deque()
        held: list[_Finish] = []
        held_items = 0
        due = 0.0
        stop = False
        while not stop or waiting or held:
            finishes: list[_Finish] = []
            if not stop:
                wait = 0.0 if waiting else max(0.0, due - time.monotonic()) if held else None
                try:
                    nxt = self._requests.get(timeout=wait)
                    while True:
                        if nxt is None:
                            stop = True
                            break
                        if isinstance(nxt, _Accept):
                            waiting.append(nxt)
                        else:
                            finishes.append(nxt)
                        nxt = self._requests.get_nowait()
                except queue.Empty:
                    pass
            if finishes and not held:
                due = time.monotonic() + FINISH_DELAY
            held.extend(finishes)
            held_items += sum(len(f.done) for f in finishes)
            accepts = _next_accepts(waiting)
            if held and (stop or time.monotonic() >= due or held_items >= MAX_GROUP_ITEMS):
                self._commit(accepts, held)
                held, held_items = [], 0
            elif accepts:
                self._commit(accepts, [])

    def _commit(self, accepts: list[_Accept], finishes: list[_Finish]) -> None:
        items = [item for request in accepts for item in request.items]
        try:
            records = self.inbox.accept(items, [d for request in finishes for d in request.done])
        except (StorageError, lmdb.Error) as e:
            log.error("inbox commit of %d items and %d finishes failed: %s", len(items), len(finishes), e)
            for request in accepts:
                request.callback(None, e)
            for finish in finishes:
                finish.on_committed(e)
            return
        # Callbacks first: they register where each item's logs go and queue the acks, so no completion
        # can overtake its own ack.
        offset = 0
        for request in accepts:
            request.callback(records[offset : offset + len(request.items)], None)
            offset += len(request.items)
        for finish in finishes:
            finish.on_committed(None)
        self.after_commit([r for r in records if r is not None])


def _pending_record(seq: int, value: bytes) -> Record:
    """The item stored under ``seq`` in the pending table (or as a dead letter): its acceptance time in
    nanoseconds, then its payload. Decoding is needed only off the accept path (recovery, re-drive, status)."""
    from memsched.v1 import items_pb2

    item = items_pb2.ScheduleMessageItem.FromString(value[8:])
    return Record(
        seq,
        item.item_id,
        item.user_id,
        item.mem_cube_id,
        item.label,
        item.task_id,
        value[8:],
        int.from_bytes(value[:8], "big"),
    )


def _next_accepts(waiting: deque[_Accept]) -> list[_Accept]:
    """Take the next commit's requests from ``waiting``: in arrival order, up to MAX_GROUP_ITEMS items, except
    that the first urgent request commits next, alone with what its own stream sent before it (a stream's order
    holds).

    A query's client waits for its result, and under full-speed ingest thousands of other items may pile up
    while a commit is under way (one of 3,600 items took 276 ms with the server's threads contending for the
    GIL). In arrival order a query that came meanwhile waited for that commit and then for the next one, which
    carried the whole pile; now it waits for the commit under way only."""
    if not waiting:
        return []
    urgent = next((r for r in waiting if r.urgent), None)
    if urgent is not None:
        group, rest = [], []
        for request in waiting:
            if urgent is not None and request.source is urgent.source:
                group.append(request)
                if request is urgent:
                    urgent = None
            else:
                rest.append(request)
        waiting.clear()
        waiting.extend(rest)
        return group
    group = [waiting.popleft()]
    count = len(group[0].items)
    while waiting and count + len(waiting[0].items) <= MAX_GROUP_ITEMS:
        count += len(waiting[0].items)
        group.append(waiting.popleft())
    return group


def finish_now(inbox: Inbox, done: list[tuple[Record, TaskState]], on_committed: FinishCallback) -> None:
    """Finish items in a transaction of their own, then report like the group commit does."""
    try:
        inbox.finish(done)
    except (StorageError, lmdb.Error) as e:
        log.error("inbox commit of %d finishes failed: %s", len(done), e)
        on_committed(e)
        return
    on_committed(None)
