"""MemOS's scheduling semantics through the service: add, query, answer, activation memory, queued labels."""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from memsched.v1 import items_pb2, scheduler_pb2
from memsched_grpc.handlers.add import _near_duplicate_of
from memsched_grpc.handlers.query import MIN_MEMORY_CHARS, _distinct
from tests.conftest import Client, completed_logs, item


def test_add_updates_duplicates_instead_of_adding_them(client: Client) -> None:
    logs = completed_logs(
        client,
        [item(content="My sister Anna lives in Lisbon and teaches piano to children.")],
        [item(content="  my sister anna lives in LISBON and teaches piano to children. ")],  # exact but for case/space
        [item(content="My sister Anna lives in Lisbon and teaches the piano to children.")],  # near duplicate
        [item(content="I bought a red bicycle last spring.")],
    )
    assert [log.label for log in logs] == ["addMemory", "updateMemory", "updateMemory", "addMemory"]
    assert logs[1].metadata[0].id == logs[0].metadata[0].id == logs[2].metadata[0].id
    assert client.memory().sizes.long_term_memory_size == 2


def test_chat_messages_become_user_and_long_term_memories_with_metadata(client: Client) -> None:
    chat = [
        {"role": "user", "content": "I run every morning before work.", "metadata": {"dia_id": "D1:1"}},
        {"role": "assistant", "content": "Running every morning is a great habit.", "id": "turn-2"},
    ]
    logs = completed_logs(client, [item(content=json.dumps(chat))])
    assert [(log.from_memory_type, log.to_memory_type) for log in logs] == [
        (items_pb2.MEMORY_TYPE_USER_INPUT, items_pb2.MEMORY_TYPE_USER_MEMORY),
        (items_pb2.MEMORY_TYPE_USER_INPUT, items_pb2.MEMORY_TYPE_LONG_TERM_MEMORY),
    ]
    memory = client.memory()
    user = next(p for p in memory.partitions if p.memory_type == items_pb2.MEMORY_TYPE_USER_MEMORY)
    assert user.items[0].metadata["dia_id"] == "D1:1" and user.items[0].metadata["role"] == "user"
    long_term = next(p for p in memory.partitions if p.memory_type == items_pb2.MEMORY_TYPE_LONG_TERM_MEMORY)
    assert long_term.items[0].id == "turn-2"


def test_capacity_evicts_the_least_valuable_memory_into_the_archive(make_server: Any) -> None:
    _, client = make_server(scheduler={"capacities": {"long_term_memory_capacity": 3, "working_memory_capacity": 2}})
    facts = [
        "Paris is the capital of France.",
        "Berlin hosts a marathon.",
        "Tokyo has many trains.",
        "Lima sits on the Pacific coast.",
    ]
    completed_logs(client, [item(content=facts[0])], [item(content=facts[1])], [item(content=facts[2])])
    completed_logs(client, [item(label="query", content="capital of France")])  # Paris is used: it gains value
    logs = completed_logs(client, [item(content=facts[3])])
    archived = [log for log in logs if log.label == "archiveMemory"]
    assert len(archived) == 1 and "Berlin" in archived[0].log_content
    assert archived[0].from_memory_type == items_pb2.MEMORY_TYPE_LONG_TERM_MEMORY
    memory = client.stub.GetMemory(
        scheduler_pb2.GetMemoryRequest(user_id="u1", mem_cube_id="c1", include_archived=True)
    )
    assert memory.sizes.long_term_memory_size == 3
    assert [m.memory for m in memory.archived] == [facts[1]]
    state = client.stub.GetCubeState(scheduler_pb2.GetCubeStateRequest(user_id="u1", mem_cube_id="c1"))
    assert state.archived == 1


def test_query_window_keywords_and_answer_usage(make_server: Any) -> None:
    _, client = make_server(scheduler={"context_window_size": 2})
    facts = [f"Fact {n}: the alpha{n} and beta{n} tools." for n in range(25)]
    completed_logs(
        client,
        [item(content="Max the golden retriever loves peanut butter biscuits.")],
        [item(content=json.dumps([{"role": "assistant", "content": f}])) for f in facts],
    )
    first = completed_logs(client, [item(label="query", content="What does Max love to eat?")])
    assert first[0].label == "addMessage" and first[0].log_content == "[User] What does Max love to eat?"
    moved = [log for log in first if log.label == "scheduleMemory"]
    assert len(moved) == 1 and moved[0].log_content.startswith("[LongTermMemory→WorkingMemory]")
    assert "peanut butter" in moved[0].log_content
    assert moved[0].to_memory_type == items_pb2.MEMORY_TYPE_WORKING_MEMORY
    assert moved[0].metadata[0].memory_type == items_pb2.MEMORY_TYPE_WORKING_MEMORY  # shown where it now is

    def cube_state() -> Any:
        return client.stub.GetCubeState(scheduler_pb2.GetCubeStateRequest(user_id="u1", mem_cube_id="c1"))

    max_id = moved[0].metadata[0].id
    before = next(w.usage_count for w in cube_state().working_memory if w.id == max_id)
    answer = completed_logs(client, [item(label="answer", content="Max loves peanut butter biscuits.")])
    assert [log.log_content for log in answer] == ["[Assistant] Max loves peanut butter biscuits."]
    after = cube_state()
    assert next(w.usage_count for w in after.working_memory if w.id == max_id) == before + 1
    assert after.answers == 1

    completed_logs(
        client, [item(label="query", content="Which biscuits?")], [item(label="query", content="Any tools?")]
    )
    state = cube_state()
    assert list(state.query_window) == ["Which biscuits?", "Any tools?"]
    assert dict(state.keyword_counts) == {"biscuits": 1, "tools": 1}
    assert state.queries == 3 and len(state.working_memory) == 20
    scores = [w.importance for w in state.working_memory]
    assert scores == sorted(scores, reverse=True)


