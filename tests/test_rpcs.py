"""Every RPC of memsched.v1.Scheduler against a real server with real workers and LMDB."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from memsched.v1 import items_pb2, scheduler_pb2
from memsched_grpc.config import load_settings
from memsched_grpc.store import keys
from memsched_grpc.store.shards import ShardSet
from tests.conftest import Client, collect, item, settings_dict

PET_FACTS = [
    {"role": "user", "content": "I just adopted a golden retriever puppy yesterday."},
    {"role": "user", "content": "His name is Max. I live near Central Park in New York where we'll walk daily."},
    {"role": "user", "content": "He loves peanut butter biscuits. Personally, I'm allergic to nuts though."},
]


FILLER = [{"role": "assistant", "content": f"Weather note {n}: it was sunny with {n} clouds."} for n in range(22)]


def test_session_acks_completes_and_streams_logs(client: Client) -> None:
    # 25 memories: the pet facts fall out of the 20-slot working memory, the query must bring Max back.
    add = item(label="add", content=json.dumps(PET_FACTS + FILLER), task_id="t1")
    query = item(label="query", content="What's my dog's name again?", task_id="t1")
    got = collect(client.session([add], [query]))
    assert [a.item_id for a in got["acks"]] == [add.item_id, query.item_id]
    assert not any(a.duplicate for a in got["acks"])
    assert {c.item_id: c.status for c in got["completions"]} == {
        add.item_id: items_pb2.TASK_STATUS_COMPLETED,
        query.item_id: items_pb2.TASK_STATUS_COMPLETED,
    }
    labels = [log.label for log in got["logs"]]
    assert labels.count("addMemory") == 25
    added = [log for log in got["logs"] if log.label == "addMemory"]
    # each log item carries its own message and the sizes after its change (the worker reuses a per-message frame)
    assert all(log.source_item_id == add.item_id for log in added)
    sizes = [log.current_memory_sizes for log in added]
    assert [s.user_memory_size + s.long_term_memory_size for s in sizes] == list(range(1, 26))
    assert "addMessage" in labels and "scheduleMemory" in labels
    user_msg = next(log for log in got["logs"] if log.label == "addMessage")
    assert user_msg.log_content == "[User] What's my dog's name again?"
    assert user_msg.source_item_id == query.item_id
    moved = [log for log in got["logs"] if log.label == "scheduleMemory"]
    assert any("Max" in log.log_content and "→WorkingMemory]" in log.log_content for log in moved)
    last = got["logs"][-1]
    assert last.memory_capacities.working_memory_capacity == 20
    assert last.memory_capacities.long_term_memory_capacity == 10000
    assert last.current_memory_sizes.user_memory_size == 3
    assert last.current_memory_sizes.long_term_memory_size == 22
    assert last.current_memory_sizes.working_memory_size == 20
    sequences = [log.sequence for log in got["logs"]]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    assert any("Max" in text for text in client.working_texts())


def test_submit_is_durable_and_all_or_nothing(client: Client) -> None:
    good = [item(content="first fact"), item(content="second fact")]
    acks = client.stub.Submit(scheduler_pb2.SubmitRequest(items=good)).acks
    assert [a.item_id for a in acks] == [i.item_id for i in good]
    again = client.stub.Submit(scheduler_pb2.SubmitRequest(items=good[:1])).acks
    assert again[0].duplicate

    bad = [item(content="fine"), item(user="", content="no user"), item(label="nope")]
    with pytest.raises(grpc.RpcError) as err:
        client.stub.Submit(scheduler_pb2.SubmitRequest(items=bad))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "items[1].user_id" in err.value.details()
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(err.value)
    assert status is not None
    detail = error_details_pb2.BadRequest()
    status.details[0].Unpack(detail)
    assert [v.field for v in detail.field_violations] == ["items[1].user_id", "items[2].label"]
    assert client.wait_idle().idle
    with pytest.raises(grpc.RpcError) as missing:
        client.status(bad[0].item_id)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert client.memory().sizes.long_term_memory_size == 2


def test_status_of_items_and_tasks(client: Client) -> None:
    ok = item(content="remember this", task_id="job")
    bad = item(label="poison", content="x", task_id="job")
    other_cube = item(cube="c2", content="unaffected", task_id="job2")
    got = collect(client.session([ok, bad, other_cube]))
    completions = {c.item_id: c for c in got["completions"]}
    assert completions[bad.item_id].status == items_pb2.TASK_STATUS_FAILED
    assert "poison item" in completions[bad.item_id].error
    assert completions[other_cube.item_id].status == items_pb2.TASK_STATUS_COMPLETED

    failed = client.status(bad.item_id)
    assert failed.status == items_pb2.TASK_STATUS_FAILED
    assert failed.items[0].attempts == 3 and "RuntimeError" in failed.items[0].error
    assert failed.items[0].HasField("finished_at")
    task = client.stub.GetStatus(scheduler_pb2.GetStatusRequest(task_id="job"))
    assert task.status == items_pb2.TASK_STATUS_FAILED
    assert {s.item_id for s in task.items} == {ok.item_id, bad.item_id}
    assert (
        client.stub.GetStatus(scheduler_pb2.GetStatusRequest(task_id="job2")).status == items_pb2.TASK_STATUS_COMPLETED
    )
    with pytest.raises(grpc.RpcError) as err:
        client.stub.GetStatus(scheduler_pb2.GetStatusRequest())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_history_written_as_json_by_earlier_versions_still_replays(make_server: Any, tmp_path: Path) -> None:
    # History used to hold LogItem JSON; it now holds the wire bytes. A data dir from before must still replay.
    data_dir = tmp_path / "old"
    server, client = make_server(data_dir)
    client.session([item(content="an early memory"), item(content="a second memory")])
    server.stop()
    settings = load_settings(**settings_dict(data_dir))
    shards = ShardSet(settings.storage, settings.storage.shards)
    tables = shards.for_cube("u1", "c1")
    cube = keys.cube_key("u1", "c1")
    with tables.env.read() as txn:
        stored = tables.history(txn, cube, 10)
    assert [log.item().log_content for log in stored] == [
        "[LongTermMemory] an early memory: an early memory",
        "[LongTermMemory] a second memory: a second memory",
    ]
    old_format = stored[:1]  # the first as JSON, the second as wire bytes: a dir written across the upgrade
    tables.env.write(
        lambda txn: [
            txn.put(keys.history_key(cube, log.sequence), log.item().model_dump_json().encode(), db=tables._history)
            for log in old_format
        ]
    )
    shards.close()

    _, client = make_server(data_dir)
    stream = client.stub.WatchLogs(scheduler_pb2.WatchLogsRequest(user_id="u1", replay=10), timeout=30)
    replayed = next(stream)
    assert [log.SerializeToString() for log in replayed.logs] == [log.data for log in stored]
    stream.cancel()


def test_watch_replays_history_then_streams_live(client: Client) -> None:
    client.session([item(content="an early memory")])
    request = scheduler_pb2.WatchLogsRequest(user_id="u1", replay=10)
    stream = client.stub.WatchLogs(request, timeout=30)
    first = next(stream)
    assert [log.log_content for log in first.logs] == ["[LongTermMemory] an early memory: an early memory"]

    later = item(content="a later memory")
    threading.Thread(target=client.session, args=([later],), daemon=True).start()
    live = next(stream)
    assert live.logs[0].source_item_id == later.item_id
    stream.cancel()

    filtered = client.stub.WatchLogs(
        scheduler_pb2.WatchLogsRequest(user_id="u1", replay=10, labels=["nothing"]), timeout=1
    )
    with pytest.raises(grpc.RpcError) as err:
        next(filtered)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_get_memory_partitions(client: Client) -> None:
    chat = [{"role": "user", "content": "I am allergic to nuts."}, {"role": "assistant", "content": "Noted, no nuts."}]
    client.session([item(content=json.dumps(chat)), item(label="query", content="allergy nuts")])
    mem = client.memory()
    by_type = {p.memory_type: p for p in mem.partitions}
    assert set(by_type) == {
        items_pb2.MEMORY_TYPE_WORKING_MEMORY,
        items_pb2.MEMORY_TYPE_LONG_TERM_MEMORY,
        items_pb2.MEMORY_TYPE_USER_MEMORY,
        items_pb2.MEMORY_TYPE_ACTIVATION_MEMORY,
    }
    assert [m.memory for m in by_type[items_pb2.MEMORY_TYPE_USER_MEMORY].items] == ["I am allergic to nuts."]
    assert [m.memory for m in by_type[items_pb2.MEMORY_TYPE_LONG_TERM_MEMORY].items] == ["Noted, no nuts."]
    working = by_type[items_pb2.MEMORY_TYPE_WORKING_MEMORY]
    assert working.capacity == 20 and working.size == len(working.items) == 2
    assert working.items[0].importance >= working.items[1].importance > 0
    assert by_type[items_pb2.MEMORY_TYPE_ACTIVATION_MEMORY].capacity == -1
    with pytest.raises(grpc.RpcError) as err:
        client.stub.GetMemory(scheduler_pb2.GetMemoryRequest(user_id="u1"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "mem_cube_id" in err.value.details()


def test_wait_idle_waits_for_slow_work(client: Client) -> None:
    slow = item(label="slow", content="0.5")
    client.stub.Submit(scheduler_pb2.SubmitRequest(items=[slow]))
    req = scheduler_pb2.WaitIdleRequest(user_id="u1", mem_cube_id="c1")
    req.timeout.FromMilliseconds(1)
    assert not client.stub.WaitIdle(req).idle
    assert client.wait_idle(cube="c1").idle
    assert client.status(slow.item_id).status == items_pb2.TASK_STATUS_COMPLETED


def test_info_health_and_reflection(client: Client) -> None:
    info = client.stub.GetInfo(scheduler_pb2.GetInfoRequest())
    assert {"query", "answer", "add", "record"} <= set(info.labels)
    assert info.capacities.user_memory_capacity == 10000 and info.workers == 2
    health = health_pb2_grpc.HealthStub(client.channel)
    for service in ("", "memsched.v1.Scheduler"):
        assert (
            health.Check(health_pb2.HealthCheckRequest(service=service)).status
            == health_pb2.HealthCheckResponse.SERVING
        )
    refl = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    answers = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in next(answers).list_services_response.service}
    assert {"memsched.v1.Scheduler", "grpc.health.v1.Health"} <= names
