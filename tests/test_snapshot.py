"""Cube snapshots (memsched_grpc/snapshot.py): a cube loaded from its snapshot is the cube its records build, and a
snapshot counts for nothing once a write of the cube's memories was committed after it, or when other code wrote it.
Over a real LMDB dir here, in-process workers that load snapshotted cubes while idle, and a real server's graceful
stop, restart and crash at the end."""

from __future__ import annotations

import queue
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from memsched.v1 import scheduler_pb2
from memsched_grpc import snapshot
from memsched_grpc.config import Settings, StorageConfig, WorkerConfig
from memsched_grpc.cube import Cube
from memsched_grpc.models import MemoryCapacities, MemoryItem
from memsched_grpc.retrieval.settings import RetrievalConfig
from memsched_grpc.store import keys
from memsched_grpc.store.cubes import CubeTables
from memsched_grpc.worker import Worker
from tests.conftest import in_cube, item

TOPICS = ["hiking", "pottery", "guitar", "sourdough", "chess", "kayak", "violin", "garden"]
QUERIES = ["hiking trip", "sourdough and pottery", "violin lessons", "kayak garden chess"]
CONFIG = RetrievalConfig(exact_up_to=50)  # past it: the bounded query path and lazily projected latent vectors
KEY = keys.cube_key("u1", "c1")


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the loads that read the memory records."""
    counted: list[int] = []
    iter_memories = CubeTables.iter_memories

    def counting(self: CubeTables, *args: Any, **kwargs: Any) -> Any:
        counted.append(1)
        return iter_memories(self, *args, **kwargs)

    monkeypatch.setattr(CubeTables, "iter_memories", counting)
    return counted


def _fill(tables: CubeTables, count: int = 120) -> None:
    def put(cube: Cube) -> None:
        for n in range(count):
            topic = TOPICS[n % len(TOPICS)]
            cube.put(
                MemoryItem(
                    id=f"m{n}", memory=f"talked about {topic} number {n}", metadata={"session_id": f"s{n // 10}"}
                )
            )
        cube.retriever(CONFIG)

    in_cube(tables, put)


def _save(tables: CubeTables) -> None:
    """What a worker's stop does for a loaded cube."""

    def snap(cube: Cube) -> bytes:
        cube.retriever(CONFIG)
        return cube.snapshot()

    tables.put_snapshot(KEY, in_cube(tables, snap))


def _look(cube: Cube) -> Any:
    retriever = cube.retriever(CONFIG)
    rankings = [(r.top(30), r.score_map()) for r in (retriever.rank(q) for q in QUERIES)]
    entries = {k: (e.fingerprint, e.tokens, e.sequence, e.usage_count) for k, e in cube.entries.items()}
    return rankings, entries, cube.last_sequence, cube.find_exact("talked about guitar number 2")


