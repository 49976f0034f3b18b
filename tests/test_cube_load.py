"""A cube's first query builds its retriever from the records the cube's load read (Cube._loaded), not from a second
read of every record: the same index as a second read gives, changes made before the build included, and nothing
kept once the loading message is over. Driven over a real LMDB dir."""

from __future__ import annotations

from typing import Any

import pytest

from memsched_grpc.cube import Cube
from memsched_grpc.models import MemoryItem
from memsched_grpc.retrieval.settings import RetrievalConfig
from memsched_grpc.store.cubes import CubeTables
from tests.conftest import in_cube

TOPICS = ["hiking", "pottery", "guitar", "sourdough", "chess", "kayak", "violin", "garden"]
QUERIES = ["hiking trip", "sourdough and pottery", "violin lessons", "kayak garden chess"]
CONFIG = RetrievalConfig()


def _fill(tables: CubeTables) -> None:
    def put(cube: Cube) -> None:
        for n in range(80):
            topic = TOPICS[n % len(TOPICS)]
            cube.put(
                MemoryItem(
                    id=f"m{n}", memory=f"talked about {topic} number {n}", metadata={"session_id": f"s{n // 10}"}
                )
            )

    in_cube(tables, put)


def _rankings(cube: Cube) -> list[tuple[list[tuple[str, float]], dict[str, float]]]:
    retriever = cube.retriever(CONFIG)
    return [(r.top(30), r.score_map()) for r in (retriever.rank(q) for q in QUERIES)]


def test_the_first_retriever_is_built_from_the_loaded_records_and_ranks_as_a_second_read(
    tables: CubeTables, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fill(tables)

    def reread(cube: Cube) -> Any:
        cube.message_done()  # the loaded records are dropped: the retriever reads every record again
        return _rankings(cube)

    expected = in_cube(tables, reread)
    reads = 0
    iter_memories = CubeTables.iter_memories

    def counted(self: CubeTables, *args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return iter_memories(self, *args, **kwargs)

    monkeypatch.setattr(CubeTables, "iter_memories", counted)
    assert in_cube(tables, _rankings) == expected
    assert reads == 2  # the load's two partitions, and no second read


def test_a_memory_put_before_the_build_is_in_the_first_retriever(tables: CubeTables) -> None:
    _fill(tables)

    def put_then_rank(cube: Cube) -> Any:
        cube.put(MemoryItem(id="new", memory="a zeppelin ride over the bay", metadata={"session_id": "s9"}))
        retriever = cube.retriever(CONFIG)
        return retriever.rank("zeppelin").top(1), len(retriever)

    top, size = in_cube(tables, put_then_rank)
    assert top[0][0] == "new" and size == 81


def test_a_memory_archived_before_the_build_is_not_in_the_first_retriever(tables: CubeTables) -> None:
    _fill(tables)

    def archive_then_look(cube: Cube) -> Any:
        cube.archive("m1")
        retriever = cube.retriever(CONFIG)
        return "m1" in retriever, len(retriever)

    assert in_cube(tables, archive_then_look) == (False, 79)
