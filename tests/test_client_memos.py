"""RemoteMemScheduler: MemOS's scheduler interface (start, submit_messages, get_web_log_messages, stop)
served by a real memsched server."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from memsched_client import (
    ItemsRejected,
    MemschedClient,
    RemoteMemScheduler,
    ScheduleMessageItem,
    TaskStatus,
    Unavailable,
)

from memsched.v1 import items_pb2


class MemOSStyleItem:
    """Stands for MemOS's own ScheduleMessageItem: same attribute names, optional fields None, fields the
    service does not know, and a cube object where the service expects a reference."""

    def __init__(self, label: str, content: str, **kw: Any) -> None:
        self.item_id = str(uuid.uuid4())
        self.user_id = "u1"
        self.mem_cube_id = "c1"
        self.label = label
        self.content = content
        self.timestamp = datetime.now(UTC)
        self.task_id: str | None = None
        self.info: dict[str, Any] | None = None
        self.redis_message_id = ""
        self.mem_cube = object()
        self.chat_history: list[dict[str, str]] | None = None
        self.__dict__.update(kw)


def test_memos_interface_over_the_service(make_server: Any) -> None:
    server, _ = make_server()
    scheduler = RemoteMemScheduler(server.address)
    scheduler.start()
    try:
        facts = [{"role": "user", "content": "He loves peanut butter biscuits. I'm allergic to nuts though."}]
        scheduler.submit_messages(
            ScheduleMessageItem(user_id="u1", mem_cube_id="c1", label="add", content=json.dumps(facts))
        )
        query = MemOSStyleItem("query", "What food should I avoid due to allergy?", chat_history=[{"role": "user"}])
        answer = {"user_id": "u1", "cube_id": "c1", "label": "answer", "content": "You're allergic to nuts."}
        scheduler.submit_messages([query, answer])
        assert scheduler.wait_until_handled(timeout=30)

        logs = scheduler.get_web_log_messages()
        assert [(x["label"], x["from_memory_type"], x["to_memory_type"]) for x in logs] == [
            ("addMemory", "UserInput", "UserMemory"),
            ("addMessage", "UserInput", "NotApplicable"),
            ("addMessage", "UserInput", "NotApplicable"),
        ]
        assert logs[1]["log_content"] == "[User] What food should I avoid due to allergy?"
        assert logs[2]["log_content"] == "[Assistant] You're allergic to nuts."
        assert all(x["status"] == "completed" and isinstance(x["timestamp"], str) for x in logs)
        assert scheduler.get_web_log_messages() == []  # drained, as MemOS's queue is

        with MemschedClient(server.address) as client:
            status = client.get_status(query.item_id)
            assert status.status is TaskStatus.COMPLETED
            assert any("nuts" in m.memory for m in client.working_memory("u1", "c1"))

        bad = ScheduleMessageItem(user_id="u1", mem_cube_id="c1", label="no-such-label", content="x")
        good = ScheduleMessageItem(user_id="u1", mem_cube_id="c1", label="add", content="a fine memory")
        with pytest.raises(ItemsRejected) as err:
            scheduler.submit_messages([bad, good])
        assert [(r.item_id, r.field) for r in err.value.rejections] == [(bad.item_id, "label")]
        scheduler.submit_messages(good)  # the good one was stored: resending it is a harmless duplicate

        poison = ScheduleMessageItem(user_id="u1", mem_cube_id="c9", label="poison", content="x")
        scheduler.submit_messages(poison)
        assert scheduler.wait_until_handled(timeout=30)
        assert [(f.item_id, f.status) for f in scheduler.failures()] == [(poison.item_id, TaskStatus.FAILED)]
    finally:
        scheduler.stop()


def test_submit_fails_loudly_when_the_server_is_gone(server_process: Any) -> None:
    """No silent drop: once the server dies, submit_messages raises Unavailable instead of hanging or
    pretending; what was acknowledged before is durable (the server handles it after a restart)."""
    proc = server_process()
    proc.start().close()
    scheduler = RemoteMemScheduler(proc.address, ack_timeout=20)
    scheduler.start()
    try:
        kept = ScheduleMessageItem(user_id="u1", mem_cube_id="c1", label="add", content="acknowledged before the crash")
        scheduler.submit_messages(kept)
        proc.kill()
        with pytest.raises(Unavailable):
            scheduler.submit_messages(ScheduleMessageItem(user_id="u1", mem_cube_id="c1", label="add", content="x"))
    finally:
        scheduler.stop(timeout=5)
    client = proc.start()  # restarted on the same data dir
    try:
        assert client.wait_idle("u1").idle
        assert client.status(kept.item_id).status == items_pb2.TASK_STATUS_COMPLETED
    finally:
        client.close()
