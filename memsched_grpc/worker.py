"""The worker process: takes accepted messages from its queue, runs their handlers in per-cube order,
commits effects and exactly-once markers in one LMDB transaction per batch, and reports results.

Runs in a spawned child and never imports grpc. Failures are honest: a handler that raises is retried
with backoff (holding back only its own cube) and reported failed after the last attempt, never completed.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from queue import Empty
from typing import Any, Protocol

import lmdb

from memsched_grpc import convert
from memsched_grpc.config import Settings
from memsched_grpc.cube import Cube
from memsched_grpc.encoded_log import EncodedLog
from memsched_grpc.errors import PermanentError, StorageError
from memsched_grpc.handlers import Handler, HandlerContext, build_registry
from memsched_grpc.logging_setup import configure_logging
from memsched_grpc.models import Message
from memsched_grpc.store import keys
from memsched_grpc.store.cubes import CubeTables, shard_path
from memsched_grpc.store.shards import ShardSet

log = logging.getLogger(__name__)

# Wire formats between the server process and a worker: plain tuples pickle ten times faster than objects.
TaskTuple = tuple[int, int, bytes]  # (inbox seq, attempts so far, ScheduleMessageItem bytes)
Batch = tuple[int, list[TaskTuple]]  # (inbox low-water seq, tasks)
OK, RETRY, FAILED = "ok", "retry", "failed"
ResultTuple = tuple[int, str, str, int, list[EncodedLog], float]  # (seq, outcome, error, attempts, logs, seconds)

PRUNE_INTERVAL = 5.0
QUERY_LABEL = "query"
POLL_INTERVAL = 0.001  # how often a round looks for newly arrived work (a query ends the round)
# Garbage collection runs while the worker is idle, not inside handlers (see Worker.run_once). Automatic
# collections are kept as a backstop for a worker that is never idle, at far more allocations than CPython's 700.
IDLE_COLLECT_AFTER = 700
AUTOMATIC_COLLECT_AFTER = 100_000
IDLE_PROJECT_CHUNK = 256  # memories an idle worker places in a cube's latent space per step (~6 ms at 100k)


class TaskSource(Protocol):
    def get(self, block: bool = True, timeout: float | None = None) -> Batch | None: ...


class ResultSink(Protocol):
    def put(self, obj: list[ResultTuple]) -> None: ...


class PipeSink:
    """Results written to the server's pipe by the calling thread, at once (see pool.py for why not a queue)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def put(self, obj: list[ResultTuple]) -> None:
        self.connection.send(obj)


@dataclass(slots=True)
class Pending:
    seq: int
    attempts: int
    message: Message


