"""All items of one (user, cube) are handled in submission order; different cubes run in parallel."""

from __future__ import annotations

import time
from pathlib import Path

from memsched.v1 import scheduler_pb2
from tests.conftest import Client, collect, item


def test_per_cube_order_across_streams_and_batches(client: Client, record_dir: Path) -> None:
    cubes = [f"cube{i}" for i in range(6)]
    sent: dict[str, list[str]] = {c: [] for c in cubes}
    batches = []
    for b in range(20):
        batch = []
        for n in range(15):
            cube = cubes[(b * 7 + n) % len(cubes)]
            it = item(cube=cube, label="record", content=f"{b}-{n}")
            sent[cube].append(it.item_id)
            batch.append(it)
        batches.append(batch)
    got = collect(client.session(*batches[:10]))
    for batch in batches[10:]:  # the unary road keeps the same order
        client.stub.Submit(scheduler_pb2.SubmitRequest(items=batch))
    assert len(got["acks"]) == 150
    assert client.wait_idle().idle
    for cube in cubes:
        assert (record_dir / f"u1.{cube}").read_text().split() == sent[cube]


def test_a_slow_cube_does_not_hold_up_others(make_server: object, record_dir: Path) -> None:
    _, client = make_server(workers={"count": 2}, storage={"shards": 8})  # type: ignore[operator]
    slow = [item(cube="slow", label="slow", content="1.5")]
    client.stub.Submit(scheduler_pb2.SubmitRequest(items=slow))
    # Pick cubes that land on the other worker than "slow": shard = crc32 % 8, worker = shard % 2.
    from memsched_grpc.store.keys import shard_of

    slow_worker = shard_of("u1", "slow", 8) % 2
    others = [c for c in (f"fast{i}" for i in range(20)) if shard_of("u1", c, 8) % 2 != slow_worker][:3]
    start = time.monotonic()
    for cube in others:
        client.session([item(cube=cube, label="record", content="quick")])
        assert client.wait_idle(cube=cube, seconds=10).idle
    elapsed = time.monotonic() - start
    assert client.status(slow[0].item_id).status != 3 or elapsed < 1.5  # fast cubes finished while slow ran
    assert not client.wait_idle(cube="slow", seconds=0).idle or elapsed < 1.5
    assert client.wait_idle(cube="slow").idle


def test_a_query_is_handed_out_ahead_of_other_cubes_backlog(make_server: object, record_dir: Path) -> None:
    # One worker holding one batch of 4: the rest of the busy cube's 20 slow items wait in the server, and the
    # query for another cube goes to the worker before them (its cube keeps its own order).
    _, client = make_server(workers={"count": 1, "batch_size": 4, "held_batches": 1})  # type: ignore[operator]
    backlog = [item(cube="busy", label="slow", content="0.2") for _ in range(20)]
    client.stub.Submit(scheduler_pb2.SubmitRequest(items=backlog))
    got = collect(client.session([item(cube="chat", label="query", content="what did I say?")]))
    assert got["completions"][0].status == 3
    assert client.wait_idle(cube="busy", seconds=0).pending > 5
    waiting = [client.status(i.item_id).status for i in backlog[-5:]]
    assert all(s == 1 for s in waiting), "still held in the server: WAITING, not yet IN_PROGRESS"
    assert client.wait_idle(cube="busy").idle
    assert (record_dir / "u1.busy").read_text().split() == [i.item_id for i in backlog]


def test_a_query_cuts_the_workers_round_short(make_server: object, record_dir: Path) -> None:
    # The worker already holds all 40 slow items of the busy cube (one round's worth), so the query is handed
    # out past the spent credit and the running round ends after the current item: the query does not wait
    # for the rest of the round, and the busy cube's order holds.
    _, client = make_server(workers={"count": 1, "batch_size": 40, "held_batches": 1})  # type: ignore[operator]
    backlog = [item(cube="busy", label="slow", content="0.1") for _ in range(40)]
    client.stub.Submit(scheduler_pb2.SubmitRequest(items=backlog))
    deadline = time.monotonic() + 10
    while client.status(backlog[0].item_id).status != 2 and time.monotonic() < deadline:  # IN_PROGRESS
        time.sleep(0.01)
    got = collect(client.session([item(cube="chat", label="query", content="what did I say?")]))
    assert got["completions"][0].status == 3
    assert client.wait_idle(cube="busy", seconds=0).pending > 20, "answered before most of the round ran"
    assert client.wait_idle(cube="busy").idle
    assert (record_dir / "u1.busy").read_text().split() == [i.item_id for i in backlog]
