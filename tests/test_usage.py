"""Use counts: a query counts a use of each memory it brings into working memory, an answer of each working memory
it draws on. The counts live in per-cube arrays beside the memory records (store/cubes.py), so these tests check
that every reader sees the same count, that counts survive restarts, and that data dirs whose counts are in the
records (written before the arrays) keep them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from memsched.v1 import items_pb2, scheduler_pb2
from memsched_grpc.cube import Cube
from memsched_grpc.models import MemoryCapacities, MemoryItem, MemoryType
from memsched_grpc.store import keys
from memsched_grpc.store.cubes import CubeTables
from tests.conftest import Client, completed_logs, item

FACTS = [f"Fact {n}: the alpha{n} and beta{n} tools." for n in range(25)]
MAX = "Max the golden retriever loves peanut butter biscuits."
SHARDS = 4  # settings_dict's


def _counts(client: Client) -> dict[str, int]:
    """Every long-term memory's use count, as GetMemory reads it."""
    part = client.memory("u1", "c1", items_pb2.MEMORY_TYPE_LONG_TERM_MEMORY).partitions[0]
    return {m.id: m.usage_count for m in part.items}


def _working_counts(client: Client) -> dict[str, int]:
    state = client.stub.GetCubeState(scheduler_pb2.GetCubeStateRequest(user_id="u1", mem_cube_id="c1"))
    return {w.id: w.usage_count for w in state.working_memory}


def _tables(data_dir: Path) -> CubeTables:
    return CubeTables.open(data_dir, keys.shard_of("u1", "c1", SHARDS), 16 << 20, True)


def _setup(make_server: Any, data_dir: Path) -> tuple[Any, Client, str]:
    """A cube whose Max memory was brought in by a query and drawn on by an answer: two uses."""
    server, client = make_server(data_dir=data_dir)
    completed_logs(
        client, [item(content=MAX)], [item(content=json.dumps([{"role": "assistant", "content": f} for f in FACTS]))]
    )
    moved = [log for log in completed_logs(client, [item(label="query", content="What does Max love to eat?")])]
    newcomers = [log.metadata[0].id for log in moved if log.label == "scheduleMemory"]
    assert len(newcomers) == 1
    completed_logs(client, [item(label="answer", content="Max loves peanut butter biscuits.")])
    return server, client, newcomers[0]


def test_use_counts_read_the_same_everywhere_and_survive_restarts(make_server: Any, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server, client, max_id = _setup(make_server, data_dir)
    counts = _counts(client)
    assert counts[max_id] == 2 and sum(counts.values()) == 2
    assert _working_counts(client)[max_id] == 2
    server.stop()

    server, client = make_server(data_dir=data_dir)
    assert _counts(client) == counts
    assert _working_counts(client)[max_id] == 2
    completed_logs(
        client, [item(label="answer", content="Yes, Max loves peanut butter.")]
    )  # the reloaded cube counts on
    assert _counts(client)[max_id] == 3
    server.stop()

    tables = _tables(data_dir)
    try:
        with tables.env.read() as txn:
            cube = keys.cube_key("u1", "c1")
            assert tables.get_memory(txn, cube, MemoryType.LONG_TERM, max_id).usage_count == 3  # type: ignore[union-attr]
            record = tables.memory_record(txn, cube, MemoryType.LONG_TERM, max_id)
            assert record is not None and record.usage_count == 0  # a use rewrites no memory record
    finally:
        tables.env.close()


def test_counts_that_earlier_versions_kept_in_records_still_count(make_server: Any, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server, client, max_id = _setup(make_server, data_dir)
    fact_id = next(i for i, n in _counts(client).items() if i != max_id)
    server.stop()

    # An earlier version's data dir: no use-count arrays, the counts in the records.
    tables = _tables(data_dir)
    cube = keys.cube_key("u1", "c1")
    try:

        def rewrite(txn: Any) -> None:
            assert txn.delete(keys.usage_key(cube, 0), db=tables.env.dbs["usage"])
            for memory_id, count in ((max_id, 5), (fact_id, 4)):
                record = tables.memory_record(txn, cube, MemoryType.LONG_TERM, memory_id)
                assert record is not None
                tables.put_memory(txn, cube, record.model_copy(update={"usage_count": count}))

        tables.env.write(rewrite)
    finally:
        tables.env.close()

    server, client = make_server(data_dir=data_dir)
    counts = _counts(client)
    assert (counts[max_id], counts[fact_id], sum(counts.values())) == (5, 4, 9)
    # An answer drawing on a later memory than Max writes the array over Max's place, with Max's count.
    texts = {m.id: m.memory for m in client.memory("u1", "c1").partitions[0].items}
    later = next(i for i in _working_counts(client) if i not in (max_id, fact_id))
    own_words = [w for w in texts[later].rstrip(".").split() if w.startswith(("alpha", "beta"))]
    completed_logs(client, [item(label="answer", content=" ".join(own_words))])
    assert _counts(client) == {**counts, later: 1}
    server.stop()

    server, client = make_server(data_dir=data_dir)
    assert _counts(client) == {**counts, later: 1}
    server.stop()
    tables = _tables(data_dir)
    try:
        with tables.env.read() as txn:
            assert list(tables.load_usage(txn, cube)) == [0]
    finally:
        tables.env.close()


def test_a_new_memory_does_not_take_the_count_of_an_archived_one(tmp_path: Path) -> None:
    """After a reload, sequence numbers continue from the highest live memory, so a new memory may get the number
    of an archived one whose count is still in the array. Archiving never picks the newest memory through the
    service (it is in working memory), so this drives a Cube directly, over a real LMDB dir."""
    tables = CubeTables.open(tmp_path, 0, 16 << 20, True)
    caps = MemoryCapacities()

    def with_cube(fn: Any) -> Any:
        def write(txn: Any) -> Any:
            cube = Cube.load(tables, txn, "u1", "c1", caps, 100)
            cube.txn = txn
            out = fn(cube)
            cube.save()
            return out

        return tables.env.write(write)

    try:
        with_cube(lambda cube: [cube.put(MemoryItem(id=i, memory=f"memory {i}")) for i in ("a", "b")])
        with_cube(lambda cube: [cube.record_use("b") for _ in range(3)])
        assert with_cube(lambda cube: (cube.get("b").sequence, cube.get("b").usage_count)) == (2, 3)
        with_cube(lambda cube: cube.archive("b"))
        assert with_cube(lambda cube: cube.put(MemoryItem(id="c", memory="memory c")).sequence) == 2
        assert with_cube(lambda cube: (cube.get("c").usage_count, cube.get("a").usage_count)) == (0, 0)
        with tables.env.read() as txn:
            memory = tables.get_memory(txn, keys.cube_key("u1", "c1"), MemoryType.LONG_TERM, "c")
            assert memory is not None and memory.usage_count == 0
            archived = list(tables.iter_archive(txn, keys.cube_key("u1", "c1"), MemoryType.LONG_TERM))
            assert [(m.id, m.usage_count) for m in archived] == [("b", 3)]
    finally:
        tables.env.close()
