"""Fans log items out to watchers. Each watcher has a bounded queue: one that cannot keep up is cut off
with a clear reason (it can resubscribe with replay) instead of growing the server's memory."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterable

from memsched_grpc.encoded_log import EncodedLog
from memsched_grpc.models import LogItem

WATCH_QUEUE_ITEMS = 10_000


class WatcherOverflow(Exception):
    """The watcher fell more than WATCH_QUEUE_ITEMS behind."""


class Subscription:
    def __init__(self, feed: Feed, user_id: str, mem_cube_id: str, labels: Iterable[str]) -> None:
        self.feed = feed
        self.user_id = user_id
        self.mem_cube_id = mem_cube_id
        self.labels = frozenset(labels)
        self._queue: queue.Queue[EncodedLog | None] = queue.Queue(WATCH_QUEUE_ITEMS)
        self.overflowed = False
        self.closed = False

    def matches(self, log: EncodedLog | LogItem) -> bool:
        return (not self.mem_cube_id or log.mem_cube_id == self.mem_cube_id) and (
            not self.labels or log.label in self.labels
        )

    def offer(self, log: EncodedLog) -> None:
        try:
            self._queue.put_nowait(log)
        except queue.Full:
            self.overflowed = True
            self.feed.unsubscribe(self)

    def get(self, timeout: float) -> list[EncodedLog]:
        """Log items that arrived, waiting up to ``timeout`` for the first. Raises WatcherOverflow."""
        if self.overflowed:
            raise WatcherOverflow(f"watcher fell {WATCH_QUEUE_ITEMS} log items behind; watch again with replay")
        try:
            first = self._queue.get(timeout=timeout)
        except queue.Empty:
            return []
        out = [] if first is None else [first]
        while len(out) < 1000:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is not None:
                out.append(nxt)
        return out

    def close(self) -> None:
        self.closed = True
        self.feed.unsubscribe(self)
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)


class Feed:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_user: dict[str, set[Subscription]] = {}

    def subscribe(self, user_id: str, mem_cube_id: str = "", labels: Iterable[str] = ()) -> Subscription:
        sub = Subscription(self, user_id, mem_cube_id, labels)
        with self._lock:
            self._by_user.setdefault(user_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            subs = self._by_user.get(sub.user_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_user[sub.user_id]

    def publish(self, logs: Iterable[EncodedLog]) -> None:
        with self._lock:
            targets = [(log, list(self._by_user.get(log.user_id, ()))) for log in logs]
        for log, subs in targets:
            for sub in subs:
                if sub.matches(log):
                    sub.offer(log)

    def close_all(self) -> None:
        with self._lock:
            subs = [s for group in self._by_user.values() for s in group]
        for sub in subs:
            sub.close()
