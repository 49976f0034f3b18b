"""The durable inbox on a real LMDB directory: ids, statuses, dead letters and retention."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from memsched_grpc import inbox as inbox_module
from memsched_grpc.config import StorageConfig
from memsched_grpc.inbox import GroupCommitter, Inbox, Incoming, Record, final_status
from memsched_grpc.models import TaskState
from tests.conftest import item


def _incoming(item_id: str, task_id: str = "") -> Incoming:
    it = item(item_id=item_id, task_id=task_id)
    return Incoming(it.item_id, it.user_id, it.mem_cube_id, it.label, it.task_id, it.SerializeToString())


def _wait_until_stored(inbox: Inbox, item_id: str) -> None:
    """Until ``item_id`` is committed: its commit went alone, so the callback that holds the commit thread is the
    one running, and what is submitted next waits behind it."""
    deadline = time.monotonic() + 5
    while inbox.status(item_id) is None:
        assert time.monotonic() < deadline, f"{item_id} was never committed"
        time.sleep(0.01)


def test_retention_forgets_finished_items_but_keeps_dead_letters(tmp_path: Path) -> None:
    inbox = Inbox(StorageConfig(data_dir=tmp_path, map_size_mb=4))
    try:
        done, dead, pending = inbox.accept([_incoming("done", "t"), _incoming("dead", "t"), _incoming("pending")])
        assert done and dead and pending
        inbox.finish([(done, TaskState.COMPLETED), (dead, TaskState.FAILED)])
        assert inbox.purge_finished(time.time_ns() - 3_600_000_000_000) == 0  # nothing is an hour old
        assert inbox.status("done") is not None

        assert inbox.purge_finished(time.time_ns() + 1) == 1
        assert inbox.status("done") is None and inbox.task_items("t") == ["dead"]
        assert inbox.status("dead").state == TaskState.FAILED  # type: ignore[union-attr]
        assert [s.item_id for s in inbox.dead_letters("", "", 10)] == ["dead"]
        assert inbox.status("pending").state == TaskState.WAITING  # type: ignore[union-attr]
        # a forgotten id is new again; a remembered one is still a duplicate
        again = inbox.accept([_incoming("done"), _incoming("pending")])
        assert again[0] is not None and again[1] is None

        [redriven] = inbox.redrive(["dead"])
        inbox.finish([(redriven, TaskState.COMPLETED)])
        assert inbox.purge_finished(time.time_ns() + 1) == 1
        assert inbox.status("dead") is None and not inbox.dead_letters("", "", 10)
    finally:
        inbox.close()


def test_group_commit_records_held_finishes_on_time_and_at_stop(tmp_path: Path) -> None:
    """Finishes wait for a later commit (FINISH_DELAY) so that accept commits stay small; none may be lost: they
    commit on their own when no accept comes, and stop() commits what is held."""
    inbox = Inbox(StorageConfig(data_dir=tmp_path, map_size_mb=4))
    committer = GroupCommitter(inbox, lambda records: None)
    committer.start()
    try:
        first, second = inbox.accept([_incoming("first"), _incoming("second")])
        assert first and second
        recorded = threading.Event()
        committer.finish([(first, TaskState.COMPLETED)], lambda error: recorded.set())
        assert recorded.wait(10), "a held finish with no traffic after it was never committed"
        assert inbox.status("first").state == TaskState.COMPLETED  # type: ignore[union-attr]

        outcomes: list[Exception | None] = []
        committer.finish([(second, TaskState.FAILED)], outcomes.append)
        accepted = threading.Event()
        committer.submit([_incoming("third")], lambda records, error: accepted.set())
        assert accepted.wait(10)
    finally:
        committer.stop()
    assert outcomes == [None]
    assert inbox.status("second").state == TaskState.FAILED  # type: ignore[union-attr]
    assert inbox.status("third").state == TaskState.WAITING  # type: ignore[union-attr]
    inbox.close()


def test_finishing_leaves_the_item_id_index_alone_and_old_index_values_still_read(tmp_path: Path) -> None:
    """The index is written at acceptance only (random ids: each write dirties a page of its own). Data dirs of
    earlier versions have the outcome's letter (C or F) in the index value; they must read, purge and re-drive
    the same."""
    inbox = Inbox(StorageConfig(data_dir=tmp_path, map_size_mb=4))
    status_db = inbox.env.dbs["status"]

    def index() -> dict[bytes, bytes]:
        with inbox.env.read() as txn:
            return {bytes(k): bytes(v) for k, v in txn.cursor(db=status_db)}

    try:
        done, dead = inbox.accept([_incoming("done", "t"), _incoming("dead", "t")])
        assert done and dead
        accepted = index()
        inbox.finish([(done, TaskState.COMPLETED), (dead, TaskState.FAILED)])
        assert index() == accepted
        assert inbox.status("done").state == TaskState.COMPLETED  # type: ignore[union-attr]

        def as_written_before(txn: Any) -> None:
            for key, letter in ((b"done", b"C"), (b"dead", b"F")):
                txn.put(key, letter + accepted[key][1:], db=status_db)

        inbox.env.write(as_written_before)
        assert inbox.status("done").state == TaskState.COMPLETED  # type: ignore[union-attr]
        assert inbox.status("dead").state == TaskState.FAILED  # type: ignore[union-attr]
        assert [s.item_id for s in inbox.dead_letters("", "", 10)] == ["dead"]
        assert inbox.purge_finished(time.time_ns() + 1) == 1
        assert inbox.status("done") is None and inbox.task_items("t") == ["dead"]
        [redriven] = inbox.redrive(["dead"])
        assert inbox.status("dead").state == TaskState.WAITING  # type: ignore[union-attr]
        inbox.finish([(redriven, TaskState.COMPLETED)])
        assert inbox.purge_finished(time.time_ns() + 1) == 1
        assert inbox.status("dead") is None and not inbox.dead_letters("", "", 10)
    finally:
        inbox.close()


_ids = st.text(st.characters(min_codepoint=0x20, blacklist_categories=("Cs",)), max_size=40).filter(
    lambda s: "\x7f" not in s
)


@settings(max_examples=200, deadline=None)
@given(
    ids=st.tuples(_ids, _ids, _ids, _ids, _ids),
    error=st.text(st.characters(blacklist_categories=("Cs",)), max_size=200),
    state=st.sampled_from([TaskState.COMPLETED, TaskState.FAILED]),
    attempts=st.integers(0, 2**32 - 1),
    accepted_ns=st.integers(0, 2**62),
    finished_ns=st.integers(0, 2**62),
)
def test_a_packed_final_status_reads_back_as_the_status_it_packs(
    ids: tuple[str, str, str, str, str], error: str, state: TaskState, attempts: int, accepted_ns: int, finished_ns: int
) -> None:
    """Ids cannot hold control characters (validation), the error can: it holds the separator too."""
    item_id, user_id, cube, label, task_id = ids
    record = Record(7, item_id, user_id, cube, label, task_id, b"", accepted_ns, attempts=attempts, error=error)
    expected = record.status(state, finished=True).model_copy(
        update={"finished_at": datetime.fromtimestamp(finished_ns / 1e9, UTC)}
    )
    assert final_status(7, record.final_value(state, finished_ns)) == expected
    assert final_status(7, expected.model_dump_json().encode()) == expected  # as versions before wrote it


def test_final_statuses_written_as_json_by_earlier_versions_still_read(tmp_path: Path) -> None:
    inbox = Inbox(StorageConfig(data_dir=tmp_path, map_size_mb=4))
    try:
        [dead] = inbox.accept([_incoming("dead", "t")])
        assert dead
        dead.error, dead.attempts = "boom", 3
        inbox.finish([(dead, TaskState.FAILED)])
        packed = inbox.status("dead")
        assert packed is not None and packed.state == TaskState.FAILED and packed.error == "boom"

        def as_written_before(txn: Any) -> None:
            txn.put(dead.seq.to_bytes(8, "big"), packed.model_dump_json().encode(), db=inbox.env.dbs["final"])

        inbox.env.write(as_written_before)
        assert inbox.status("dead") == packed
        assert inbox.dead_letters("", "", 10) == [packed]
        [redriven] = inbox.redrive(["dead"])
        inbox.finish([(redriven, TaskState.COMPLETED)])
        assert inbox.status("dead").state == TaskState.COMPLETED  # type: ignore[union-attr]
    finally:
        inbox.close()


def test_an_inbox_writing_through_its_map_has_it_allocated_on_disk_and_works_the_same(tmp_path: Path) -> None:
    """With ``inbox_writemap`` a fault on an unallocated page of the sparse map would be a SIGBUS on a full disk
    (tests/test_reliability.py shows the StorageError instead); here: allocated, and the same behaviour."""
    inbox = Inbox(StorageConfig(data_dir=tmp_path, map_size_mb=4, inbox_writemap=True))
    try:
        data = tmp_path / "inbox" / "data.mdb"
        assert data.stat().st_blocks * 512 >= 4 << 20
        done, dead = inbox.accept([_incoming("done", "t"), _incoming("dead", "t")])
        assert done and dead
        assert inbox.accept([_incoming("done")]) == [None]
        inbox.finish([(done, TaskState.COMPLETED), (dead, TaskState.FAILED)])
        assert inbox.status("done").state == TaskState.COMPLETED  # type: ignore[union-attr]
        assert [s.item_id for s in inbox.dead_letters("", "", 10)] == ["dead"]
        big = [Incoming(f"big-{n}", "u", "c", "add", "", b"x" * 2000) for n in range(4000)]  # the map grows past 4 MiB
        for n in range(0, len(big), 500):
            inbox.accept(big[n : n + 500])
        size = inbox.env.env.info()["map_size"]
        assert size > 4 << 20 and data.stat().st_blocks * 512 >= size
        assert inbox.status("big-3999").state == TaskState.WAITING  # type: ignore[union-attr]
    finally:
        inbox.close()


def test_a_query_commits_ahead_of_other_streams_backlog_but_after_its_own_stream(tmp_path: Path) -> None:
    """Under full-speed ingest thousands of items may wait for the inbox; a query's request goes first, with what
    its own stream sent before it, and the others follow in arrival order."""
    inbox = Inbox(StorageConfig(data_dir=tmp_path, map_size_mb=16))
    committer = GroupCommitter(inbox, lambda records: None)
    committer.start()
    release = threading.Event()
    seqs: dict[str, int] = {}
    done = threading.Semaphore(0)

    def recorded(records: Any, error: Any) -> None:
        for record in records:
            seqs[record.item_id] = record.seq
        done.release()

    def blocking(records: Any, error: Any) -> None:
        release.wait(30)  # holds the commit thread while the backlog builds up
        recorded(records, error)

    ingest, chat = object(), object()
    try:
        committer.submit([_incoming("first")], blocking, source=ingest)
        _wait_until_stored(inbox, "first")
        bulk = [[_incoming(f"bulk-{n}-{k}") for k in range(400)] for n in range(4)]
        committer.submit(bulk[0], recorded, source=ingest)
        committer.submit([_incoming("said")], recorded, source=chat)
        committer.submit(bulk[1], recorded, source=ingest)
        committer.submit([_incoming("asked")], recorded, source=chat, urgent=True)
        committer.submit([_incoming("after")], recorded, source=chat)
        committer.submit(bulk[2], recorded, source=ingest)
        committer.submit(bulk[3], recorded, source=ingest)
        release.set()
        for _ in range(8):
            assert done.acquire(timeout=10)
    finally:
        release.set()
        committer.stop()
        inbox.close()
    first_bulk = min(seqs[f"bulk-0-{k}"] for k in range(400))
    assert seqs["first"] < seqs["said"] < seqs["asked"] < first_bulk, "the query and its stream's earlier item go first"
    assert seqs["asked"] < seqs["after"]
    order = sorted(seqs, key=seqs.__getitem__)
    assert [i for i in order if i.startswith("bulk")] == [f"bulk-{n}-{k}" for n in range(4) for k in range(400)]
    assert order.index("after") > order.index("bulk-0-0")  # not urgent: in arrival order again


def test_without_a_query_requests_commit_in_arrival_order_at_most_max_group_items_at_a_time(
    tmp_path: Path, monkeypatch: Any
) -> None:
    cap = 1000
    monkeypatch.setattr(inbox_module, "MAX_GROUP_ITEMS", cap)
    inbox = Inbox(StorageConfig(data_dir=tmp_path, map_size_mb=16))
    groups: list[int] = []
    committer = GroupCommitter(inbox, lambda records: groups.append(len(records)))
    committer.start()
    release = threading.Event()
    try:
        committer.submit([_incoming("first")], lambda records, error: release.wait(30))
        _wait_until_stored(inbox, "first")
        per = cap // 4 + 1
        for n in range(8):
            committer.submit([_incoming(f"b-{n}-{k}") for k in range(per)], lambda records, error: None)
        committer.submit([_incoming(f"big-{k}") for k in range(cap + 1)], lambda records, error: None)
        release.set()
    finally:
        release.set()
        committer.stop()
        inbox.close()
    assert groups == [1, 3 * per, 3 * per, 2 * per, cap + 1]
