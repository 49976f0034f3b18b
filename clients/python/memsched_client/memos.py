"""A stand-in for MemOS's in-process scheduler that uses the memsched service instead.

MemOS code talks to its scheduler through four methods: ``start()``, ``submit_messages(one or a list)``,
``get_web_log_messages()`` and ``stop()``. :class:`RemoteMemScheduler` offers the same four over one
long-lived Session stream, so ``mos.mem_scheduler = RemoteMemScheduler(address)`` is the whole migration.

Differences that are on purpose (they fix upstream defects):
- ``submit_messages`` returns once the server has durably stored every message, and raises
  :class:`ItemsRejected` naming each refused message and why; nothing is dropped silently.
- A message whose handler failed is reported failed (a warning is logged and ``failures()`` lists it);
  it is never reported completed.
- Web logs flow back on the stream itself; no external broker is needed.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import grpc

from memsched.v1 import items_pb2
from memsched_client._common import DEFAULT_ADDRESS, TlsOptions
from memsched_client.client import MemschedClient, Session
from memsched_client.errors import ItemsRejected, MemschedError, RpcError, Unavailable
from memsched_client.models import (
    Ack,
    Completion,
    Rejection,
    ScheduleLogForWebItem,
    ScheduleMessageItem,
    TaskStatus,
    to_proto_item,
)

log = logging.getLogger(__name__)
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE

_FIELDS = tuple(ScheduleMessageItem.model_fields)


def to_schedule_item(message: Any) -> items_pb2.ScheduleMessageItem:
    """Convert what MemOS code submits: this package's model, a protobuf item, a dict (MemOS's ``to_dict``
    form included, with its ``cube_id`` key), or any object with ScheduleMessageItem's attributes (MemOS's
    own pydantic class). Fields the service does not know (``redis_message_id``, ``user_context``...) are
    left out; ``chat_history`` travels in ``info``; a cube object in ``mem_cube`` is not sent."""
    if isinstance(message, ScheduleMessageItem | items_pb2.ScheduleMessageItem):
        return to_proto_item(message)
    if isinstance(message, Mapping):
        source = dict(message)
        if "mem_cube_id" not in source and "cube_id" in source:
            source["mem_cube_id"] = source["cube_id"]
    else:
        source = {name: getattr(message, name) for name in (*_FIELDS, "chat_history") if hasattr(message, name)}
    data = {k: v for k, v in source.items() if k in _FIELDS and v is not None}
    if not isinstance(data.get("mem_cube", ""), str):
        data.pop("mem_cube")
    info = dict(data.get("info") or {})
    if source.get("chat_history"):
        info["chat_history"] = source["chat_history"]
    # Struct holds JSON only; anything else is sent as its text rather than failing the submit
    data["info"] = json.loads(json.dumps(info, default=str))
    return ScheduleMessageItem.model_validate(data).to_proto()


class _Waiter:
    __slots__ = ("done", "error", "rejection")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.rejection: Rejection | None = None
        self.error: MemschedError | None = None


class RemoteMemScheduler:
    """MemOS's scheduler interface over a memsched server.

    ``client`` may be shared; otherwise one is created from ``address``, ``token`` and ``tls`` and closed by
    ``stop``. ``ack_timeout`` bounds how long ``submit_messages`` waits for the server to store a batch.
    At most ``max_web_logs`` log items wait for ``get_web_log_messages``; older ones are dropped (and counted
    in ``dropped_web_logs``) so a caller that never reads them cannot exhaust memory.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        client: MemschedClient | None = None,
        token: str | None = None,
        tls: TlsOptions | None = None,
        ack_timeout: float = 30.0,
        max_web_logs: int = 10_000,
        on_completion: Callable[[Completion], None] | None = None,
    ) -> None:
        self._owns_client = client is None
        self.client = client or MemschedClient(address, token=token, tls=tls)
        self.ack_timeout = ack_timeout
        self.on_completion = on_completion
        self.dropped_web_logs = 0
        self._logs: collections.deque[ScheduleLogForWebItem] = collections.deque(maxlen=max_web_logs)
        self._failures: collections.deque[Completion] = collections.deque(maxlen=1000)
        self._lock = threading.Lock()
        self._waiters: dict[str, _Waiter] = {}
        self._unfinished: set[str] = set()
        self._idle = threading.Condition(self._lock)
        self._session: Session | None = None
        self._reader: threading.Thread | None = None

    # MemOS's interface
    def start(self) -> None:
        """Connect and open the stream; raises Unavailable when no server answers."""
        self.client.wait_ready(timeout=self.ack_timeout)
        with self._lock:
            self._open_locked()

    def stop(self, timeout: float = 30.0) -> None:
        """Close the stream after the messages in flight have completed (up to ``timeout`` seconds; they are
        durable either way), then close the connection if this object opened it."""
        with self._lock:
            session, reader = self._session, self._reader
        if session is not None and reader is not None:
            session.close()
            reader.join(timeout)
            if reader.is_alive():
                session.cancel()
                reader.join(5)
        if self._owns_client:
            self.client.close()

    def submit_messages(self, messages: Any) -> None:
        """Send one message or a list of them; returns once all are durably stored (duplicates of an
        accepted item_id count as stored). Raises ItemsRejected for refused ones (the rest are stored) and
        Unavailable when the server could not be reached or did not answer within ``ack_timeout``."""
        batch = messages if isinstance(messages, list | tuple) else [messages]
        items = [to_schedule_item(m) for m in batch]
        if not items:
            return
        with self._lock:
            session = self._session if self._session is not None else self._open_locked()
            waiters = [self._waiters.setdefault(i.item_id, _Waiter()) for i in items]
            self._unfinished.update(i.item_id for i in items)
        try:
            session.send(items)
        except MemschedError as e:  # the stream ended between opening and sending: nothing was sent
            with self._lock:
                for item in items:
                    self._waiters.pop(item.item_id, None)
                    self._unfinished.discard(item.item_id)
                if self._session is session:
                    self._session = None
            raise Unavailable(_UNAVAILABLE, f"the session ended before sending; resend ({e})") from e
        deadline = time.monotonic() + self.ack_timeout
        for item, waiter in zip(items, waiters, strict=True):
            if not waiter.done.wait(max(0.0, deadline - time.monotonic())):
                raise Unavailable(
                    _UNAVAILABLE, f"item {item.item_id} was not acknowledged within {self.ack_timeout}s; resend it"
                )
        rejections = [w.rejection for w in waiters if w.rejection is not None]
        errors = [w.error for w in waiters if w.error is not None]
        if errors:
            raise errors[0]
        if rejections:
            raise ItemsRejected(rejections)

    def get_web_log_messages(self) -> list[dict[str, Any]]:
        """Take every log item received so far, oldest first, as MemOS's ``to_dict`` dictionaries."""
        with self._lock:
            items = list(self._logs)
            self._logs.clear()
        return [item.to_dict() for item in items]

    # extras
    def get_web_log_items(self) -> list[ScheduleLogForWebItem]:
        """Like get_web_log_messages, as typed models."""
        with self._lock:
            items = list(self._logs)
            self._logs.clear()
        return items

    def wait_until_handled(self, timeout: float = 30.0) -> bool:
        """Wait until every message this object submitted has completed or failed; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._unfinished, timeout)

    def failures(self) -> list[Completion]:
        """The most recent messages whose handler failed on every attempt."""
        with self._lock:
            return list(self._failures)

    def __enter__(self) -> RemoteMemScheduler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # the stream
    def _open_locked(self) -> Session:
        if self._session is None:
            session = self.client.session()
            reader = threading.Thread(target=self._read, args=(session,), name="memsched-session", daemon=True)
            self._session, self._reader = session, reader
            reader.start()
        return self._session

    def _read(self, session: Session) -> None:
        error: MemschedError | None = None
        try:
            for event in session:
                self._on_event(event)
        except RpcError as e:
            log.warning("memsched session ended: %s", e)
            error = Unavailable(_UNAVAILABLE, f"the session ended before the item was acknowledged ({e.message})")
        finally:
            with self._lock:
                if self._session is session:
                    self._session = None  # the next submit opens a fresh stream
                for waiter in self._waiters.values():
                    waiter.error = waiter.error or error or Unavailable(_UNAVAILABLE, "the session ended")
                    waiter.done.set()
                self._waiters.clear()
                self._unfinished.clear()
                self._idle.notify_all()

    def _on_event(self, event: Ack | Rejection | Completion | ScheduleLogForWebItem) -> None:
        if isinstance(event, ScheduleLogForWebItem):
            with self._lock:
                if len(self._logs) == self._logs.maxlen:
                    self.dropped_web_logs += 1
                self._logs.append(event)
            return
        if isinstance(event, Completion):
            if event.status == TaskStatus.FAILED:
                log.warning("memsched item %s failed: %s", event.item_id, event.error)
            with self._lock:
                if event.status == TaskStatus.FAILED:
                    self._failures.append(event)
                self._unfinished.discard(event.item_id)
                self._idle.notify_all()
            if self.on_completion is not None:
                self.on_completion(event)
            return
        with self._lock:
            waiter = self._waiters.pop(event.item_id, None)
            if isinstance(event, Rejection) or event.duplicate:
                self._unfinished.discard(event.item_id)  # no completion will come for it on this stream
                self._idle.notify_all()
        if waiter is not None:
            if isinstance(event, Rejection):
                waiter.rejection = event
            waiter.done.set()
