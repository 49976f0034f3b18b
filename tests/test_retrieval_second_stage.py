"""The retriever's second stage: pseudo-relevance feedback from the first stage's best memories, and the latent
space (LSA) learned from the cube itself, kept current through adds, removals and compaction."""

from __future__ import annotations

import numpy as np
import pytest

from memsched_grpc.models import MemoryItem
from memsched_grpc.retrieval import latent
from memsched_grpc.retrieval.latent import MIN_REFIT_CHANGES, LatentIndex
from memsched_grpc.retrieval.retriever import SIGNALS, SPREAD, SPREAD_MIN_MATCHES, SPREAD_UNITS, Retriever, spread
from memsched_grpc.retrieval.settings import RetrievalConfig
from memsched_grpc.retrieval.tokenizer import tokenize
from tests.lexical_reference import LexicalIndex

TOPICS = {
    "pets": ["dog", "puppy", "leash", "walk", "park", "bark", "vet", "fetch"],
    "cooking": ["pasta", "sauce", "kitchen", "recipe", "oven", "garlic", "basil", "dinner"],
    "music": ["guitar", "chords", "song", "band", "concert", "drums", "melody", "practice"],
}


def _topic_memories(seed: int = 7) -> list[MemoryItem]:
    """Sessions that each talk about one topic, three words of it per turn."""
    rng = np.random.default_rng(seed)
    items = []
    n = 0
    for repeat in range(4):
        for topic, vocabulary in TOPICS.items():
            for _ in range(6):
                n += 1
                chosen = rng.choice(vocabulary, size=3, replace=False)
                items.append(
                    MemoryItem(
                        id=f"m{n}",
                        memory=f"we talked about the {' and the '.join(chosen)}",
                        sequence=n,
                        metadata={"session_id": f"{topic}-{repeat}"},
                    )
                )
    return items


def _column(retriever: Retriever, query: str, name: str) -> dict[str, float]:
    matrix, _ = retriever.signals(query)
    ids = [m for m in retriever._ids if m is not None]
    return dict(zip(ids, matrix[: len(ids), SIGNALS.index(name)].tolist(), strict=True))


def test_the_latent_space_matches_words_of_the_same_topic() -> None:
    # three axes for three topics: a space as wide as the vocabulary would only match the words themselves
    retriever = Retriever(RetrievalConfig(feedback_docs=0, latent_dimensions=3))
    retriever.add_many(_topic_memories())
    retriever.add(MemoryItem(id="leash", memory="the leash snapped again", sequence=999, metadata={"session_id": "x"}))
    retriever.add(MemoryItem(id="oven", memory="the oven snapped again", sequence=1000, metadata={"session_id": "y"}))
    latent_signal = _column(retriever, "Does the puppy like the vet?", "latent")
    assert _column(retriever, "Does the puppy like the vet?", "lexical")["leash"] == 0.0  # no shared word
    assert latent_signal["leash"] > latent_signal["oven"] + 0.3


def test_feedback_finds_what_the_best_memories_talk_about() -> None:
    retriever = Retriever(RetrievalConfig(latent_dimensions=0, feedback_docs=1))
    retriever.add_many(
        [
            MemoryItem(id="a", memory="I adopted a greyhound named Zephyr", sequence=1, metadata={"session_id": "1"}),
            MemoryItem(id="b", memory="Pasta again tonight", sequence=2, metadata={"session_id": "1"}),
            MemoryItem(id="c", memory="Zephyr ran off at the beach", sequence=3, metadata={"session_id": "2"}),
            MemoryItem(id="d", memory="The beach was cold", sequence=4, metadata={"session_id": "3"}),
        ]
    )
    feedback = _column(retriever, "Which dog did I adopt?", "feedback")
    assert feedback["c"] > 0.0 and feedback["b"] == 0.0  # "zephyr", learnt from the adoption turn
    assert _column(retriever, "Which dog did I adopt?", "lexical")["c"] == 0.0
    scores = retriever.rank("Which dog did I adopt?").score_map()
    assert scores.get("c", 0.0) > scores.get("d", 0.0)


def test_a_query_matching_nothing_gets_no_second_stage() -> None:
    retriever = Retriever(RetrievalConfig())
    retriever.add_many(_topic_memories())
    matrix, _ = retriever.signals("xylophone quantum")
    for name in ("latent", "feedback", "previous_feedback", "next_latent"):
        assert not matrix[:, SIGNALS.index(name)].any()
    assert retriever.rank("xylophone quantum").top(5) == []


def test_the_latent_space_is_refitted_as_the_cube_grows_and_survives_compaction() -> None:
    config = RetrievalConfig(latent_refit_growth=0.5)
    retriever = Retriever(config)
    items = _topic_memories()
    retriever.add_many(items[:20])
    first = retriever.latent.space
    assert first is not None and retriever.latent.has[:20].all()
    retriever.add_many(items[20:25])  # 25% more: folded in, not refitted
    assert retriever.latent.space is first and retriever.latent.has[20:25].all()
    retriever.add_many(items[25:])
    assert retriever.latent.space is not first
    for item in items[: len(items) - 10]:
        retriever.remove(item.id)
    retriever.add(MemoryItem(id="new", memory="the guitar and the drums", sequence=5000, metadata={"session_id": "z"}))
    live = [retriever._slot[m.id] for m in items[-10:]] + [retriever._slot["new"]]
    space = retriever.latent.space
    assert space is not None
    for slot in live:  # every live memory holds the projection of its current window
        expected = space.project(retriever._window(slot))
        assert expected is not None
        assert retriever.latent.vectors[slot] == pytest.approx(expected.astype(np.float32), abs=1e-5)


