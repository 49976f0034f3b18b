"""The durable inbox on a real LMDB directory: ids, statuses, dead letters and retention."""

from __future__ import annotations

import time
from pathlib import Path

from memsched_grpc.config import StorageConfig
from memsched_grpc.inbox import Inbox, Incoming
from memsched_grpc.models import TaskState
from tests.conftest import item


def _incoming(item_id: str, task_id: str = "") -> Incoming:
    it = item(item_id=item_id, task_id=task_id)
    return Incoming(it.item_id, it.user_id, it.mem_cube_id, it.label, it.task_id, it.SerializeToString())


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
