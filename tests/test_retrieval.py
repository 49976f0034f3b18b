"""Retrieval through the service: the conversation around a memory (neighbours, session, speaker, date, captions)
brings the right memories into working memory; the index is incremental and survives restarts; every knob is
configuration. The pieces (dates, the incremental BM25, the retriever's bookkeeping) are checked directly too."""

from __future__ import annotations

import json
import random
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memsched_grpc.config import load_settings
from memsched_grpc.errors import ConfigError
from memsched_grpc.models import MemoryItem
from memsched_grpc.retrieval import dates
from memsched_grpc.retrieval.retriever import SIGNALS, Retriever
from memsched_grpc.retrieval.settings import FusionWeights, RetrievalConfig
from tests.conftest import Client, collect, completed_logs, item
from tests.lexical_reference import LexicalIndex

MARCH = "2:00 pm on 3 March, 2023"
AUGUST = "10:00 am on 20 August, 2023"
SESSIONS: list[tuple[str, str, list[tuple[str, str, str]]]] = [
    (
        "s1",
        MARCH,
        [
            ("Anna", "Hi Ben! How was your weekend?", ""),
            ("Ben", "Great! I finally visited the aquarium downtown.", ""),
            ("Anna", "Nice, what did you see there?", ""),
            ("Ben", "Sharks, jellyfish and a giant octopus.", ""),
            ("Anna", "Hiking in the mountains is my favourite weekend plan.", ""),
            ("Ben", "Last night I cooked pasta with my sister.", ""),
        ],
    ),
    (
        "s2",
        AUGUST,
        [
            ("Ben", "I started learning the cello last week.", ""),
            ("Anna", "Wow, how is it going?", ""),
            ("Ben", "Slowly, my fingers hurt but I love the sound.", ""),
            ("Anna", "Look who moved in with us!", "a photo of a grey kitten sleeping on a sofa"),
            ("Ben", "My weekend plan is hiking with my dog.", ""),
            ("Ben", "Yesterday I cooked curry with my sister.", ""),
        ],
    ),
]


def _chat(session: str, when: str, turns: list[tuple[str, str, str]]) -> str:
    messages = []
    for n, (speaker, text, caption) in enumerate(turns, 1):
        metadata = {"speaker": speaker, "session_id": session, "session_date": when, "turn": f"{session}:{n}"}
        if caption:
            metadata["image_caption"] = caption
        messages.append({"role": "user", "content": text, "metadata": metadata})
    return json.dumps(messages)


def _conversation(client: Client, cube: str = "c1") -> None:
    completed_logs(client, [item(cube=cube, content=_chat(*session)) for session in SESSIONS])


def _ask(client: Client, question: str, cube: str = "c1") -> list[str]:
    completed_logs(client, [item(cube=cube, label="query", content=question)])
    return client.working_texts(cube=cube)


@pytest.fixture
def small(make_server: Any) -> Client:
    """A server whose working memory holds only two memories, so the order of retrieval shows."""
    return make_server(scheduler={"capacities": {"working_memory_capacity": 2}})[1]


def test_the_answer_after_the_matching_question_is_retrieved(small: Client) -> None:
    _conversation(small)
    # the answer shares no word with the query; the turn before it ("what did you see there?") does
    assert "Sharks, jellyfish and a giant octopus." in _ask(small, "What did Ben see at the aquarium?")


def test_image_captions_are_searchable(small: Client) -> None:
    _conversation(small)
    assert _ask(small, "Who sleeps on the sofa?")[0] == "Look who moved in with us!"


def test_the_named_speaker_is_favoured(small: Client) -> None:
    _conversation(small)
    assert _ask(small, "What is Ben's weekend plan?")[0] == "My weekend plan is hiking with my dog."
    assert _ask(small, "What is Anna's weekend plan?")[0] == "Hiking in the mountains is my favourite weekend plan."