def test_randomized_svd_agrees_with_the_exact_one() -> None:
    documents = [m.memory.split() for m in _topic_memories()]
    space = latent.fit(documents, 4)
    assert space is not None
    rows = np.zeros((len(documents), len(space.vocabulary)))
    for i, tokens in enumerate(documents):
        columns, values = space.weights(tokens)
        rows[i, columns] = values
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    _, _, vt = np.linalg.svd(rows, full_matrices=False)
    exact, approx = vt[:4].T, space.projection
    overlap = np.linalg.svd(exact.T @ approx, compute_uv=False)  # cosines of the principal angles
    assert overlap.min() > 0.99


def test_too_small_a_cube_has_no_latent_space() -> None:
    assert latent.fit([["a", "b"], ["b", "c"]], 8) is None
    retriever = Retriever(RetrievalConfig())
    retriever.add(MemoryItem(id="m1", memory="alone with the cello", sequence=1))
    assert retriever.latent.space is None
    assert retriever.rank("cello").top(1)[0][0] == "m1"


@pytest.mark.parametrize("b", [0.0, 0.5])
def test_feedback_scoring_over_cached_arrays_equals_the_index(b: float) -> None:
    retriever = Retriever(RetrievalConfig(b=b))
    items = _topic_memories()
    retriever.add_many(items)
    weights = {"dog": 1.0, "pasta": 0.5, "guitar": 0.25, "nowhere": 2.0}
    retriever._bm25(weights, len(retriever._ids))  # fills the cache
    for item in items[:30]:  # removals and a compaction-free re-add drop the stale arrays
        retriever.remove(item.id)
    late = MemoryItem(id="late", memory="the dog and the pasta", sequence=5000, metadata={"session_id": "z"})
    retriever.add(late)
    n = len(retriever._ids)
    got = retriever._bm25(weights, n)
    reference = LexicalIndex(1.2, b)
    for item in [*items[30:], late]:
        reference.add(item.id, tokenize(item.memory))
    expected = np.zeros(n + 1)
    for memory_id, score in reference.weighted_scores(weights).items():
        expected[retriever._slot[memory_id]] = score
    assert got == pytest.approx(expected)


@pytest.mark.parametrize("width", [1, 2, 3])
def test_a_latent_window_holds_the_memories_around_it_in_its_session(width: int) -> None:
    retriever = Retriever(RetrievalConfig(latent_window=width))
    items = [
        MemoryItem(id=f"t{n}", memory=f"word{n}", sequence=n, metadata={"session_id": "a" if n < 6 else "b"})
        for n in range(10)
    ]
    retriever.add_many(items)
    window = set(retriever._window(retriever._slot["t3"]))
    assert window == {f"word{n}" for n in range(max(0, 3 - width), min(6, 4 + width))}  # never past the session
    retriever.remove("t4")  # the memories whose windows held t4 are projected again
    space = retriever.latent.space
    assert space is not None
    for item in items:
        if item.id != "t4":
            expected = space.project(retriever._window(retriever._slot[item.id]))
            assert expected is not None
            slot = retriever._slot[item.id]
            assert retriever.latent.vectors[slot] == pytest.approx(expected.astype(np.float32), abs=1e-5)


def test_query_signals_enter_the_fusion_in_units_of_their_spread() -> None:
    rng = np.random.default_rng(5)
    matrix = np.zeros((50, len(SIGNALS)))
    matrix[:, SIGNALS.index("speaker")] = 1.0  # not a spread signal: unchanged
    lexical, session, feedback = SIGNALS.index("lexical"), SIGNALS.index("session"), SIGNALS.index("feedback")
    matrix[:20, lexical] = rng.random(20)
    matrix[:SPREAD_MIN_MATCHES, session] = 0.5  # matches all alike: one deviation each
    matrix[:3, feedback] = [0.2, 0.4, 0.1]  # too few matches to measure a spread: scaled to the best
    scaled = spread(matrix)
    assert scaled[:, SIGNALS.index("speaker")].tolist() == [1.0] * 50
    positive = matrix[:20, lexical]
    assert scaled[:, lexical] == pytest.approx(matrix[:, lexical] / (SPREAD_UNITS * positive.std()))
    assert not scaled[20:, lexical].any()  # no match stays no match
    assert scaled[:SPREAD_MIN_MATCHES, session] == pytest.approx([1.0 / SPREAD_UNITS] * SPREAD_MIN_MATCHES)
    assert scaled[:3, feedback] == pytest.approx([0.5, 1.0, 0.25])
    assert SIGNALS.index("latent") in SPREAD and SIGNALS.index("date") not in SPREAD
    assert spread(np.zeros((3, len(SIGNALS)))).tolist() == np.zeros((3, len(SIGNALS))).tolist()
    assert not np.shares_memory(scaled, matrix)


def test_a_small_cube_growing_one_memory_at_a_time_is_not_refitted_on_every_add() -> None:
    index = LatentIndex(dimensions=8, refit_growth=0.1, fit_limit=2000)
    words = [f"w{i}" for i in range(40)]
    index.ensure_capacity(64)
    index.refit(list(range(20)), lambda slot: words[slot % 40 : slot % 40 + 3])
    assert index.space is not None
    index.changed(5)  # 25 % of the fitted size, but only 5 memories: the space would barely change
    assert not index.stale(25)
    index.changed(MIN_REFIT_CHANGES - 4)
    assert index.stale(20 + MIN_REFIT_CHANGES + 1)
