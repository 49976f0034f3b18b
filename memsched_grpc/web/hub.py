"""Pushes what happens in the scheduler to the dashboard's live pages.

Two sources, both push: the scheduler's finish reports (handler latency, completed and failed counts, and
the cue that queue depths and cube states changed) arrive here through ``on_finished``; log items come
from the same feed the gRPC WatchLogs RPC reads, through one subscription per page (see server.py). Each
page gets a bounded queue of events: a page that stops reading is cut off, and its browser reconnects with
a replay, instead of growing the server's memory.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from memsched_grpc.dispatcher import Finished
from memsched_grpc.models import TaskState
from memsched_grpc.scheduler import MemScheduler
from memsched_grpc.web import views

log = logging.getLogger(__name__)

STREAM_QUEUE_EVENTS = 2000
LATENCY_SAMPLES = 20_000
"""Handler latency samples kept, all cubes together, so memory stays bounded however many cubes there are."""
LATENCY_SAMPLES_PER_CUBE = 500
OVERVIEW_MIN_INTERVAL = 0.5
"""Seconds between two overview pushes: under load, many finish batches share one read of every cube."""
MAX_OVERVIEW_CUBES = 2000
"""Cubes listed on the page; beyond this the list is cut (and says so) rather than slowing every push."""

MayRead = Callable[[str], bool]
Cube = tuple[str, str]


class HubClosed(Exception):
    """The dashboard is stopping; no new page may start watching."""


class TooManyStreams(Exception):
    """``web.max_streams`` pages are already watching."""


@dataclass(frozen=True, slots=True)
class Event:
    """One thing to tell a page: an SSE event name and its payload (JSON-able, or log items to convert)."""

    name: str
    data: Any


class Stream:
    """One live page: the cube it shows, what its token may read, and the events waiting to be sent."""

    def __init__(self, may_read: MayRead, cube: Cube | None) -> None:
        self.may_read = may_read
        self.cube = cube
        self.overflowed = False
        self._queue: queue.Queue[Event | None] = queue.Queue(STREAM_QUEUE_EVENTS)

    def push(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.overflowed = True
            self.close()

    def close(self) -> None:
        # The writer may be full and gone already; the flag above or the hub's stop still ends the loop.
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)

    def next(self, timeout: float) -> list[Event] | None:
        """Events that arrived, waiting up to ``timeout`` for the first; None once the stream is closed."""
        if self.overflowed:
            return None
        try:
            first = self._queue.get(timeout=timeout)
        except queue.Empty:
            return []
        if first is None:
            return None
        out = [first]
        while True:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                return out
            if nxt is None:
                self.close()  # seen on the next call, after this batch is sent
                return out
            out.append(nxt)


class Hub:
    def __init__(self, scheduler: MemScheduler, max_streams: int) -> None:
        self.scheduler = scheduler
        self.max_streams = max_streams
        self._lock = threading.Lock()
        self._streams: set[Stream] = set()
        self._latency: deque[tuple[Cube, dict[str, Any]]] = deque(maxlen=LATENCY_SAMPLES)
        self._counts: dict[Cube, Counter[str]] = {}
        self._dirty = threading.Event()
        self._closed = threading.Event()
        self._publisher = threading.Thread(target=self._publish_overviews, name="web-overview", daemon=True)

    def start(self) -> None:
        self.scheduler.add_finish_observer(self.on_finished)
        self._publisher.start()

    def stop(self) -> None:
        """Refuse new pages and end every live one; their writers return after sending what they hold."""
        self._closed.set()
        self._dirty.set()
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            stream.close()
        self._publisher.join(5)

    # pages
    def open(self, may_read: MayRead, cube: Cube | None) -> Stream:
        stream = Stream(may_read, cube)
        with self._lock:
            if self._closed.is_set():
                raise HubClosed("the dashboard is stopping")
            if len(self._streams) >= self.max_streams:
                raise TooManyStreams(f"{self.max_streams} pages are already watching (web.max_streams)")
            self._streams.add(stream)
        return stream

    def close(self, stream: Stream) -> None:
        with self._lock:
            self._streams.discard(stream)

    # what the scheduler reports
    def on_finished(self, finished: list[Finished]) -> None:
        """Finish observer (called on the dispatcher's finisher thread, so it only files and wakes)."""
        if self._closed.is_set():
            return
        fresh: dict[Cube, list[dict[str, Any]]] = {}
        now = time.time()
        with self._lock:
            for f in finished:
                cube = (f.record.user_id, f.record.mem_cube_id)
                sample = {
                    "t": now,
                    "label": f.record.label,
                    "ms": round(f.handler_seconds * 1000, 3),
                    "ok": f.state == TaskState.COMPLETED,
                }
                self._latency.append((cube, sample))
                self._counts.setdefault(cube, Counter())[str(f.state)] += 1
                fresh.setdefault(cube, []).append(sample)
            streams = list(self._streams)
        for stream in streams:
            if stream.cube in fresh:
                stream.push(Event("latency", {"replace": False, "items": fresh[stream.cube]}))
        self._dirty.set()

    def latency(self, cube: Cube) -> list[dict[str, Any]]:
        """The cube's most recent samples, oldest first (a scan, done once when a page opens the cube)."""
        with self._lock:
            samples = [sample for of, sample in self._latency if of == cube]
        return samples[-LATENCY_SAMPLES_PER_CUBE:]

    # the list of users and cubes
    def overview(self, may_read: MayRead) -> dict[str, Any]:
        return self._filter(self._read_overview(), may_read)

    def _read_overview(self) -> dict[str, Any]:
        scheduler = self.scheduler
        caps = scheduler.settings.scheduler.capacities
        summaries = scheduler.list_cubes("")
        with self._lock:
            counts = {cube: dict(c) for cube, c in self._counts.items()}
        cubes = [
            views.cube_summary(s, counts.get((s.state.user_id, s.state.mem_cube_id), {}), caps)
            for s in summaries[:MAX_OVERVIEW_CUBES]
        ]
        return {
            "server": {
                "version": scheduler.version,
                "started_at": scheduler.started_at,
                "backlog": scheduler.dispatcher.backlog,
                "workers": scheduler.settings.workers.count,
                "accepting": scheduler.accepting,
                "activation": scheduler.settings.scheduler.enable_activation_memory,
            },
            "cubes": cubes,
            "truncated": len(summaries) > MAX_OVERVIEW_CUBES,
        }

    @staticmethod
    def _filter(overview: dict[str, Any], may_read: MayRead) -> dict[str, Any]:
        return {**overview, "cubes": [c for c in overview["cubes"] if may_read(c["user_id"])]}

    def _publish_overviews(self) -> None:
        """One read of every cube per wake-up, shared by all pages; wake-ups closer than the interval merge."""
        while True:
            self._dirty.wait()
            if self._closed.is_set():
                return
            self._dirty.clear()
            with self._lock:
                streams = list(self._streams)
            if streams:
                try:
                    overview = self._read_overview()
                except Exception:
                    log.exception("reading the dashboard overview failed; the next finished item retries")
                else:
                    for stream in streams:
                        stream.push(Event("overview", self._filter(overview, stream.may_read)))
            if self._closed.wait(OVERVIEW_MIN_INTERVAL):
                return
