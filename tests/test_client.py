"""The Python client package (memsched_client): models, sync and asyncio clients, against real servers."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from memsched_client import (
    Ack,
    AsyncMemschedClient,
    Completion,
    InvalidArgument,
    MemoryType,
    MemschedClient,
    NotFound,
    Rejection,
    RejectionCode,
    ScheduleLogForWebItem,
    ScheduleMessageItem,
    TaskStatus,
    Unavailable,
)

from memsched.v1 import items_pb2
from memsched_grpc.cli import main

PET = [
    {"role": "user", "content": "I just adopted a golden retriever puppy yesterday."},
    {"role": "user", "content": "His name is Max. I live near Central Park in New York where we'll walk daily."},
]


def msg(label: str = "add", content: str = "", cube: str = "c1", **kw: Any) -> ScheduleMessageItem:
    return ScheduleMessageItem(user_id="u1", mem_cube_id=cube, label=label, content=content, **kw)


@pytest.fixture
def py_client(make_server: Any) -> Any:
    server, _ = make_server()
    with MemschedClient(server.address) as c:
        c.wait_ready()
        yield c


def test_models_round_trip_through_protobuf() -> None:
    item = msg(content="hello", task_id="t", info={"speaker": "Ann", "turn": 3, "tags": ["a"]}, mem_cube="cube-ref")
    back = ScheduleMessageItem.from_proto(items_pb2.ScheduleMessageItem.FromString(item.to_proto().SerializeToString()))
    assert back == item.model_copy(update={"info": {"speaker": "Ann", "turn": 3.0, "tags": ["a"]}})
    assert ScheduleMessageItem.from_dict(item.to_dict()) == item
    assert item.to_dict()["timestamp"].endswith("Z") or "+00:00" in item.to_dict()["timestamp"]

    log = ScheduleLogForWebItem(
        user_id="u1",
        mem_cube_id="c1",
        label="scheduleMemory",
        from_memory_type=MemoryType.LONG_TERM,
        to_memory_type=MemoryType.WORKING,
        log_content="[LongTermMemory→WorkingMemory] Max: His name is Max.",
        timestamp=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        status=TaskStatus.COMPLETED,
    )
    assert ScheduleLogForWebItem.from_proto(log.to_proto()) == log
    as_dict = log.to_dict()  # MemOS's web-log dictionary: memory types and status as MemOS spells them
    assert (as_dict["from_memory_type"], as_dict["to_memory_type"], as_dict["status"]) == (
        "LongTermMemory",
        "WorkingMemory",
        "completed",
    )
    assert as_dict["current_memory_sizes"]["working_memory_size"] == -1
    assert MemoryType.parse("working") is MemoryType.WORKING and MemoryType.parse("ltm") is MemoryType.LONG_TERM


def test_sync_client_covers_every_rpc(py_client: MemschedClient) -> None:
    c = py_client
    add = msg(content=json.dumps(PET), task_id="job")
    acks = c.submit(add)
    assert acks == [Ack(item_id=add.item_id)]
    assert c.submit({"item_id": add.item_id, "user_id": "u1", "mem_cube_id": "c1", "label": "add", "content": "x"}) == [
        Ack(item_id=add.item_id, duplicate=True)
    ]
    query = msg(label="query", content="What's my dog's name again?", task_id="job")
    result = c.run_session([query])
    assert [a.item_id for a in result.acks] == [query.item_id]
    assert result.completions == [Completion(item_id=query.item_id, status=TaskStatus.COMPLETED)]
    assert {log.label for log in result.logs} >= {"addMessage"}
    assert c.wait_idle("u1", "c1").idle

    working = c.working_memory("u1", "c1")
    assert any("Max" in m.memory for m in working)
    assert all(m.memory_type is MemoryType.WORKING for m in working)
    memory = c.get_memory("u1", "c1")
    user_part = memory.partition(MemoryType.USER)
    assert user_part is not None and user_part.size == 2 and memory.capacities.working_memory_capacity == 20

    assert c.get_status(add.item_id).status is TaskStatus.COMPLETED
    task = c.get_status(task_id="job")
    assert task.status is TaskStatus.COMPLETED and {s.item_id for s in task.items} == {add.item_id, query.item_id}
    with pytest.raises(NotFound):
        c.get_status("no-such-item")

    info = c.get_info()
    assert {"query", "answer", "add"} <= set(info.labels) and info.workers == 2
    cubes = c.list_cubes("u1")
    assert [(x.mem_cube_id, x.pending, x.sizes.user_memory_size) for x in cubes] == [("c1", 0, 2)]
    state = c.get_cube_state("u1", "c1")
    assert state.queries == 1 and state.query_window == ["What's my dog's name again?"]
    assert c.health() == "SERVING" and c.health("memsched.v1.Scheduler") == "SERVING"
    assert c.health("no.such.Service") == "SERVICE_UNKNOWN"

    with c.watch_logs("u1", "c1", replay=3) as watch:
        first = next(iter(watch.batches()))
    assert len(first) == 3 and [x.sequence for x in first] == sorted(x.sequence for x in first)

    poison = msg(label="poison", content="boom", cube="c2")
    c.run_session([poison])
    dead = c.list_dead_letters("u1")
    assert [d.item_id for d in dead] == [poison.item_id] and "always fails" in dead[0].error
    assert c.redrive_dead_letters([poison.item_id, "unknown"]) == [poison.item_id]


def test_bad_items_raise_with_field_violations(py_client: MemschedClient) -> None:
    good, bad = msg(content="fine"), msg(content="x").model_copy(update={"user_id": ""})
    with pytest.raises(InvalidArgument) as err:
        py_client.submit([good, bad])
    assert [v.field for v in err.value.violations] == ["items[1].user_id"]
    with pytest.raises(NotFound):
        py_client.get_status(good.item_id)  # all or nothing: the good item was not stored either

    with py_client.session() as session:
        session.send([bad, good])
        session.close()
        events = list(session)
    rejections = [e for e in events if isinstance(e, Rejection)]
    assert [(r.item_id, r.code, r.field) for r in rejections] == [
        (bad.item_id, RejectionCode.INVALID_ARGUMENT, "user_id")
    ]
    kinds = [type(e).__name__ for e in events if getattr(e, "item_id", None) == good.item_id]
    assert kinds[0] == "Ack" and kinds[-1] == "Completion"


def test_session_yields_events_while_it_stays_open(py_client: MemschedClient) -> None:
    """A long-lived stream: send, read until the item completes, send again on the same stream."""
    with py_client.session() as session:
        events = iter(session)
        for text in ("first memory about tea", "second memory about coffee"):
            item = msg(content=text)
            session.send(item)
            seen = []
            for event in events:
                seen.append(event)
                if isinstance(event, Completion):
                    break
            assert isinstance(seen[0], Ack) and seen[0].item_id == item.item_id
            assert [e.label for e in seen if isinstance(e, ScheduleLogForWebItem)] == ["addMemory"]
            assert seen[-1] == Completion(item_id=item.item_id, status=TaskStatus.COMPLETED)


def test_asyncio_client(make_server: Any) -> None:
    server, _ = make_server()

    async def scenario() -> None:
        async with AsyncMemschedClient(server.address) as c:
            await c.wait_ready()
            first = msg(content=json.dumps(PET))
            assert await c.submit([first]) == [Ack(item_id=first.item_id)]
            assert (await c.wait_idle("u1", "c1")).idle

            session = c.session()
            query = msg(label="query", content="Where do I live?")
            await session.send(query)
            await session.close()
            events = [e async for e in session]
            assert isinstance(events[0], Ack) and events[-1] == Completion(
                item_id=query.item_id, status=TaskStatus.COMPLETED
            )
            assert any("Central Park" in m.memory for m in await c.working_memory("u1", "c1"))
            assert (await c.get_status(query.item_id)).status is TaskStatus.COMPLETED
            assert (await c.get_info()).version
            assert [x.mem_cube_id for x in await c.list_cubes()] == ["c1"]
            assert (await c.get_cube_state("u1", "c1")).queries == 1
            assert await c.health() == "SERVING"

            watch = c.watch_logs("u1", replay=100)
            replayed = []
            async for log in watch:
                replayed.append(log)
                if log.label == "addMessage":
                    break
            watch.cancel()
            assert [x.label for x in replayed] == ["addMemory", "addMemory", "addMessage"]

            result = await c.run_session([msg(content="a third memory", cube="c3")])
            assert [x.status for x in result.completions] == [TaskStatus.COMPLETED]
            with pytest.raises(InvalidArgument):
                await c.get_memory("u1", "")
            assert await c.list_dead_letters() == []

    asyncio.run(scenario())


def test_unreachable_server_is_unavailable() -> None:
    with MemschedClient("127.0.0.1:1", timeout=2) as c:
        with pytest.raises(Unavailable):
            c.wait_ready(timeout=0.5)
        with pytest.raises(Unavailable):
            c.submit(msg(content="x", item_id=str(uuid.uuid4())))


def test_archived_memories_through_client_and_cli(make_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    caps = {"working_memory_capacity": 1, "long_term_memory_capacity": 2}
    server, _ = make_server(scheduler={"capacities": caps})
    texts = ["the first note about tea", "the second note about coffee", "the third note about cocoa"]
    with MemschedClient(server.address) as c:
        c.run_session([msg(content=t) for t in texts])
        memory = c.get_memory("u1", "c1", [MemoryType.LONG_TERM], include_archived=True)
        assert [m.memory for m in memory.archived] == ["the first note about tea"]
        assert c.get_memory("u1", "c1").archived == []  # only when asked for

    assert main(["memory", "--address", server.address, "--user", "u1", "--cube", "c1", "--archived"]) == 0
    out = capsys.readouterr().out
    assert "Archived: 1 shown\n    1. the first note about tea  (was LongTermMemory" in out
