"""Property-based fuzzing of the contract (hypothesis): whatever arrives, the server answers every item
with exactly one ack or rejection, never crashes, and good items around bad ones are unaffected."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memsched.v1 import items_pb2, scheduler_pb2
from memsched_grpc.config import load_settings
from memsched_grpc.server import SchedulerServer
from tests.conftest import Client, collect, settings_dict

# Items near the 2,000-byte content limit are drawn on purpose: their size is what the data_too_large check flags.
FUZZ = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    data = tmp_path_factory.mktemp("fuzz")
    config = settings_dict(data, limits={"max_content_bytes": 2000, "max_id_bytes": 64})
    config["handlers"] = {}
    server = SchedulerServer(load_settings(**config))
    server.start()
    client = Client(server.address)
    yield client
    client.close()
    server.stop()


text = st.text(max_size=80)
ids = st.one_of(text, st.uuids().map(str))
timestamps = st.one_of(
    st.none(),
    st.tuples(st.integers(-(2**63), 2**63 - 1), st.integers(-(2**31), 2**31 - 1)),
    st.tuples(st.integers(1_500_000_000, 2_000_000_000), st.integers(0, 999_999_999)),
)


@st.composite
def items(draw: Any) -> items_pb2.ScheduleMessageItem:
    item = items_pb2.ScheduleMessageItem(
        item_id=draw(ids),
        user_id=draw(st.one_of(st.sampled_from(["fuzz-a", "fuzz-b"]), text)),
        mem_cube_id=draw(st.one_of(st.just("cube"), text)),
        label=draw(st.one_of(st.sampled_from(["add", "query", "answer", "mem_update"]), text)),
        content=draw(st.one_of(text, st.text(min_size=1900, max_size=2100))),
        task_id=draw(st.one_of(st.just(""), text)),
        session_id=draw(st.one_of(st.just(""), text)),
    )
    ts = draw(timestamps)
    if ts is not None:
        item.timestamp.seconds, item.timestamp.nanos = ts
    if draw(st.booleans()):
        item.info.update({"k": draw(text), "n": draw(st.floats(allow_nan=False))})
    return item


@FUZZ
@given(batch=st.lists(items(), max_size=12))
def test_every_item_gets_exactly_one_answer(fuzz_client: Client, batch: list[items_pb2.ScheduleMessageItem]) -> None:
    marker = items_pb2.ScheduleMessageItem(
        item_id=str(uuid.uuid4()), user_id="fuzz-a", mem_cube_id="cube", label="add", content="good item"
    )
    got = collect(fuzz_client.session([*batch, marker], timeout=60))
    answered = [(r.index, "rejection") for r in got["rejections"]]
    assert all(r.field and r.reason for r in got["rejections"])
    rejected_indexes = {i for i, _ in answered}
    assert len(rejected_indexes) == len(answered), "one rejection per item at most"
    accepted = len(batch) + 1 - len(rejected_indexes)
    assert len(got["acks"]) == accepted
    assert got["acks"][-1].item_id == marker.item_id and len(batch) not in rejected_indexes
    assert fuzz_client.stub.GetInfo(scheduler_pb2.GetInfoRequest()).workers == 2


@FUZZ
@given(payload=st.binary(max_size=300))
def test_raw_bytes_never_hurt_the_server(fuzz_client: Client, payload: bytes) -> None:
    raw_submit = fuzz_client.channel.unary_unary(
        "/memsched.v1.Scheduler/Submit", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    try:
        raw_submit(payload, timeout=30)
    except grpc.RpcError as e:
        assert e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL), e
        assert e.details()
    raw_session = fuzz_client.channel.stream_stream(
        "/memsched.v1.Scheduler/Session", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    try:
        list(raw_session(iter([payload, payload]), timeout=30))
    except grpc.RpcError as e:
        assert e.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.CANCELLED), e
    assert fuzz_client.stub.GetInfo(scheduler_pb2.GetInfoRequest()).workers == 2


def test_good_items_survive_a_fuzzed_neighbourhood(fuzz_client: Client, tmp_path: Path) -> None:
    assert fuzz_client.wait_idle(user="fuzz-a", seconds=60).idle
    memory = fuzz_client.memory("fuzz-a", "cube")
    texts = [m.memory for p in memory.partitions for m in p.items]
    assert "good item" in texts
