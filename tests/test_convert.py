"""Log items travel from the worker to the clients as protobuf bytes; whoever decodes them (the dashboard)
must get back what the handler logged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from memsched_grpc import convert
from memsched_grpc.cube import Cube
from memsched_grpc.encoded_log import EncodedLog
from memsched_grpc.models import (
    CubeState,
    LogEntry,
    LogItem,
    MemoryCapacities,
    MemoryItem,
    MemorySizes,
    MemoryType,
    Message,
    TaskState,
    WorkingEntry,
    cube_sizes,
)
from memsched_grpc.store.cubes import CubeTables


def test_encoded_log_round_trips() -> None:
    when = datetime(2026, 11, 25, 12, 30, 1, 250_000, tzinfo=UTC)
    item = LogItem(
        item_id="i1",
        user_id="ann",
        mem_cube_id="pets",
        label="query",
        from_memory_type=MemoryType.LONG_TERM,
        to_memory_type=MemoryType.WORKING,
        log_content="His name is Max",
        # zeros must survive: a missing size would read back as -1 ("not initialised")
        current_memory_sizes=MemorySizes(
            long_term_memory_size=0, user_memory_size=3, working_memory_size=1, transformed_act_memory_size=0
        ),
        memory_capacities=MemoryCapacities(working_memory_capacity=7),
        timestamp=when,
        task_id="t1",
        status=TaskState.COMPLETED,
        memcube_name="pets",
        memory_len=15,
        memcube_log_content=[LogEntry(content="x", ref_id="m1", from_memory_type=MemoryType.LONG_TERM)],
        metadata=[MemoryItem(id="m1", memory="His name is Max", key="dog", tags=["pet"], updated_at=when)],
        source_item_id="q1",
        sequence=42,
    )
    encoded = EncodedLog.of(item)
    assert (encoded.user_id, encoded.mem_cube_id, encoded.label, encoded.sequence) == ("ann", "pets", "query", 42)
    back = encoded.item()
    assert back.model_dump(exclude={"metadata"}) == item.model_dump(exclude={"metadata"})
    m = back.metadata[0]
    assert (m.id, m.memory, m.key, m.tags, m.updated_at) == ("m1", "His name is Max", "dog", ["pet"], when)


@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.sampled_from([UTC, None])),
    st.integers(min_value=-12 * 60, max_value=14 * 60),
)
def test_timestamps_equal_protobufs_own_conversion(when: datetime, offset_minutes: int) -> None:
    for value in (when, when.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))):
        expected = Timestamp()
        expected.FromDatetime(value.astimezone(UTC))
        assert convert.timestamp(value) == expected


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 40), st.integers(-1, 10**6))
def test_sizes_from_a_cube_state_equal_the_models(long_term: int, user: int, working: int, activation: int) -> None:
    state = CubeState(
        user_id="u",
        mem_cube_id="c",
        long_term_size=long_term,
        user_size=user,
        working=[WorkingEntry(id=str(i)) for i in range(working)],
        activation_size=activation,
    )
    assert convert.state_sizes_to_proto(state) == convert.sizes_to_proto(cube_sizes(state))


def test_a_cubes_log_item_is_what_the_handler_logged(tmp_path: Path) -> None:
    """The worker builds log items straight into protobuf, without the LogItem model; decoded, they must be the
    LogItem it stands for, and the cube's history must hold the same bytes."""
    when = datetime(2026, 11, 25, 12, 30, 1, 250_000, tzinfo=UTC)
    tables = CubeTables.open(tmp_path, 0, 1 << 24, sync=False)
    state = CubeState(user_id="ann", mem_cube_id="pets", user_size=3, working=[WorkingEntry(id="m1")], next_log_seq=5)
    cube = Cube(tables, state, MemoryCapacities(working_memory_capacity=7), history_keep=10)
    message = Message(item_id="q1", user_id="ann", mem_cube_id="pets", label="query", task_id="t1", mem_cube="Pets")
    memory = MemoryItem(id="m1", memory="His name is Max", key="dog", tags=["pet", "dog"], updated_at=when)
    entry = LogEntry(content="x", ref_id="m1", from_memory_type=MemoryType.LONG_TERM)

    def log(txn: Any) -> tuple[EncodedLog, list[EncodedLog]]:
        cube.txn = txn
        encoded = cube.log(message, "query", MemoryType.LONG_TERM, MemoryType.WORKING, "Max", [memory], [entry])
        cube.write_history()
        return encoded, tables.history(txn, cube.key, 10)

    encoded, history = tables.env.write(log)
    assert history == [encoded]
    assert (encoded.user_id, encoded.mem_cube_id, encoded.label, encoded.sequence) == ("ann", "pets", "query", 5)
    back = encoded.item()
    expected = LogItem(
        item_id="q1/5",
        user_id="ann",
        mem_cube_id="pets",
        label="query",
        from_memory_type=MemoryType.LONG_TERM,
        to_memory_type=MemoryType.WORKING,
        log_content="Max",
        current_memory_sizes=cube_sizes(state),
        memory_capacities=MemoryCapacities(working_memory_capacity=7),
        timestamp=back.timestamp,
        task_id="t1",
        status=TaskState.COMPLETED,
        memcube_name="Pets",
        memory_len=1,
        memcube_log_content=[entry],
        metadata=[memory],
        source_item_id="q1",
        sequence=5,
    )
    assert back.model_dump(exclude={"metadata"}) == expected.model_dump(exclude={"metadata"})
    m = back.metadata[0]
    assert (m.id, m.memory, m.key, m.tags, m.updated_at) == ("m1", "His name is Max", "dog", ["pet", "dog"], when)
    assert encoded.data == EncodedLog.of(expected).data