class Worker:
    def __init__(
        self,
        settings: Settings,
        tasks: TaskSource,
        results: ResultSink,
        current: Synchronized[int] | None = None,
        index: int | None = None,
    ) -> None:
        """``index``: the worker's place in the pool, which owns the shards whose number is ``index`` modulo the
        pool's size (the dispatcher routes so); given, the worker deletes those shards' stale snapshot files and loads
        their snapshotted cubes while idle (``workers.preload_snapshots``)."""
        self.settings = settings
        self.tasks = tasks
        self.results = results
        self.current = current
        self.registry: dict[str, Handler] = build_registry(settings.handlers)
        self.shards = ShardSet(settings.storage, settings.storage.shards)
        self.cubes: OrderedDict[bytes, Cube] = OrderedDict()
        self.queues: OrderedDict[bytes, deque[Pending]] = OrderedDict()
        self.blocked: dict[bytes, float] = {}
        self.low_water = 0
        self.stopping = False
        self._round_ends = 0.0
        self._handled_in_round = 0
        self._cut = False
        self._urgent: dict[bytes, int] = {}
        self._polled_at = 0.0
        self._last_prune: dict[int, float] = {}
        self._preload: list[tuple[int, bytes]] = []
        """(shard, cube key) of snapshotted cubes still to load while idle, the next one last."""
        if index is not None:
            size = settings.workers.count
            for shard in range(self.shards.count):
                if shard % size == index and shard_path(settings.storage.data_dir, shard).exists():
                    tables = self.shards.tables(shard)
                    snapshotted = tables.snapshot_keys()
                    tables.remove_stale_snapshots(snapshotted)
                    if settings.workers.preload_snapshots:
                        self._preload.extend((shard, key) for key in reversed(snapshotted))

    # the loop
    def run(self) -> None:
        while not self.stopping:
            self.run_once(timeout=0.5)
        self.close()

    def run_once(self, timeout: float) -> bool:
        """Take what arrived (waiting at most ``timeout`` when idle), handle what is ready; False on stop.

        A query allocates thousands of short-lived objects, so with CPython's default thresholds the collector
        ran about once a query, inside the handler, and now and then a full collection of ~10 ms: the query
        handler on 10k-memory cubes, in-process, spent 0.26 ms a query collecting and ran ~0.75 ms slower on
        average. The worker collects when it has nothing to do instead (its results are in the pipe by then).

        Idle time also goes to placing large cubes' memories in their latent space, a step of
        IDLE_PROJECT_CHUNK memories at a time between looks at the queue (see _unprojected), and, after a start,
        to loading the cubes that have a snapshot, one at a time (see _preload_one)."""
        wait = self._wait_time(timeout)
        collect = wait > 0 and gc.get_count()[0] >= IDLE_COLLECT_AFTER
        unprojected = self._unprojected() if wait > 0 and not collect else None
        preload = wait > 0 and not collect and unprojected is None and bool(self._preload)
        if unprojected is not None or preload:
            wait = 0.0  # a step of work instead of waiting; the queue is looked at before and after it
        if not self._receive(0.0 if collect else wait):
            self.stopping = True
            return False
        if collect and not self._ready():
            _collect_garbage()
        if unprojected is not None and not self._ready():
            unprojected.project_pending(IDLE_PROJECT_CHUNK)
        if preload and not self._ready():
            self._preload_one()
        self._process_ready()
        return True

    def _preload_one(self) -> None:
        """Load the next snapshotted cube not loaded yet, from its snapshot only (~0.1 s for 10k memories): a cube
        held before a graceful stop is likely asked for again, and its first query then finds it loaded. A cube
        whose snapshot went stale is left for its first message (a load from the records takes ~10x longer).
        Stops at ``max_cached_cubes``."""
        if len(self.cubes) >= self.settings.workers.max_cached_cubes:
            self._preload.clear()
            return
        shard, cube_key = self._preload.pop()
        if cube_key in self.cubes:
            return
        tables = self.shards.tables(shard)
        with tables.env.env.begin() as txn:
            cube = Cube.preload(
                tables, txn, cube_key, self.settings.scheduler.capacities, self.settings.storage.history_per_cube
            )
        if cube is not None:
            self.cubes[cube_key] = cube
            self.cubes.move_to_end(cube_key, last=False)  # behind every cube a message asked for
            log.debug("cube %r preloaded from its snapshot", cube_key)
            gc.freeze()

    def _unprojected(self) -> Cube | None:
        """A loaded cube whose memories are not all placed in its latent space yet, for an idle step.

        Past ``latent_project_limit`` memories a cube's load or latent refit projects none of them, and a query
        projects those it reads the first time it reads them: a 100k cube's first queries after a load took 26-31
        ms against 16-21 ms later (bench.growth). Done while idle, a 100k cube takes ~2 s of otherwise unused CPU,
        and a query that arrives meanwhile waits for one step at most."""
        return next((cube for cube in self.cubes.values() if cube.unprojected), None)

    def _ready(self) -> bool:
        return any(cube not in self.blocked for cube in self.queues)

    def _wait_time(self, timeout: float) -> float:
        if self._ready():
            return 0.0
        if self.blocked:
            return max(0.0, min(min(self.blocked.values()) - time.monotonic(), timeout))
        return timeout

    def _receive(self, wait: float) -> bool:
        try:
            batch = self.tasks.get(timeout=wait) if wait > 0 else self.tasks.get(block=False)
        except Empty:
            return True
        while True:
            if batch is None:
                return False
            low_water, tasks = batch
            self.low_water = max(self.low_water, low_water)
            for seq, attempts, payload in tasks:
                try:
                    message = convert.message_from_bytes(payload)
                except Exception as e:  # stored by a version that let it in: fail the item, not the worker
                    log.error("cannot decode the message of seq %d; failing it", seq, exc_info=True)
                    self.results.put(
                        [(seq, FAILED, f"undecodable message: {type(e).__name__}: {e}", attempts + 1, [], 0.0)]
                    )
                    continue
                cube = keys.cube_key(message.user_id, message.mem_cube_id)
                self.queues.setdefault(cube, deque()).append(Pending(seq, attempts, message))
                if message.label == QUERY_LABEL:  # someone waits for it: the round ends soon, its cube goes first
                    self.queues.move_to_end(cube, last=False)
                    self._cut = True
            try:
                batch = self.tasks.get(block=False)
            except Empty:
                return True

    def _process_ready(self) -> None:
        now = time.monotonic()
        for cube, until in list(self.blocked.items()):
            if until <= now:
                del self.blocked[cube]
        budget = self.settings.workers.batch_size
        self._round_ends = now + self.settings.workers.round_seconds
        self._handled_in_round = 0
        self._cut = False
        self._urgent.clear()
        by_shard: dict[int, list[tuple[bytes, list[Pending]]]] = {}
        for cube, queue in list(self.queues.items()):
            if cube in self.blocked or budget <= 0:
                continue
            take = [queue.popleft() for _ in range(min(budget, len(queue)))]
            budget -= len(take)
            queries = sum(1 for p in take if p.message.label == QUERY_LABEL)
            if queries:
                self._urgent[cube] = queries
            if not queue:
                del self.queues[cube]
            first = take[0].message
            shard = self.shards.shard_of(first.user_id, first.mem_cube_id)
            by_shard.setdefault(shard, []).append((cube, take))
        for shard, work in by_shard.items():
            if self._round_over(None):
                for cube_key, items in work:
                    self._requeue(cube_key, items)
                continue
            self._process_shard(shard, work)

    def _round_over(self, cube: bytes | None) -> bool:
        """A round ends early, so that a query is not kept waiting by other cubes' work: when its time is up,
        when a query was handled (its result goes out with this commit) or when one arrived meanwhile. A cube
        still holding a query of this round is finished first; a round always handles at least one item."""
        if not self._handled_in_round or (cube is not None and cube in self._urgent):
            return False
        now = time.monotonic()
        if now - self._polled_at > POLL_INTERVAL:
            self._polled_at = now
            if not self._receive(0.0):
                self.stopping = True
        return self._cut or now > self._round_ends

    def _requeue(self, cube_key: bytes, items: list[Pending]) -> None:
        queue = self.queues.setdefault(cube_key, deque())
        queue.extendleft(reversed(items))
        if any(p.message.label == QUERY_LABEL for p in items):
            self.queues.move_to_end(cube_key, last=False)

    # one transaction per shard and batch
    def _process_shard(self, shard: int, work: list[tuple[bytes, list[Pending]]]) -> None:
        tables = self.shards.tables(shard)
        attempt = 0
        plan: _Plan

        def apply(txn: lmdb.Transaction) -> _Plan:
            nonlocal attempt
            attempt += 1
            if attempt > 1:  # the map grew and the batch runs again: in-memory cubes may hold rolled-back changes
                for cube_key, _ in work:
                    self._drop_cube(cube_key)
            plan = _Plan()
            for cube_key, items in work:
                self._handle_cube(tables, txn, cube_key, items, plan)
            if time.monotonic() - self._last_prune.get(shard, 0.0) > PRUNE_INTERVAL and self.low_water:
                tables.prune_done(txn, self.low_water)
                self._last_prune[shard] = time.monotonic()
            return plan

        try:
            plan = tables.env.write(apply)
        except (StorageError, lmdb.Error) as e:
            log.exception("shard %d: transaction failed, %d cubes will retry", shard, len(work))
            plan = _Plan()
            for cube_key, items in work:
                self._drop_cube(cube_key)
                self._fail(cube_key, items, f"storage: {e}", plan)
        for cube_key, items in plan.requeue:
            self._requeue(cube_key, items)
        self.blocked.update(plan.blocked)
        if plan.results:
            self.results.put(plan.results)

    def _handle_cube(
        self, tables: CubeTables, txn: lmdb.Transaction, cube_key: bytes, items: list[Pending], plan: _Plan
    ) -> None:
        for i, pending in enumerate(items):
            if self._round_over(cube_key) or self.stopping:
                # the round is over, or asked to stop: commit what is done, the rest waits for the next round
                plan.requeue.append((cube_key, items[i:]))
                return
            self._handled_in_round += 1
            if pending.message.label == QUERY_LABEL:
                self._cut = True
                left = self._urgent.get(cube_key, 0) - 1
                if left > 0:
                    self._urgent[cube_key] = left
                else:
                    self._urgent.pop(cube_key, None)
            message = pending.message
            if self.current is not None:
                self.current.value = pending.seq
            if tables.is_done(txn, pending.seq):
                plan.results.append((pending.seq, OK, "", pending.attempts, [], 0.0))
                continue
            child = tables.env.env.begin(write=True, parent=txn)
            started = time.perf_counter()
            try:
                cube = self._cube(tables, child, cube_key, message)
                cube.txn = child
                ctx = HandlerContext(message, cube, self.settings.scheduler)
                self.registry[message.label](ctx)
                cube.message_done()
                tables.mark_done(child, pending.seq, message.item_id)
                child.commit()
            except (lmdb.MapFullError, lmdb.MapResizedError):
                child.abort()
                raise
            except Exception as e:
                child.abort()
                self._drop_cube(cube_key)
                log.warning(
                    "handler %s failed item_id=%s user_id=%s mem_cube_id=%s attempt=%d",
                    message.label,
                    message.item_id,
                    message.user_id,
                    message.mem_cube_id,
                    pending.attempts + 1,
                    exc_info=True,
                )
                permanent = isinstance(e, PermanentError)
                error = f"{type(e).__name__}: {e}"
                self._fail(cube_key, items[i:], error, plan, time.perf_counter() - started, permanent)
                return
            finally:
                cube_ref = self.cubes.get(cube_key)
                if cube_ref is not None:
                    cube_ref.txn = None
            plan.results.append((pending.seq, OK, "", pending.attempts + 1, ctx.logs, time.perf_counter() - started))

    def _fail(
        self,
        cube_key: bytes,
        rest: list[Pending],
        error: str,
        plan: _Plan,
        elapsed: float = 0.0,
        permanent: bool = False,
    ) -> None:
        """Count a failed attempt of rest[0]; the cube's later items are requeued behind it (order holds).
        A permanent error, or the last allowed attempt, fails the item; otherwise it waits for a retry."""
        pending = rest[0]
        pending.attempts += 1
        cfg = self.settings.workers
        if permanent or pending.attempts >= cfg.max_attempts:
            plan.results.append((pending.seq, FAILED, error, pending.attempts, [], elapsed))
            if len(rest) > 1:
                plan.requeue.append((cube_key, rest[1:]))
            return
        plan.results.append((pending.seq, RETRY, error, pending.attempts, [], elapsed))
        backoff = min(cfg.retry_backoff_seconds * 2 ** (pending.attempts - 1), cfg.retry_backoff_max_seconds)
        plan.blocked[cube_key] = time.monotonic() + backoff
        plan.requeue.append((cube_key, rest))

    def _cube(self, tables: CubeTables, txn: lmdb.Transaction, cube_key: bytes, message: Message) -> Cube:
        """The cube, loaded on first use. A loaded cube is millions of long-lived objects that a full garbage
        collection would walk each time (~0.3 s per 10 cubes of 10k memories, measured: one idle query of 300
        waited 1.4 s at 100 cubes of 10k), so what exists after a load is frozen out of the collector."""
        cube = self.cubes.get(cube_key)
        if cube is None:
            cube = Cube.load(
                tables,
                txn,
                message.user_id,
                message.mem_cube_id,
                self.settings.scheduler.capacities,
                self.settings.storage.history_per_cube,
            )
            self.cubes[cube_key] = cube
            log.debug("cube %r loaded from its %s", cube_key, "snapshot" if cube.saved else "records")
            while len(self.cubes) > self.settings.workers.max_cached_cubes:
                self._drop_cube(next(iter(self.cubes)))
            gc.freeze()
        else:
            self.cubes.move_to_end(cube_key)
        return cube

    def _drop_cube(self, cube_key: bytes) -> None:
        """Forget a loaded cube. Loaded cubes are frozen out of the garbage collector (see _cube); unfreezing
        here lets the next full collection reclaim whatever of the dropped cube only it can."""
        if self.cubes.pop(cube_key, None) is not None:
            gc.unfreeze()

    def close(self) -> None:
        self.save_snapshots(self.settings.workers.snapshot_seconds)
        self.shards.close()

    def save_snapshots(self, seconds: float) -> int:
        """Store a snapshot of each loaded cube not saved as it is, most recently used first, for up to ``seconds``
        (a 10k-memory cube: ~0.1 s); returns how many were stored. Each commits on its own: a stop cut short keeps
        those written."""
        deadline = time.monotonic() + seconds
        written = 0
        for cube_key, cube in reversed(self.cubes.items()):
            if time.monotonic() >= deadline:
                break
            if cube.saved:
                continue
            try:
                self._store_snapshot(cube_key, cube)
            except (StorageError, lmdb.Error, OSError):
                log.warning("could not store the snapshot of a cube; it loads from its records", exc_info=True)
                continue
            cube.saved = True
            written += 1
        if written:
            log.info("stored snapshots of %d cubes", written)
        return written

    def _store_snapshot(self, cube_key: bytes, cube: Cube) -> None:
        tables = self.shards.tables(self.shards.shard_of(cube.state.user_id, cube.state.mem_cube_id))
        tables.put_snapshot(cube_key, cube.snapshot())


def _collect_garbage() -> None:
    """One collection of the generation CPython's default thresholds would pick (10 younger collections each)."""
    _, young, middle = gc.get_count()
    gc.collect(2 if middle >= 10 else 1 if young >= 10 else 0)


class _Plan:
    """What a batch decided, applied only after its transaction committed."""

    def __init__(self) -> None:
        self.results: list[ResultTuple] = []
        self.requeue: list[tuple[bytes, list[Pending]]] = []
        self.blocked: dict[bytes, float] = {}


def worker_main(
    index: int, settings: Settings, tasks: Any, results: Connection, current: Synchronized[int], booted: Any
) -> None:
    """Entry point of a spawned worker. SIGINT belongs to the server (it drains); SIGTERM stops after the batch."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if settings.workers.nice:
        os.nice(settings.workers.nice)  # the server goes first (WorkerConfig.nice)
    gc.set_threshold(AUTOMATIC_COLLECT_AFTER, 10, 10)
    configure_logging(settings.log_level, settings.log_format, f"worker-{index}")
    worker = Worker(settings, tasks, PipeSink(results), current, index)

    def stop(signum: int, frame: Any) -> None:
        worker.stopping = True

    signal.signal(signal.SIGTERM, stop)
    booted.set()
    worker.run()