def test_a_date_named_in_the_query_favours_memories_near_it(small: Client) -> None:
    _conversation(small)
    assert _ask(small, "What did Ben cook with his sister in August 2023?")[0].startswith("Yesterday I cooked curry")
    assert _ask(small, "What did Ben cook with his sister in March 2023?")[0].startswith("Last night I cooked pasta")


def test_a_query_sharing_nothing_with_memories_brings_none_in(make_server: Any) -> None:
    _, client = make_server()
    _conversation(client)
    before = client.working_texts()
    logs = collect(client.session([item(label="query", content="Quantum chromodynamics lattice?")]))["logs"]
    assert [log.label for log in logs] == ["addMessage"]
    assert client.working_texts() == before


def test_the_index_survives_a_restart_with_its_neighbours(make_server: Any, tmp_path: Path) -> None:
    data_dir = tmp_path / "kept"
    server, client = make_server(data_dir, scheduler={"capacities": {"working_memory_capacity": 2}})
    _conversation(client)
    first = _ask(client, "What did Ben see at the aquarium?")
    client.close()
    server.stop()
    _, again = make_server(data_dir, scheduler={"capacities": {"working_memory_capacity": 2}})
    completed_logs(
        again, [item(content="Unrelated: the printer on floor two is broken.")]
    )  # the cube reloads from disk
    assert _ask(again, "What did Ben see at the aquarium?") == first
    assert "Sharks, jellyfish and a giant octopus." in first


def test_retrieval_settings_come_from_yaml_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("scheduler:\n  retrieval:\n    b: 0.4\n    weights: {speaker: 2.0}\n    reranker: {top_n: 7}\n")
    monkeypatch.setenv("MEMSCHED_SCHEDULER__RETRIEVAL__DATE_SCALE_DAYS", "3")
    monkeypatch.setenv("MEMSCHED_SCHEDULER__RETRIEVAL__LLM__TIMEOUT_SECONDS", "0.5")
    retrieval = load_settings(path).scheduler.retrieval
    assert (retrieval.b, retrieval.weights.speaker, retrieval.reranker.top_n) == (0.4, 2.0, 7)
    assert retrieval.weights.lexical == FusionWeights().lexical  # the rest of a nested section keeps its defaults
    assert (retrieval.date_scale_days, retrieval.llm.timeout_seconds) == (3.0, 0.5)