def test_activation_memory_is_assembled_when_enabled(make_server: Any) -> None:
    _, client = make_server(scheduler={"enable_activation_memory": True, "act_mem_update_interval": 0})
    completed_logs(client, [item(content="The meeting is on Friday."), item(content="Bring the slides.")])
    logs = completed_logs(client, [item(label="query", content="When is the meeting?")])
    activation = [log for log in logs if log.to_memory_type == items_pb2.MEMORY_TYPE_ACTIVATION_MEMORY]
    assert len(activation) == 1 and activation[0].from_memory_type == items_pb2.MEMORY_TYPE_TEXT_MEMORY
    assert [m.memory_type for m in activation[0].metadata] == [items_pb2.MEMORY_TYPE_WORKING_MEMORY] * 2
    memory = client.memory()
    assert memory.activation_memory.splitlines()[0] == "1. The meeting is on Friday."
    assert memory.sizes.transformed_act_memory_size == 2
    again = completed_logs(client, [item(label="query", content="When is the meeting?")])
    assert not [log for log in again if log.to_memory_type == items_pb2.MEMORY_TYPE_ACTIVATION_MEMORY]  # unchanged


def test_queued_labels_are_accepted_and_reported(client: Client) -> None:
    labels = ["mem_update", "mem_read", "mem_organize", "mem_archive", "mem_feedback", "pref_add"]
    logs = completed_logs(client, [item(label=label, content=f"payload for {label}") for label in labels])
    assert [log.log_content for log in logs] == [f"[{label}] received: payload for {label}" for label in labels]
    assert all(log.label == "taskStatus" for log in logs)


def cosine(a: list[str], b: list[str]) -> float:
    """The plain token-count cosine the add handler's near-duplicate check must agree with."""
    ca, cb = Counter(a), Counter(b)
    dot = sum(v * cb.get(k, 0) for k, v in ca.items())
    if not dot:
        return 0.0
    return dot / math.sqrt(sum(v * v for v in ca.values()) * sum(v * v for v in cb.values()))


@given(
    st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=14),
    st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=14),
    st.sampled_from([0.5, 0.75, 0.9]),
)
def test_near_duplicate_prefilter_never_misses_a_duplicate(a: list[str], b: list[str], threshold: float) -> None:
    """The add handler skips most candidates on a bound before computing their cosine: it must decide exactly as
    the plain cosine does, at the threshold too (a = 3a 3b 2c 2d 2e f g, b = a f is exactly 0.5)."""
    counts = Counter(a)
    found = _near_duplicate_of(counts, sum(v * v for v in counts.values()), tuple(b), threshold)
    exact = cosine(a, b)
    if exact >= threshold:
        assert found == exact
    else:
        assert found < threshold


def _distinct_pairwise(memories: list[tuple[str, ...]], threshold: float, enough: int) -> list[int]:
    """The query handler's step 4 as MemOS states it, one pair at a time: keep a memory unless it is too short or
    its token-count cosine with a memory kept before it reaches the threshold."""
    kept: list[int] = []
    for i, tokens in enumerate(memories):
        if len(kept) >= enough:
            break
        if len(" ".join(tokens)) < MIN_MEMORY_CHARS:
            continue
        counts = Counter(tokens)
        norm = math.sqrt(sum(v * v for v in counts.values()))
        similar = False
        for j in kept:
            other = Counter(memories[j])
            dot = sum(n * other.get(t, 0) for t, n in counts.items())
            if dot and dot / (norm * math.sqrt(sum(v * v for v in other.values()))) >= threshold:
                similar = True
                break
        if not similar:
            kept.append(i)
    return kept


@given(
    st.lists(st.lists(st.sampled_from(["ab", "cd", "ef", "gh", "x"]), max_size=6).map(tuple), max_size=60),
    st.sampled_from([0.5, 0.75, 0.9, 1.0]),
    st.integers(min_value=1, max_value=30),
)
def test_working_memory_candidates_deduplicate_as_pairwise(
    memories: list[tuple[str, ...]], threshold: float, enough: int
) -> None:
    """The query handler compares a block of candidates at once (a matrix product) and continues block by block
    when near duplicates leave it short: it must keep exactly what the pairwise check keeps, thresholds met exactly
    included, and short memories (a lone "x") never."""
    ids = [f"m{i}" for i in range(len(memories))]
    tokens = dict(zip(ids, memories, strict=True))
    kept = _distinct(ids, tokens.__getitem__, threshold, enough)
    assert kept == [ids[i] for i in _distinct_pairwise(memories, threshold, enough)]
