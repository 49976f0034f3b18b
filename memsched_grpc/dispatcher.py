"""The dispatcher: routes accepted items to workers (cube -> shard -> worker, so each cube keeps its order),
tracks what is unfinished, finishes items in the inbox, and redelivers a dead worker's items.

It is also where backlog and idleness are known: admission control blocks or refuses new work when the
backlog is full, and waiters learn when a user's or cube's queue drains.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from memsched_grpc.config import Settings
from memsched_grpc.encoded_log import EncodedLog
from memsched_grpc.inbox import FinishCallback, Inbox, Record, finish_now
from memsched_grpc.models import ItemStatus, TaskState
from memsched_grpc.pool import WorkerPool
from memsched_grpc.store import keys
from memsched_grpc.worker import FAILED, OK, QUERY_LABEL, RETRY, ResultTuple

log = logging.getLogger(__name__)
LOW_WATER_INTERVAL = 1.0
RECORD_RETRY = 1.0  # seconds before recording finished items in the inbox again after a storage error


@dataclass(slots=True)
class Finished:
    """An item that left the scheduler: its final state, error and the log items it caused."""

    record: Record
    state: TaskState
    error: str
    logs: list[EncodedLog]
    handler_seconds: float = 0.0


FinishListener = Callable[[list[Finished]], None]


class Dispatcher:
    def __init__(self, settings: Settings, inbox: Inbox, listener: FinishListener) -> None:
        self.settings = settings
        self.inbox = inbox
        self.listener = listener
        self.finish_in_inbox: Callable[[list[tuple[Record, TaskState]], FinishCallback], None] = partial(
            finish_now, inbox
        )
        """How finished items reach the inbox; the scheduler routes it through the group commit."""
        self._failures_unrecorded = 0
        self.pool = WorkerPool(settings, self._on_results, self._on_death)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._records: dict[int, Record] = {}
        self._by_item: dict[str, Record] = {}
        self._by_worker: list[dict[int, Record]] = [{} for _ in range(self.pool.size)]
        # Items a worker holds (sent, not finished) are bounded by a credit; the rest wait here per cube, so
        # that a cube with a waiting query can be handed out ahead of other cubes' backlog. A worker's queue is
        # FIFO: what is in it cannot be reordered any more.
        self._held: list[OrderedDict[tuple[str, str], deque[Record]]] = [OrderedDict() for _ in range(self.pool.size)]
        self._held_queries: list[Counter[tuple[str, str]]] = [Counter() for _ in range(self.pool.size)]
        self._sent = [0] * self.pool.size
        self._pump_locks = [threading.Lock() for _ in range(self.pool.size)]
        self._users: Counter[str] = Counter()
        self._cubes: Counter[tuple[str, str]] = Counter()
        self._outstanding = 0
        self._low_water = 0
        self._low_water_at = 0.0
        self._results: queue.SimpleQueue[tuple[int, list[ResultTuple]] | None] = queue.SimpleQueue()
        self._finisher = threading.Thread(target=self._finish_loop, name="dispatcher-finish", daemon=True)

    def start(self, recovered: list[Record]) -> None:
        self.pool.start()
        self._finisher.start()
        if recovered:
            log.info("redelivering %d accepted items that were not finished", len(recovered))
            with self._lock:
                self._outstanding += len(recovered)
            self.dispatch(recovered)

    # admission
    def admit(self, count: int, timeout: float | None) -> bool:
        """Reserve backlog room for ``count`` items; wait up to ``timeout`` (None: forever, 0: not at all)."""
        limit = self.settings.limits.max_backlog
        with self._changed:
            ok = self._changed.wait_for(lambda: self._outstanding == 0 or self._outstanding + count <= limit, timeout)
            if ok:
                self._outstanding += count
            return ok

    def release(self, count: int) -> None:
        """Give back room reserved for items that turned out duplicates or were never stored."""
        with self._changed:
            self._outstanding -= count
            self._changed.notify_all()

    # hand-off
    def dispatch(self, records: list[Record]) -> None:
        """Queue committed items for their cube's worker, in acceptance order, and hand out what credit allows."""
        if not records:
            return
        size = self.pool.size
        workers: set[int] = set()
        with self._lock:
            for r in records:
                worker = keys.shard_of(r.user_id, r.mem_cube_id, self.inbox.shards) % size
                r.worker = worker
                self._records[r.seq] = r
                self._by_item[r.item_id] = r
                cube = (r.user_id, r.mem_cube_id)
                self._held[worker].setdefault(cube, deque()).append(r)
                if r.label == QUERY_LABEL:
                    self._held_queries[worker][cube] += 1
                self._users[r.user_id] += 1
                self._cubes[cube] += 1
                workers.add(worker)
        for worker in workers:
            self._pump(worker)

    def _pump(self, worker: int) -> None:
        """Hand held items to ``worker`` up to its credit: cubes with a waiting query first (one batch past the
        credit, so a query is not kept waiting for it), then the others in turn. A cube's items always leave in
        order, so per-cube order holds."""
        batch = self.settings.workers.batch_size
        credit = batch * self.settings.workers.held_batches
        with self._pump_locks[worker]:
            with self._lock:
                held, queries = self._held[worker], self._held_queries[worker]
                room = credit - self._sent[worker]
                if room + batch <= 0 or not held:
                    return
                order = sorted(held, key=lambda cube: queries[cube] == 0)
                chunk: list[Record] = []
                for cube in order:
                    if len(chunk) >= (room + batch if queries[cube] else room):
                        break
                    queue_ = held[cube]
                    # past the credit, a query's cube may send up to its last query, within one more batch
                    while queue_ and (len(chunk) < room or (queries[cube] and len(chunk) < room + batch)):
                        r = queue_.popleft()
                        chunk.append(r)
                        if r.label == QUERY_LABEL:
                            queries[cube] -= 1
                            if not queries[cube]:
                                del queries[cube]
                    if queue_:
                        held.move_to_end(cube)
                    else:
                        del held[cube]
                for r in chunk:
                    self._by_worker[worker][r.seq] = r
                self._sent[worker] += len(chunk)
                low_water = self._current_low_water()
            self._send(worker, chunk, low_water)

    def _send(self, worker: int, records: list[Record], low_water: int, redelivery: bool = False) -> None:
        """A redelivery always sends at least one batch (maybe empty): it tells the pool the restart is over."""
        step = self.settings.workers.batch_size
        chunks = [records[i : i + step] for i in range(0, len(records), step)] or ([[]] if redelivery else [])
        for chunk in chunks:
            self.pool.send(worker, (low_water, [(r.seq, r.attempts, r.payload) for r in chunk]), redelivery)

    def _current_low_water(self) -> int:
        """Lowest unfinished seq (workers may forget exactly-once markers below it); refreshed once a second."""
        now = time.monotonic()
        if now - self._low_water_at > LOW_WATER_INTERVAL:
            self._low_water = min(self._records, default=self.inbox.next_seq)
            self._low_water_at = now
        return self._low_water

    # results
    def _on_results(self, worker: int, results: list[ResultTuple]) -> None:
        self._results.put((worker, results))

    def _finish_loop(self) -> None:
        while True:
            first = self._results.get()
            if first is None:
                return
            batch = [first]
            while True:
                try:
                    nxt = self._results.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._results.put(None)
                    break
                batch.append(nxt)
            try:
                self._finish(batch)
            except Exception:
                log.exception(
                    "finishing %d result batches failed; their items stay pending and will be redelivered", len(batch)
                )

    def _finish(self, batch: list[tuple[int, list[ResultTuple]]]) -> None:
        finished: list[Finished] = []
        with self._lock:
            for _, results in batch:
                for seq, outcome, error, attempts, logs, elapsed in results:
                    record = self._records.get(seq)
                    if record is None or record.outcome is not None:  # reported twice (redelivered): the first counts
                        continue
                    record.attempts = attempts
                    if outcome == RETRY:
                        record.error = error
                        continue
                    state = TaskState.COMPLETED if outcome == OK else TaskState.FAILED
                    record.error = error if outcome == FAILED else ""
                    finished.append(Finished(record, state, record.error, logs, elapsed))
        self._complete(finished)

    def _complete(self, finished: list[Finished]) -> None:
        """Tell listeners, and record the outcome in the inbox without waiting for it (the finisher goes on
        with the next results). Completed items are told at once: their effects and logs are already committed
        in the worker's shard, and a crash before the inbox records them only redelivers items whose
        exactly-once markers stay (they are kept above the lowest unfinished seq). Failures are told after the
        inbox recorded them, so a dead letter is listed by the time its client hears of it; while one waits,
        later outcomes wait too, so outcomes reach listeners in the order they came."""
        if not finished:
            return
        workers: set[int] = set()
        with self._changed:
            for f in finished:
                r = f.record
                r.outcome = f.state
                # the worker is done with it: its credit goes to the next items now, not when the inbox records
                # it (up to FINISH_DELAY later), or a query would wait for that
                if self._by_worker[r.worker].pop(r.seq, None) is not None:
                    self._sent[r.worker] -= 1
                    workers.add(r.worker)
            failures = sum(1 for f in finished if f.state == TaskState.FAILED)
            tell_now = not failures and not self._failures_unrecorded
            self._failures_unrecorded += failures
            if tell_now:
                self._uncount(finished)
                self._changed.notify_all()
        if tell_now:
            self.listener(finished)
        self.finish_in_inbox(
            [(f.record, f.state) for f in finished], partial(self._recorded, finished, failures, not tell_now)
        )
        for worker in workers:
            self._pump(worker)

    def _recorded(self, finished: list[Finished], failures: int, tell: bool, error: Exception | None) -> None:
        """The inbox recorded ``finished`` (runs on its commit thread), or failed to, and it is tried again: until
        then the items hold their place (their markers are kept, their cube's count for failures)."""
        if error is not None:
            log.error("recording %d finished items failed (%s); retrying in %.0f s", len(finished), error, RECORD_RETRY)
            retry = threading.Timer(
                RECORD_RETRY,
                self.finish_in_inbox,
                ([(f.record, f.state) for f in finished], partial(self._recorded, finished, failures, tell)),
            )
            retry.daemon = True
            retry.start()
            return
        with self._changed:
            self._failures_unrecorded -= failures
            for f in finished:
                r = f.record
                if self._records.pop(r.seq, None) is None:
                    continue
                self._by_item.pop(r.item_id, None)
            if tell:
                self._uncount(finished)
            self._changed.notify_all()
        if tell:
            self.listener(finished)

    def _uncount(self, finished: list[Finished]) -> None:
        """Take told items off the backlog and the per-user and per-cube counts (what admission, WaitIdle and the
        cube listing see), so that a client that heard of an outcome never sees the item pending. Called once
        per item, under the lock; the caller notifies the waiters."""
        self._outstanding -= len(finished)
        for f in finished:
            r = f.record
            self._users[r.user_id] -= 1
            if not self._users[r.user_id]:
                del self._users[r.user_id]
            cube = (r.user_id, r.mem_cube_id)
            self._cubes[cube] -= 1
            if not self._cubes[cube]:
                del self._cubes[cube]

    def _on_death(self, worker: int, culprit_seq: int) -> None:
        """The worker was replaced: charge an attempt to the item it was handling, redeliver what it held
        (before anything still held here, which is later in every cube)."""
        max_attempts = self.settings.workers.max_attempts
        failed: list[Finished] = []
        with self._pump_locks[worker]:
            with self._lock:
                records = [self._by_worker[worker][s] for s in sorted(self._by_worker[worker])]
                redeliver = []
                for r in records:
                    if r.outcome is not None:  # finished, being recorded
                        continue
                    if r.seq == culprit_seq:
                        r.attempts += 1
                        r.error = f"worker process died while handling it (attempt {r.attempts})"
                        if r.attempts >= max_attempts:
                            failed.append(Finished(r, TaskState.FAILED, r.error, []))
                            continue
                    redeliver.append(r)
                low_water = self._current_low_water()
            log.warning("redelivering %d items of dead worker %d (culprit seq %d)", len(redeliver), worker, culprit_seq)
            self._send(worker, redeliver, low_water, redelivery=True)
        self._complete(failed)

    def redrive(self, records: list[Record]) -> None:
        """Dead letters put back in the inbox: count them as outstanding and send them out."""
        with self._changed:
            self._outstanding += len(records)
        self.dispatch(records)

    def live_status(self, item_id: str) -> ItemStatus | None:
        """The final state of an item finished but not yet recorded in the inbox; IN_PROGRESS with attempts and
        last error for an item handed to a worker; else None (the inbox knows)."""
        with self._lock:
            record = self._by_item.get(item_id)
            if record is None:
                return None
            if record.outcome is not None:  # finished; the inbox is about to record it
                return record.status(record.outcome, finished=True)
            if record.seq not in self._by_worker[record.worker]:
                return None  # still held here: the inbox says WAITING, which is what it is
            return record.status(TaskState.IN_PROGRESS)

    def pending(self, user_id: str, mem_cube_id: str = "") -> int:
        with self._lock:
            return self._cubes[(user_id, mem_cube_id)] if mem_cube_id else self._users[user_id]

    def wait_idle(self, user_id: str, mem_cube_id: str, timeout: float) -> int:
        """Wait until nothing of the user (or cube) is unfinished; returns what is still pending."""

        def count() -> int:
            return self._cubes[(user_id, mem_cube_id)] if mem_cube_id else self._users[user_id]

        with self._changed:
            self._changed.wait_for(lambda: count() == 0, timeout)
            return count()

    def pending_by_cube(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._cubes)

    def wait_all_idle(self, timeout: float) -> int:
        with self._changed:
            self._changed.wait_for(lambda: not self._records, timeout)
            return len(self._records)

    @property
    def backlog(self) -> int:
        with self._lock:
            return self._outstanding

    def stop(self, timeout: float) -> None:
        self.pool.stop(timeout)
        self._results.put(None)
        self._finisher.join(5)