@pytest.mark.parametrize(
    ("retrieval", "message"),
    [
        ({"bm25_b": 0.1}, "unknown key"),
        ({"weights": {"novelty": 1.0}}, "unknown key"),
        # without the onnx extra (as in CI) the missing runtime is named first, with it the missing model
        ({"embedder": {"kind": "onnx", "model": "/nowhere/model.onnx"}}, "no ONNX model|needs onnxruntime"),
        ({"embedder": {"kind": "openai"}}, "embedder.base_url or llm.base_url"),
        ({"reranker": {"kind": "llm"}}, "llm.base_url"),
    ],
)
def test_bad_retrieval_settings_are_refused(retrieval: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(scheduler={"retrieval": retrieval})


def test_unknown_retrieval_environment_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMSCHED_SCHEDULER__RETRIEVAL__EMBEDER__KIND", "onnx")
    with pytest.raises(ConfigError, match="embeder"):
        load_settings()


# the pieces
def test_dates_in_free_text() -> None:
    day = date(2023, 5, 8).toordinal()
    assert dates.to_day("1:56 pm on 8 May, 2023") == day
    assert dates.to_day("2023-05-08T13:56:00Z") == day
    assert dates.to_day("May 8, 2023") == day
    assert dates.to_day(1683554160) == day  # Unix seconds
    assert dates.to_day("sometime") is None
    may = (date(2023, 5, 1).toordinal(), date(2023, 5, 31).toordinal())
    assert dates.mentioned("What did she do in May 2023?") == [may]
    assert dates.mentioned("Who came on 8 May, 2023 and in 2022?") == [
        (day, day),
        (date(2022, 1, 1).toordinal(), date(2022, 12, 31).toordinal()),
    ]
    assert dates.mentioned("When did Melanie go camping in June?") == []
    assert dates.month_only("When did Melanie go camping in June?") == [6]
    assert dates.distance(day, may) == 0 and dates.distance(day + 30, may) == 7


def test_incremental_bm25_equals_a_fresh_index() -> None:
    rng = random.Random(4)
    vocabulary = [f"w{i}" for i in range(40)]
    docs = {f"d{i}": [rng.choice(vocabulary) for _ in range(rng.randint(1, 12))] for i in range(60)}
    grown = LexicalIndex(b=0.5)
    for doc_id, tokens in docs.items():  # documents grow piece by piece, some shrink again
        grown.extend(doc_id, tokens[:3])
        grown.extend(doc_id, [*tokens[3:], "extra"])
        grown.retract(doc_id, ["extra"])
    for doc_id in list(docs)[:10]:
        grown.remove(doc_id)
        del docs[doc_id]
    fresh = LexicalIndex(b=0.5)
    for doc_id, tokens in docs.items():
        fresh.add(doc_id, tokens)
    query = [*vocabulary[:8], "extra"]
    assert grown.scores(query) == pytest.approx(fresh.scores(query))
    assert grown.document_frequency("extra") == 0


def _memory(n: int, text: str, session: str = "s") -> MemoryItem:
    return MemoryItem(id=f"m{n}", memory=text, sequence=n, metadata={"session_id": session})


def test_retriever_keeps_neighbours_through_removals_and_compaction() -> None:
    retriever = Retriever(RetrievalConfig())
    retriever.add_many([_memory(n, f"filler number {n}") for n in range(1, 1501)])
    for n in range(2, 1500):
        if n % 3:
            retriever.remove(f"m{n}")  # past half of the slots dead: the arrays are compacted on the next add
    retriever.add(_memory(2000, "the zebra question?"))
    retriever.add(_memory(2001, "its quiet answer"))
    assert len(retriever) == 503 and len(retriever._ids) < 600  # compacted
    ranking = retriever.rank("zebra")
    assert [m for m, _ in ranking.top(2)] == ["m2000", "m2001"]  # the answer comes in as the question's next turn
    survivors = ["m1", *[f"m{n}" for n in range(3, 1500, 3)], "m1500", "m2000", "m2001"]
    slots = [retriever._slot[m] for m in survivors]
    assert [int(retriever._next[s]) for s in slots[:-1]] == slots[1:]
    assert [int(retriever._prev[s]) for s in slots[1:]] == slots[:-1]


def test_replacing_a_memory_with_the_same_content_changes_nothing() -> None:
    retriever = Retriever(RetrievalConfig())
    first = _memory(1, "cello lessons on Tuesday")
    retriever.add(first)
    slots = len(retriever._ids)
    retriever.add(first.model_copy(update={"usage_count": 5}))
    assert len(retriever._ids) == slots
    retriever.add(first.model_copy(update={"memory": "cello lessons on Wednesday"}))
    assert len(retriever) == 1 and retriever.rank("wednesday").top(1)[0][0] == "m1"


def test_signals_are_in_zero_to_one() -> None:
    retriever = Retriever(RetrievalConfig())
    retriever.add_many(
        [
            MemoryItem(id=f"m{n}", memory=text, sequence=n, metadata={"speaker": who, "date": "2023-05-0" + str(n)})
            for n, (who, text) in enumerate(
                [("Ann", "I bought a red bike yesterday"), ("Bo", "Nice bike!"), ("Ann", "Red is my colour")], 1
            )
        ]
    )
    matrix, dense = retriever.signals("What bike did Ann buy on 3 May 2023?")
    assert not dense and matrix.shape == (3, len(SIGNALS))
    assert np.all((matrix >= 0) & (matrix <= 1))
    speaker = matrix[:, SIGNALS.index("speaker")]
    assert list(speaker) == [1.0, 0.0, 1.0]
    assert matrix[2, SIGNALS.index("date")] == 1.0 > matrix[0, SIGNALS.index("date")]
