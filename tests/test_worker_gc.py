"""The worker collects garbage while idle, not in the middle of a round (a query's latency paid for it)."""

from __future__ import annotations

import gc
import queue
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from memsched_grpc.config import Settings, StorageConfig
from memsched_grpc.worker import IDLE_COLLECT_AFTER, ResultTuple, Worker
from tests.conftest import item


class _Results:
    def __init__(self) -> None:
        self.items: list[ResultTuple] = []

    def put(self, obj: list[ResultTuple]) -> None:
        self.items.extend(obj)


class _Node:
    """A reference cycle: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[tuple[Worker, queue.Queue[Any], _Results]]:
    tasks: queue.Queue[Any] = queue.Queue()
    results = _Results()
    w = Worker(Settings(storage=StorageConfig(data_dir=tmp_path, shards=2)), tasks, results)
    was_enabled = gc.isenabled()
    gc.disable()  # only the worker may collect during these tests
    try:
        yield w, tasks, results
    finally:
        if was_enabled:
            gc.enable()
        w.close()


def _garbage_cycle() -> weakref.ref[_Node]:
    node = _Node()
    ref = weakref.ref(node)
    del node
    return ref


def test_an_idle_worker_collects_garbage(worker: tuple[Worker, queue.Queue[Any], _Results]) -> None:
    w, _, _ = worker
    cycle = _garbage_cycle()
    held: list[list[int]] = [[] for _ in range(IDLE_COLLECT_AFTER)]  # enough new objects for a collection to be due
    assert gc.get_count()[0] >= IDLE_COLLECT_AFTER
    assert w.run_once(timeout=0.05)
    assert cycle() is None
    assert len(held) == IDLE_COLLECT_AFTER


def test_a_worker_with_work_handles_it_before_collecting(worker: tuple[Worker, queue.Queue[Any], _Results]) -> None:
    w, tasks, results = worker
    tasks.put((0, [(1, 0, item(label="add", content="the cat sleeps on the sofa").SerializeToString())]))
    assert w.run_once(timeout=0.05)  # loads the cube, which freezes what exists now out of the collector
    cycle = _garbage_cycle()
    held: list[list[int]] = [[] for _ in range(IDLE_COLLECT_AFTER)]
    tasks.put((0, [(2, 0, item(label="query", content="where does the cat sleep?").SerializeToString())]))
    assert w.run_once(timeout=0.05)
    assert [(seq, outcome) for seq, outcome, *_ in results.items] == [(1, "ok"), (2, "ok")]
    assert cycle() is not None  # handled without a collection in between
    assert w.run_once(timeout=0.05)  # now idle: collected
    assert cycle() is None
    assert len(held) == IDLE_COLLECT_AFTER
