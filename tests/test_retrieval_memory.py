"""The retriever keeps BM25's statistics beside its slot postings instead of in a LexicalIndex of memories and
another of sessions; its scores must stay exactly what those indexes give (rankings bit-identical), through
removals, re-adds and a session left holding only memories without a token."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from memsched_grpc.models import MemoryItem
from memsched_grpc.retrieval.retriever import TIME_MENTION, Retriever, has_digit, mentions_time
from memsched_grpc.retrieval.settings import RetrievalConfig
from memsched_grpc.retrieval.tokenizer import tokenize
from tests.lexical_reference import LexicalIndex

WORDS = [f"w{i}" for i in range(60)]
QUERIES = ["w0 w3 w3", "w1 w40", "w59", "w2 w5 w8 w13", "nothing here"]


def _items(seed: int = 5) -> list[MemoryItem]:
    """Sessions of one to nine memories, some of them stopwords only (no token at all)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, len(WORDS) + 1)
    weights /= weights.sum()
    items = []
    for n in range(240):
        text = "the and of" if n % 17 == 0 else " ".join(rng.choice(WORDS, size=int(rng.integers(1, 12)), p=weights))
        items.append(MemoryItem(id=f"m{n}", memory=text, sequence=n + 1, metadata={"session_id": f"s{n // 9 + n % 2}"}))
    for n, (session, text) in enumerate([("left", "the and"), ("left", "w3 w4"), ("left", "of the"), ("blank", "the")]):
        items.append(MemoryItem(id=f"x{n}", memory=text, sequence=300 + n, metadata={"session_id": session}))
    return items


class _Reference:
    """The two indexes the retriever used to keep, updated as it updated them."""

    def __init__(self, config: RetrievalConfig) -> None:
        self.memories = LexicalIndex(config.k1, config.b)
        self.sessions = LexicalIndex(config.k1, config.session_b)

    def add(self, item: MemoryItem) -> None:
        tokens = tokenize(item.memory)
        self.memories.add(item.id, tokens)
        self.sessions.extend(f"session:{item.metadata['session_id']}", tokens)

    def remove(self, item: MemoryItem) -> None:
        self.memories.remove(item.id)
        self.sessions.retract(f"session:{item.metadata['session_id']}", tokenize(item.memory))


@pytest.mark.parametrize("b", [0.0, 0.4])
def test_memory_and_session_bm25_equal_lexical_indexes_exactly(b: float) -> None:
    config = RetrievalConfig(b=b, session_b=b)
    retriever, reference = Retriever(config), _Reference(config)
    items = _items()
    retriever.add_many(items)
    for item in items:
        reference.add(item)
    # session "left" loses its only memory with a token: as a document it is gone while two of its memories stay;
    # session "blank" (one memory without a token) stays a document of length 0
    gone = [item for n, item in enumerate(items) if n % 5 == 1 or item.id == "x1"]
    for item in gone:
        retriever.remove(item.id)
        reference.remove(item)
    for item in gone[:-1:3]:
        changed = item.model_copy(update={"memory": item.memory + " w7"})
        retriever.add(changed)
        reference.add(changed)
    n = len(retriever._ids)
    for query in QUERIES:
        tokens = tokenize(query)
        expected = np.zeros(n + 1)
        for memory_id, score in reference.memories.scores(tokens).items():
            expected[retriever._slot[memory_id]] = score
        assert retriever._bm25(Counter(tokens), n).tolist() == expected.tolist()
        sessions = np.zeros(len(retriever._session_of_key))
        for name, score in reference.sessions.scores(tokens).items():
            sessions[retriever._session_of_key[name]] = score
        assert retriever._session_bm25(tokens).tolist() == sessions.tolist()
    assert retriever._sessions_present == len(reference.sessions)
    for term in WORDS:
        assert retriever._idf(term) == reference.memories.idf(term)


