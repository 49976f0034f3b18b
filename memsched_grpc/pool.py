"""The worker pool: spawn-context children, one task queue and one results pipe each, restarted when they die.

Queues are per worker: a worker killed while holding a shared queue's lock would wedge every other worker.
A dead worker's queue and pipe are thrown away with it; the dispatcher redelivers what it had been given.

Results travel over a bare pipe that the worker's main thread writes, not a multiprocessing queue: a queue
sends from a feeder thread, which needs the GIL the worker's next round holds, so a result put before a
busy round arrived 11-13 ms later (p50, scratch test: 20 KB results, the sender busy for 10 ms after each),
against 0.26 ms written directly. A full pipe only makes the worker wait for the server's reader thread.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized

from memsched_grpc.config import Settings
from memsched_grpc.errors import MemschedError
from memsched_grpc.worker import Batch, ResultTuple, worker_main

log = logging.getLogger(__name__)
_ctx = multiprocessing.get_context("spawn")
SINGLE_THREADED_MATH = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
"""Set to 1 for the workers unless already set: the pool runs a worker per core, and numpy's BLAS threads
inside each (OpenBLAS starts one per core) fight over the same cores. bench.workers measured 2 workers at
330-387 items/s with them and 1,482-2,232 without."""


class WorkerSlot:
    """One worker position: the live process, its task queue and results pipe, and the seq it is handling now."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.generation = 0
        self.process: SpawnProcess | None = None
        self.tasks: Queue[Batch | None] = _ctx.Queue()
        self.results, self.results_writer = _results_pipe()
        self.current: Synchronized[int] = _ctx.Value("q", 0, lock=False)
        self.restarts = 0
        self.restarting = False
        self.deferred: list[Batch] = []


class WorkerPool:
    """Starts ``count`` workers and keeps them alive.

    ``on_results(index, results)`` runs on a reader thread per worker; ``on_death(index, current_seq)``
    runs after a dead worker was replaced (its new queues are live) and sends the redelivery with
    ``send(..., redelivery=True)``. Until it has, other sends to that worker are held back, so that nothing
    overtakes a redelivered item of the same cube in the new worker's queue.
    """

    def __init__(
        self,
        settings: Settings,
        on_results: Callable[[int, list[ResultTuple]], None],
        on_death: Callable[[int, int], None],
    ) -> None:
        self.settings = settings
        self.on_results = on_results
        self.on_death = on_death
        self.slots = [WorkerSlot(i) for i in range(settings.workers.count)]
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return len(self.slots)

    def start(self) -> None:
        for name in SINGLE_THREADED_MATH:  # spawned children take the environment at start, before numpy loads
            os.environ.setdefault(name, "1")
        for slot in self.slots:
            self._spawn(slot)
        for slot in self.slots:
            t = threading.Thread(target=self._watch, args=(slot,), name=f"worker-{slot.index}-results", daemon=True)
            t.start()
            self._threads.append(t)

    def _spawn(self, slot: WorkerSlot) -> None:
        booted = _ctx.Event()
        slot.current.value = 0
        process = _ctx.Process(
            target=worker_main,
            args=(slot.index, self.settings, slot.tasks, slot.results_writer, slot.current, booted),
            name=f"memsched-worker-{slot.index}",
            daemon=True,
        )
        process.start()
        slot.results_writer.close()  # the child has its own copy: when it dies, the reader sees EOF
        if not booted.wait(self.settings.workers.boot_timeout_seconds):
            process.kill()
            raise MemschedError(
                f"worker {slot.index} did not boot within {self.settings.workers.boot_timeout_seconds}s"
            )
        if not process.is_alive():
            raise MemschedError(f"worker {slot.index} exited during boot with code {process.exitcode}")
        slot.process = process
        slot.generation += 1
        log.info("worker %d started (pid %s)", slot.index, process.pid)

    def send(self, index: int, batch: Batch, redelivery: bool = False) -> None:
        """Queue ``batch`` for worker ``index``. While it restarts, ordinary batches wait; the first
        redelivery batch drops those that waited, as it covers every item the worker was given."""
        with self._lock:
            slot = self.slots[index]
            if redelivery:
                slot.deferred.clear()
            elif slot.restarting:
                slot.deferred.append(batch)
                return
            slot.tasks.put(batch)

    def _watch(self, slot: WorkerSlot) -> None:
        """Read results; when the process dies, drain what it sent, replace it, report the death."""
        while not self._stopping.is_set():
            try:
                if not slot.results.poll(0.2):
                    process = slot.process
                    if process is not None and not process.is_alive() and not self._stopping.is_set():
                        self._replace(slot)
                    continue
                results = slot.results.recv()
            except (EOFError, OSError):
                if not self._stopping.is_set():
                    self._replace(slot)
                continue
            self.on_results(slot.index, results)

    def _replace(self, slot: WorkerSlot) -> None:
        while True:  # results the dead worker committed and sent must still count
            try:
                if not slot.results.poll(0.05):
                    break
                self.on_results(slot.index, slot.results.recv())
            except Exception:  # EOF, or a message cut short by the death: redelivery covers it
                break
        process = slot.process
        culprit = slot.current.value
        log.error(
            "worker %d (pid %s) died with exit code %s while handling seq %d; restarting",
            slot.index,
            process.pid if process else None,
            process.exitcode if process else None,
            culprit,
        )
        with self._lock:
            slot.restarting = True
            slot.tasks.cancel_join_thread()
            slot.tasks.close()
            slot.results.close()
            slot.tasks = _ctx.Queue()
            slot.results, slot.results_writer = _results_pipe()
            slot.restarts += 1
        try:
            self._spawn(slot)
            self.on_death(slot.index, culprit)
        finally:
            with self._lock:
                for batch in slot.deferred:  # sent after the redelivery: later in every cube
                    slot.tasks.put(batch)
                slot.deferred.clear()
                slot.restarting = False

    def stop(self, timeout: float = 10.0) -> None:
        """Ask every worker to stop after the message it is handling (SIGTERM sets its flag); kill those
        that do not stop in time. What they did not finish stays in the inbox."""
        self._stopping.set()
        for slot in self.slots:
            with contextlib.suppress(ValueError, OSError):
                slot.tasks.put(None)
            if slot.process is not None and slot.process.is_alive():
                slot.process.terminate()
        for slot in self.slots:
            if slot.process is None:
                continue
            slot.process.join(timeout)
            if slot.process.is_alive():
                log.warning("worker %d did not stop in %.1fs; killing it", slot.index, timeout)
                slot.process.kill()
                slot.process.join(5)
        for t in self._threads:
            t.join(2)
        for slot in self.slots:
            slot.tasks.cancel_join_thread()
            slot.tasks.close()
            slot.results.close()

    def restarts(self) -> int:
        return sum(s.restarts for s in self.slots)


def _results_pipe() -> tuple[Connection, Connection]:
    """(reader, writer): the server reads, the worker writes."""
    return _ctx.Pipe(duplex=False)
