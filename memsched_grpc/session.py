"""One client stream as the scheduler sees it: the events owed to the client (acks, rejections,
completions, log items) and when the stream may end (input closed and every accepted item finished)."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

from memsched_grpc.encoded_log import EncodedLog
from memsched_grpc.models import RejectCode, TaskState


@dataclass(slots=True, frozen=True)
class Ack:
    item_id: str
    duplicate: bool = False


@dataclass(slots=True, frozen=True)
class Rejection:
    item_id: str
    index: int
    code: RejectCode
    field: str
    reason: str


@dataclass(slots=True, frozen=True)
class Completion:
    item_id: str
    state: TaskState
    error: str = ""


Event = Ack | Rejection | Completion | EncodedLog


class Session:
    def __init__(self) -> None:
        # Events travel in the lists they were emitted in (an ack per item of a commit group, a completion
        # with its logs): one queue operation per list instead of one per event.
        self._events: queue.SimpleQueue[list[Event] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._unfinished = 0
        self._input_done = False
        self._ended = False

    def emit(self, events: list[Event]) -> None:
        """Queue ``events`` for the client; the list is handed over, the caller must not change it afterwards."""
        if events:
            self._events.put(events)

    def expect(self, count: int) -> None:
        """``count`` items are on their way into the inbox; each reports back (finished or settled)."""
        with self._lock:
            self._unfinished += count

    def settle(self, count: int) -> None:
        """``count`` expected items will not report back (duplicates, or not stored)."""
        with self._lock:
            self._unfinished -= count
            self._maybe_end()

    def finished(self, completion: Completion, logs: list[EncodedLog]) -> None:
        self.emit([*logs, completion])
        with self._lock:
            self._unfinished -= 1
            self._maybe_end()

    def input_done(self) -> None:
        """The client closed its side; the stream ends once every accepted item reported back."""
        with self._lock:
            self._input_done = True
            self._maybe_end()

    def abort(self) -> None:
        """End the stream now (shutdown or cancellation)."""
        with self._lock:
            if not self._ended:
                self._ended = True
                self._events.put(None)

    def _maybe_end(self) -> None:
        if self._input_done and self._unfinished <= 0 and not self._ended:
            self._ended = True
            self._events.put(None)

    def next_events(self, timeout: float, limit: int = 1000) -> list[Event] | None:
        """The events ready now (waiting up to ``timeout`` for the first); None when the stream is over.
        Stops taking lists once ``limit`` events are gathered (a single list may exceed it)."""
        try:
            first = self._events.get(timeout=timeout)
        except queue.Empty:
            return []
        if first is None:
            return None
        out: list[Event] = first
        while len(out) < limit:
            try:
                nxt = self._events.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                self._events.put(None)  # seen again by the next call, after these events went out
                break
            if out is first:
                out = list(first)
            out.extend(nxt)
        return out