def _equal_states(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        if isinstance(value, np.ndarray):
            assert np.array_equal(value, b[name], equal_nan=True), name
        elif name == "latent":
            assert np.array_equal(value.vectors, b[name].vectors) and np.array_equal(value.has, b[name].has)
            assert value.space.vocabulary == b[name].space.vocabulary
            assert np.array_equal(value.space.projection, b[name].space.projection)
        else:
            assert value == b[name], name


def test_a_cube_loaded_from_its_snapshot_is_the_cube_its_records_build(tables: CubeTables, reads: list[int]) -> None:
    _fill(tables)
    expected = in_cube(tables, _look)
    built = in_cube(tables, lambda cube: cube.retriever(CONFIG).export_state())
    _save(tables)
    reads.clear()
    assert in_cube(tables, _look) == expected
    restored = in_cube(tables, lambda cube: (cube.saved, cube.retriever(CONFIG).export_state()))
    assert reads == []  # no record was read
    assert restored[0]
    _equal_states(restored[1], built)


def test_a_memory_written_after_the_snapshot_voids_it(tables: CubeTables, reads: list[int]) -> None:
    """A changed text keeps the cube's memory count, so only the token's deletion in the write's transaction tells
    the snapshot is stale."""
    _fill(tables)
    _save(tables)

    def change(cube: Cube) -> tuple[bool, bool]:
        loaded_saved = cube.saved
        cube.put(MemoryItem(id="m5", memory="a zeppelin ride over the bay", metadata={"session_id": "s0"}))
        return loaded_saved, cube.saved  # a worker stopping now would store a new snapshot

    # loads from the snapshot, then writes: the snapshot's token goes in that commit
    assert in_cube(tables, change) == (True, False)
    reads.clear()
    top = in_cube(tables, lambda cube: (cube.saved, cube.retriever(CONFIG).rank("zeppelin").top(1)))
    assert reads  # built from the records
    assert top == (False, [("m5", pytest.approx(top[1][0][1]))])


def test_a_memory_written_before_the_first_query_is_in_the_retriever_now_and_after_the_next_stop(
    tables: CubeTables, reads: list[int]
) -> None:
    """A cube loaded from its snapshot keeps the retriever's saved state until a query asks for it; a write before
    that makes the saved state stale, for this cube and for the snapshot a stop stores next."""
    _fill(tables)
    _save(tables)

    def add_then_look(cube: Cube) -> tuple[Any, bytes]:
        cube.put(MemoryItem(id="new", memory="a zeppelin ride over the bay", metadata={"session_id": "s9"}))
        return cube.retriever(CONFIG).rank("zeppelin").top(1), cube.snapshot()

    top, data = in_cube(tables, add_then_look)
    assert top[0][0] == "new"
    tables.put_snapshot(KEY, data)  # what the worker's stop stores
    reads.clear()
    assert in_cube(tables, lambda cube: cube.retriever(CONFIG).rank("zeppelin").top(1))[0][0] == "new"
    assert reads == []

    def add_only(cube: Cube) -> bytes:  # no query at all before the stop
        cube.put(MemoryItem(id="newer", memory="a balloon ride over the hills", metadata={"session_id": "s9"}))
        return cube.snapshot()

    tables.put_snapshot(KEY, in_cube(tables, add_only))
    assert in_cube(tables, lambda cube: cube.retriever(CONFIG).rank("balloon").top(1))[0][0] == "newer"


def test_every_write_of_a_memory_deletes_the_token_in_its_transaction(tables: CubeTables) -> None:
    _fill(tables)
    memory = MemoryItem(id="m1", memory="talked about pottery number 1")
    writes = [
        lambda txn: tables.put_memory(txn, KEY, memory),
        lambda txn: tables.delete_memory(txn, KEY, memory.memory_type, "m1"),
        lambda txn: tables.archive_memory(txn, KEY, memory),
    ]
    for write in writes:
        _save(tables)
        assert tables.env.write(lambda txn: tables.get_snapshot(txn, KEY)) is not None
        tables.env.write(write)
        assert tables.env.write(lambda txn: tables.get_snapshot(txn, KEY)) is None


def test_an_archived_memory_is_not_in_the_cube_loaded_next(tables: CubeTables, reads: list[int]) -> None:
    _fill(tables)
    _save(tables)
    in_cube(tables, lambda cube: cube.archive("m3"))
    reads.clear()
    assert in_cube(tables, lambda cube: "m3" in cube.retriever(CONFIG) or "m3" in cube.entries) is False
    assert reads


def test_uses_counted_after_the_snapshot_are_in_the_restored_cube(tables: CubeTables, reads: list[int]) -> None:
    """A counted use changes the usage table, not the memories: the snapshot stays, and the load takes the counts
    from the table as a load from the records does."""
    _fill(tables)
    _save(tables)

    def use(cube: Cube) -> None:
        for memory_id in ("m1", "m2", "m2", "m7"):
            cube.record_use(memory_id)

    in_cube(tables, use)
    reads.clear()
    counts = in_cube(tables, lambda cube: (cube.saved, {k: e.usage_count for k, e in cube.entries.items()}))
    assert reads == []
    assert counts[0] and counts[1]["m1"] == 1 and counts[1]["m2"] == 2 and counts[1]["m7"] == 1
    assert sum(counts[1].values()) == 4
    assert in_cube(tables, lambda cube: cube.get("m2").usage_count) == 2


def test_a_rolled_back_write_leaves_the_snapshot(tables: CubeTables, reads: list[int]) -> None:
    _fill(tables)
    _save(tables)
    txn = tables.env.env.begin(write=True)
    cube = Cube.load(tables, txn, "u1", "c1", MemoryCapacities(), 100)
    cube.txn = txn
    cube.put(MemoryItem(id="new", memory="never committed"))
    txn.abort()
    reads.clear()
    assert in_cube(tables, lambda cube: (cube.saved, "new" in cube.entries)) == (True, False)
    assert reads == []


def test_a_snapshot_of_other_code_or_of_another_cube_state_is_ignored(
    tables: CubeTables, reads: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    _fill(tables)
    expected = in_cube(tables, _look)
    _save(tables)
    with monkeypatch.context() as patch:
        patch.setattr(snapshot, "code_digest", lambda: b"\0" * 16)
        reads.clear()
        assert in_cube(tables, _look) == expected
        assert reads
    assert snapshot.decode(tables.env.write(lambda txn: tables.get_snapshot(txn, KEY)), 119) is None
    assert snapshot.decode(b"garbage", 120) is None
    damaged = tables.env.write(lambda txn: tables.get_snapshot(txn, KEY))[:-10]
    assert snapshot.decode(damaged, 120) is None
    reads.clear()
    assert in_cube(tables, _look) == expected  # the intact snapshot still serves
    assert reads == []


def test_another_retrieval_config_builds_its_retriever_from_the_records(tables: CubeTables, reads: list[int]) -> None:
    _fill(tables)
    _save(tables)
    other = RetrievalConfig(exact_up_to=50, k1=1.5)
    reads.clear()
    config = in_cube(tables, lambda cube: cube.retriever(other).config)
    assert config == other
    assert reads  # read for the retriever, the entries came from the snapshot


class _Results:
    def __init__(self) -> None:
        self.items: list[Any] = []

    def put(self, obj: list[Any]) -> None:
        self.items.extend(obj)


def test_an_idle_worker_loads_the_snapshotted_cubes_of_its_shards(
    tmp_path: Path, reads: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a start, a worker given its pool index loads its shards' cubes from their snapshots while idle, and
    leaves alone a cube whose snapshot is stale and the shards of other workers."""
    settings = Settings(storage=StorageConfig(data_dir=tmp_path, shards=2), workers=WorkerConfig(count=2))
    for shard in (0, 1):
        tables = CubeTables.open(tmp_path, shard, 64 << 20, True)
        _fill(tables)
        _save(tables)
        tables.env.close()
    expected = {}
    for index in (0, 1):
        worker = Worker(settings, queue.Queue(), _Results())  # no index: loads on demand only
        tables = worker.shards.tables(index)
        expected[index] = in_cube(tables, _look)
        worker.close()
    reads.clear()

    worker = Worker(settings, queue.Queue(), _Results(), index=1)
    for _ in range(3):
        worker.run_once(0.01)
    assert list(worker.cubes) == [KEY] and worker.cubes[KEY].saved and reads == []
    assert sorted(worker.shards._tables) == [1]  # shard 0 belongs to worker 0: not even opened
    tables = worker.shards.tables(1)

    def look_at_the_preloaded(txn: Any) -> Any:
        cube = worker.cubes[KEY]
        cube.txn = txn
        return _look(cube)

    assert tables.env.write(look_at_the_preloaded) == expected[1]
    worker.save_snapshots(0)  # a stop that stores nothing: the preloaded cube is saved as it is
    worker.close()

    tables = CubeTables.open(tmp_path, 1, 64 << 20, True)
    in_cube(tables, lambda cube: cube.archive("m1"))  # shard 1's token goes; its file stays, until its worker starts
    (tables.env.path / "snapshots" / "interrupted.tmp").write_bytes(b"half a snapshot")
    tables.env.close()
    snapshots = {shard: tmp_path / "shards" / f"{shard:03d}" / "snapshots" for shard in (0, 1)}
    assert len(list(snapshots[1].iterdir())) == 2
    Worker(settings, queue.Queue(), _Results(), index=1).close()
    assert not list(snapshots[1].iterdir()) and len(list(snapshots[0].iterdir())) == 1

    with monkeypatch.context() as patch:
        patch.setattr(snapshot, "code_digest", lambda: b"\0" * 16)  # shard 0's snapshot is of other code now
        worker = Worker(settings, queue.Queue(), _Results(), index=0)
        for _ in range(3):
            worker.run_once(0.01)
        assert not worker.cubes and reads == []  # left for its first message, which will load it from the records
        worker.save_snapshots(0)
        worker.close()
    assert len(list(snapshots[0].iterdir())) == 1  # a file with its token stays, whatever code reads it


def test_a_graceful_stop_saves_snapshots_and_a_crash_after_a_write_does_not_use_them(server_process: Any) -> None:
    """Through a real server: restarted after a graceful stop, it answers as a server without snapshots does, from
    its worker's snapshot; after an add and a kill -9, the cube loads from its records and holds the added memory."""

    def fill(client: Any) -> None:
        adds = [
            item(content=f"we talked about {TOPICS[n % len(TOPICS)]} number {n}", item_id=f"add-{n}") for n in range(60)
        ]
        client.stub.Submit(scheduler_pb2.SubmitRequest(items=adds))
        assert client.wait_idle().idle

    def ask(client: Any, text: str, item_id: str) -> list[str]:
        client.stub.Submit(scheduler_pb2.SubmitRequest(items=[item(label="query", content=text, item_id=item_id)]))
        assert client.wait_idle().idle
        return client.working_texts()

    with_snapshots = server_process()
    config = yaml.safe_load(with_snapshots.config_path.read_text())
    with_snapshots.config_path.write_text(yaml.safe_dump({**config, "log_level": "DEBUG"}))
    without = server_process(with_snapshots.data_dir.parent / "data-plain", workers={"snapshot_seconds": 0})
    answers = []
    for server in (with_snapshots, without):
        client = server.start()
        fill(client)
        ask(client, "a kayak trip", "q1")
        client.close()
        assert server.terminate() == 0
        client = server.start()
        answers.append(ask(client, "pottery and guitar", "q2"))
        client.close()
        assert server.terminate() == 0
    assert answers[0] == answers[1] and answers[0]
    assert len(list(with_snapshots.data_dir.glob("shards/*/snapshots/*.snap"))) == 1
    assert not list(without.data_dir.glob("shards/*/snapshots/*.snap"))
    log = with_snapshots.tmp_path / "server.log"  # only the first server logs at DEBUG
    assert log.read_text().count("loaded from its records") == 1
    assert log.read_text().count("from its snapshot") == 1  # loaded on demand or preloaded while idle

    client = with_snapshots.start()
    late = item(content="a zeppelin ride over the bay", item_id="late")
    client.stub.Submit(scheduler_pb2.SubmitRequest(items=[late]))
    assert client.wait_idle().idle
    client.close()
    with_snapshots.kill()  # no graceful stop: the stored snapshot is older than the add
    client = with_snapshots.start()
    assert "a zeppelin ride over the bay" in ask(client, "zeppelin ride", "q3")
    client.close()
    assert log.read_text().count("from its snapshot") == 2  # before the add; not after the kill
    assert log.read_text().count("loaded from its records") == 2
