"""Crashes and restarts: accepted work survives a kill -9 of the server and of a worker."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from memsched.v1 import items_pb2, scheduler_pb2
from memsched_grpc.config import StorageConfig
from memsched_grpc.inbox import Inbox, Incoming
from tests.conftest import collect, item


def test_restart_processes_every_acknowledged_item_exactly_once(server_process: object) -> None:
    server = server_process(workers={"count": 2})  # type: ignore[operator]
    client = server.start()
    # "slow" keeps a worker busy so that most items are acknowledged but not yet handled at the kill.
    blocker = item(cube="c0", label="slow", content="30")
    items = [item(cube=f"c{n % 4}", label="tally", content=str(n)) for n in range(200)]
    acks = client.stub.Submit(scheduler_pb2.SubmitRequest(items=[blocker, *items])).acks
    assert len(acks) == 201
    time.sleep(0.5)
    server.kill()
    client.close()

    fast = item(cube="c0", label="tally", content="after")  # proves the restarted server accepts new work
    config = server.config_path.read_text()
    server.config_path.write_text(config.replace("slow: tests.handlers:slow", "slow: tests.handlers:record"))
    client = server.start()
    assert client.stub.Submit(scheduler_pb2.SubmitRequest(items=[fast])).acks
    assert client.wait_idle(seconds=60).idle
    for n in range(4):
        sent = [i.item_id for i in items if i.mem_cube_id == f"c{n}"] + ([fast.item_id] if n == 0 else [])
        assert client.tallies(cube=f"c{n}") == [(item_id, 1) for item_id in sent], "each item applied exactly once"
    assert client.status(blocker.item_id).status == items_pb2.TASK_STATUS_COMPLETED
    for it in items[:20]:
        assert client.status(it.item_id).status == items_pb2.TASK_STATUS_COMPLETED
    # resending acknowledged items is safe: duplicates, never run again
    again = client.stub.Submit(scheduler_pb2.SubmitRequest(items=items[:50])).acks
    assert all(a.duplicate for a in again)
    assert server.terminate() == 0


def test_killed_worker_is_replaced_and_its_items_redelivered(server_process: object, record_dir: Path) -> None:
    server = server_process(workers={"count": 1})  # type: ignore[operator]
    client = server.start()
    [worker] = server.worker_pids()
    victim = item(label="slow", content="2")
    after = [item(label="record", content=str(n)) for n in range(5)]
    client.stub.Submit(scheduler_pb2.SubmitRequest(items=[victim, *after]))
    time.sleep(0.7)  # the worker is inside the slow handler now
    os.kill(worker, signal.SIGKILL)
    assert client.wait_idle(seconds=60).idle
    assert client.status(victim.item_id).status == items_pb2.TASK_STATUS_COMPLETED
    assert client.status(victim.item_id).items[0].attempts == 2
    assert (record_dir / "u1.c1").read_text().split() == [victim.item_id] + [a.item_id for a in after]
    [replacement] = server.worker_pids()
    assert replacement != worker
    got = collect(client.session([item(label="record", content="pool is whole")]))
    assert got["completions"][0].status == items_pb2.TASK_STATUS_COMPLETED
    assert server.terminate() == 0


def test_items_sent_during_a_restart_do_not_overtake_redelivered_ones(server_process: object, record_dir: Path) -> None:
    # Items of the same cube submitted while the dead worker's replacement boots reach it only after the
    # redelivery of what the dead one held: the cube's order holds across the restart.
    server = server_process(workers={"count": 1})  # type: ignore[operator]
    client = server.start()
    [worker] = server.worker_pids()
    victim = item(label="slow", content="2")
    held = [item(label="record", content=str(n)) for n in range(3)]
    client.stub.Submit(scheduler_pb2.SubmitRequest(items=[victim, *held]))
    time.sleep(0.7)  # the worker is inside the slow handler now
    os.kill(worker, signal.SIGKILL)
    later = []
    deadline = time.monotonic() + 10
    while server.worker_pids() != [] and server.worker_pids()[0] == worker and time.monotonic() < deadline:
        time.sleep(0.01)  # the server notices the death and starts booting the replacement
    for n in range(20):  # a stream of new items while the replacement boots
        later.append(item(label="record", content=f"later {n}"))
        client.stub.Submit(scheduler_pb2.SubmitRequest(items=[later[-1]]))
        time.sleep(0.05)
    assert client.wait_idle(seconds=60).idle
    expected = [victim.item_id] + [i.item_id for i in held] + [i.item_id for i in later]
    assert (record_dir / "u1.c1").read_text().split() == expected
    assert server.terminate() == 0


def test_sigterm_keeps_accepted_items(server_process: object, record_dir: Path) -> None:
    server = server_process(workers={"count": 1}, server={"grace_seconds": 0.5})  # type: ignore[operator]
    client = server.start()
    items = [item(label="slow", content="0.2") for _ in range(20)]
    client.stub.Submit(scheduler_pb2.SubmitRequest(items=items))
    assert server.terminate() == 0
    client.close()
    done_before = len((record_dir / "u1.c1").read_text().split()) if (record_dir / "u1.c1").exists() else 0
    assert done_before < 20
    client = server.start()
    assert client.wait_idle(seconds=60).idle
    assert sorted((record_dir / "u1.c1").read_text().split()) == sorted(i.item_id for i in items)
    assert server.terminate() == 0


def test_an_undecodable_stored_item_fails_alone_and_does_not_bring_workers_down(
    tmp_path: Path, make_server: Any
) -> None:
    """An item that earlier versions let in (info holding Infinity, which has no JSON form) is in the inbox when
    the server starts: the worker reports it failed, with the reason, instead of dying on it at every
    redelivery; the items around it complete."""
    data_dir = tmp_path / "poisoned"
    poison = item(content="poison")
    poison.info.update({"x": float("inf")})
    before, after = item(content="before"), item(content="after")
    inbox = Inbox(StorageConfig(data_dir=data_dir, map_size_mb=16, shards=4))
    try:
        inbox.accept(
            [
                Incoming(i.item_id, i.user_id, i.mem_cube_id, i.label, i.task_id, i.SerializeToString())
                for i in (before, poison, after)
            ]
        )
    finally:
        inbox.close()
    _, client = make_server(data_dir=data_dir)
    assert client.wait_idle(seconds=60).idle
    failed = client.status(poison.item_id)
    assert failed.status == items_pb2.TASK_STATUS_FAILED and "undecodable message" in failed.items[0].error
    assert client.status(before.item_id).status == items_pb2.TASK_STATUS_COMPLETED
    assert client.status(after.item_id).status == items_pb2.TASK_STATUS_COMPLETED
