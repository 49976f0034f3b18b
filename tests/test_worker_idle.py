"""An idle worker places large cubes' memories in their latent space ahead of the queries that would.

Past ``latent_project_limit`` memories a cube's retriever projects none at its load or refit, and each query
projects the memories it reads the first time it reads them; idle steps do that work earlier, and must leave the
rankings exactly as the queries' own projection would.
"""

from __future__ import annotations

import queue
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from memsched_grpc.config import SchedulerConfig, Settings, StorageConfig
from memsched_grpc.models import MemoryItem
from memsched_grpc.retrieval.retriever import Retriever
from memsched_grpc.retrieval.settings import RetrievalConfig
from memsched_grpc.worker import IDLE_PROJECT_CHUNK, ResultTuple, Worker
from tests.conftest import item

WORDS = [f"w{i}" for i in range(120)]
LAZY = RetrievalConfig(exact_up_to=40, candidate_limit=40, latent_project_limit=0)  # every cube here is "large"


def _texts(count: int, seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(count)]


def _retriever(texts: list[str]) -> Retriever:
    retriever = Retriever(LAZY)
    now = datetime.now(UTC)
    retriever.add_many(MemoryItem(id=f"m{i}", memory=t, created_at=now, sequence=i + 1) for i, t in enumerate(texts))
    return retriever


def test_project_pending_projects_every_memory_as_queries_would() -> None:
    texts = _texts(600)
    idle, lazy = _retriever(texts), _retriever(texts)
    assert idle.latent.space is not None
    assert not idle.latent.known[:600].any()  # a large cube's fit projects nothing
    steps = 0
    while idle.project_pending(100):
        steps += 1
    assert steps == 6
    assert idle.latent.known[:600].all()
    assert idle.project_pending(100) == 0
    for query in _texts(40, seed=9):
        a, b = idle.rank(query), lazy.rank(query)  # lazy projects what this query reads now
        assert a.ids == b.ids
        assert np.array_equal(a.scores, b.scores)


class _Results:
    def __init__(self) -> None:
        self.items: list[ResultTuple] = []

    def put(self, obj: list[ResultTuple]) -> None:
        self.items.extend(obj)


def test_an_idle_worker_projects_a_large_cube_after_its_first_query(tmp_path: Path) -> None:
    tasks: queue.Queue[Any] = queue.Queue()
    results = _Results()
    settings = Settings(storage=StorageConfig(data_dir=tmp_path, shards=2), scheduler=SchedulerConfig(retrieval=LAZY))
    worker = Worker(settings, tasks, results)
    try:
        texts = _texts(3 * IDLE_PROJECT_CHUNK)
        payloads = [item(content=t).SerializeToString() for t in texts]
        payloads.append(item(label="query", content=texts[0]).SerializeToString())
        tasks.put((0, [(seq, 0, p) for seq, p in enumerate(payloads, 1)]))
        while len(results.items) < len(payloads):
            worker.run_once(0.01)
        assert all(outcome == "ok" for _, outcome, *_ in results.items)
        retriever = next(iter(worker.cubes.values()))._retriever
        assert retriever is not None and retriever.latent.space is not None
        n = len(texts)
        left = int((~retriever.latent.known[:n]).sum())
        assert left > IDLE_PROJECT_CHUNK  # the query projected only what it read
        worker.run_once(0.01)
        assert int((~retriever.latent.known[:n]).sum()) == left - IDLE_PROJECT_CHUNK  # one step per idle turn
        for _ in range(n // IDLE_PROJECT_CHUNK + 2):
            worker.run_once(0.01)
        assert retriever.latent.known[:n].all()
        assert worker._unprojected() is None  # the worker waits on its queue again
    finally:
        worker.close()


def test_a_cube_projected_whole_at_its_fit_leaves_no_idle_work() -> None:
    retriever = Retriever(LAZY.model_copy(update={"latent_project_limit": 1_000}))
    now = datetime.now(UTC)
    retriever.add_many(
        MemoryItem(id=f"m{i}", memory=t, created_at=now, sequence=i + 1) for i, t in enumerate(_texts(600))
    )
    assert retriever.latent.known[:600].all()
    assert not retriever.latent.unprojected  # an idle worker does not even scan it