def test_sessions_stay_linked_in_insertion_order_through_replacements_removals_and_compaction() -> None:
    retriever = Retriever(RetrievalConfig())
    rng = np.random.default_rng(3)
    live: dict[str, MemoryItem] = {}
    for n in range(1500):
        session = f"s{int(rng.integers(0, 40))}"
        if live and n % 4 == 0:  # a replacement keeps its sequence number: it belongs inside its session's order
            old = live[str(rng.choice(sorted(live)))]
            item = old.model_copy(update={"memory": f"changed {n}", "metadata": {"session_id": session}})
        else:
            item = MemoryItem(
                id=f"m{n}", memory=f"words {n}", sequence=int(rng.integers(1, 400)), metadata={"session_id": session}
            )
        retriever.add(item)
        live[item.id] = item
        if n % 3 == 0:
            gone = str(rng.choice(sorted(live)))
            retriever.remove(gone)
            del live[gone]
    assert len(retriever._ids) < 1500  # compacted on the way
    arrival = {memory_id: int(retriever._arrival[slot]) for memory_id, slot in retriever._slot.items()}
    for session, index in retriever._session_of_key.items():
        members = [i for i in live.values() if f"session:{i.metadata['session_id']}" == session]
        expected = sorted(members, key=lambda i: (i.sequence, i.created_at.timestamp(), arrival[i.id]))
        chain: list[str] = []
        slot = int(retriever._tail[index])
        while slot >= 0:
            chain.append(retriever._ids[slot] or "")
            slot = int(retriever._prev[slot])
        order = chain[::-1]
        assert order == [i.id for i in expected]
        assert [int(retriever._next[retriever._slot[m]]) for m in order] == [retriever._slot[m] for m in order[1:]] + [
            -1
        ]


def test_tokens_the_caller_holds_index_a_memory_as_tokenizing_it_again() -> None:
    """A cube hands the retriever the tokens of each memory's text (Cube.retriever, Cube._remember): the index and
    every ranking are the same as when the retriever tokenizes; where a caption is indexed with the text, the
    retriever tokenizes the whole (the tokens handed over are only the text's)."""
    items = _items()
    items += [
        MemoryItem(id="c0", memory="w7 at the lake", sequence=400, metadata={"session_id": "c", "caption": "zz canoe"}),
        MemoryItem(id="c1", memory="w9 w9", sequence=401, metadata={"session_id": "c"}),
    ]
    own, handed = Retriever(RetrievalConfig()), Retriever(RetrievalConfig())
    own.add_many(items[:150])
    handed.add_many(items[:150], [tokenize(item.memory) for item in items[:150]])
    for item in items[150:]:  # one at a time, as adds reach a cube whose retriever exists
        own.add(item)
        handed.add(item, tokenize(item.memory))
    for query in [*QUERIES, "canoe zz", "w7 lake"]:
        expected, got = own.rank(query), handed.rank(query)
        assert got.top(60) == expected.top(60)
        assert got.score_map() == expected.score_map()
    assert handed.rank("canoe").top(1)[0][0] == "c0"  # the caption's words are indexed


_PIECES = st.sampled_from(
    [
        "last",
        "LAST",
        "Next",
        "week",
        "weekEND",
        "Yesterday",
        "since",
        "ago",
        "ToNiGhT",
        "this",
        "summer",
        " ",
        "  ",
        "\t",
        "\n",
        ".",
        ",",
        "7",
        "0",
        "a",
        "Z",
        "_",
        "'",
        "\u017fince",
        "thİs",
        "\u212aago",
        "²",
        "\u0663",
        "é",
        "\u00a0",
    ]
)


@given(st.lists(_PIECES, max_size=12).map("".join))
def test_the_fast_paths_of_the_text_priors_decide_as_the_plain_checks(text: str) -> None:
    """mentions_time and has_digit lowercase or narrow ASCII text only; Unicode case folding (the long s, a dotted
    capital I, the Kelvin sign) and Unicode digits take the plain checks' path."""
    assert mentions_time(text) == (TIME_MENTION.search(text) is not None)
    assert has_digit(text) == any(map(str.isdigit, text))
