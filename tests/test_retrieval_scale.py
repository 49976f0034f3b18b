"""The retriever past ``exact_up_to``: a query scores a bounded set of candidates (``candidate_limit`` of them and
their neighbours), a refit projects nothing and latent vectors are projected when a query reads them; up to it
nothing changes."""

from __future__ import annotations

import numpy as np
import pytest

from memsched_grpc.models import MemoryItem
from memsched_grpc.retrieval.retriever import SIGNALS, Retriever, spread
from memsched_grpc.retrieval.settings import RetrievalConfig
from memsched_grpc.retrieval.tokenizer import tokenize
from tests.lexical_reference import LexicalIndex

WORDS = [f"w{i}" for i in range(300)]


def _memories(count: int, seed: int = 3, start: int = 0) -> list[MemoryItem]:
    """Sessions of five turns of six words, Zipf-like: a few words are in most memories, most in few."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, len(WORDS) + 1)
    weights /= weights.sum()
    return [
        MemoryItem(
            id=f"m{n}",
            memory=" ".join(rng.choice(WORDS, size=6, p=weights)),
            sequence=n + 1,
            metadata={"session_id": f"s{n // 5}"},
        )
        for n in range(start, start + count)
    ]


QUERIES = ["w0 w7 w40", "w120 w3", "w250 w251 w1", "w17"]
EXACT = ["lexical", "previous", "next", "previous2", "feedback", "previous_feedback", "next_feedback"]
"""Columns scaled over the whole cube in both paths (the bounded path scales session and latent over its
candidates)."""


@pytest.mark.parametrize("query", QUERIES)
def test_bounded_candidates_carry_the_signals_the_full_pass_gives_them(query: str) -> None:
    retriever = Retriever(RetrievalConfig(candidate_limit=200))
    retriever.add_many(_memories(1500))
    rows, bounded, _ = retriever.bounded_signals(query)
    full, _ = retriever.signals(query)
    assert 0 < len(rows) < 1500
    for name in EXACT:
        column = SIGNALS.index(name)
        assert bounded[:, column] == pytest.approx(full[rows, column]), name
    # a memory with a lexical match and not among the candidates scores below every candidate's lexical signal
    lexical = full[:, SIGNALS.index("lexical")]
    left_out = np.setdiff1d(np.flatnonzero(lexical > 0), rows)
    if len(left_out):
        assert lexical[left_out].max() <= lexical[rows].max()


def test_a_cube_within_the_limit_is_ranked_over_every_memory() -> None:
    # exactness depends on the cube's size against exact_up_to, not on how many candidates a bounded query takes
    items = _memories(400)
    exact = Retriever(RetrievalConfig(exact_up_to=400, candidate_limit=50))
    bounded = Retriever(RetrievalConfig(exact_up_to=399, candidate_limit=50))
    exact.add_many(items)
    bounded.add_many(items)
    for query in QUERIES:
        full, _ = exact.signals(query)
        ranking = exact.rank(query)
        assert len(ranking.ids) == 400
        fused = spread(full) @ np.array([getattr(exact.config.weights, n) for n in SIGNALS])
        assert ranking.top(1)[0][0] == f"m{int(np.argmax(fused))}"
        assert len(bounded.rank(query).ids) < 400


def test_a_large_query_reads_a_bounded_number_of_memories() -> None:
    retriever = Retriever(RetrievalConfig(candidate_limit=100))
    retriever.add_many(_memories(4000))
    for query in QUERIES:
        ranking = retriever.rank(query)
        # the lexical and feedback candidates, each with up to three neighbours
        assert len(ranking.ids) <= 2 * 100 * 4
        assert ranking.top(5)


def test_lazy_latent_vectors_equal_the_eager_projection_through_removals_and_compaction() -> None:
    retriever = Retriever(RetrievalConfig(candidate_limit=100, latent_project_limit=1000))
    items = _memories(3000)
    retriever.add_many(items)
    assert not retriever.latent.known.any()  # past latent_project_limit a fit projects nothing
    retriever.rank("w0 w5")
    assert 0 < int(retriever.latent.known.sum()) < 3000
    for item in items[:1600]:
        retriever.remove(item.id)
    retriever.add_many(_memories(5, start=9000))  # compacts the slots, then refits
    live = np.flatnonzero(retriever._alive[: len(retriever._ids)])
    retriever._project(live)
    lazy, has = retriever.latent.vectors[live].copy(), retriever.latent.has[live].copy()
    retriever.latent.known[:] = False
    retriever.latent.project(live, retriever._window)
    assert has.tolist() == retriever.latent.has[live].tolist()
    assert lazy == pytest.approx(retriever.latent.vectors[live], abs=1e-6)


def test_cached_postings_grow_with_adds() -> None:
    retriever = Retriever(RetrievalConfig())
    retriever.add_many(_memories(300))
    weights = {"w0": 1.0, "w9": 0.5}
    retriever._bm25(weights, len(retriever._ids))  # fills the cache
    retriever.add_many(_memories(20, start=500))
    n = len(retriever._ids)
    reference = LexicalIndex(1.2, 0.0)
    for item in _memories(300) + _memories(20, start=500):
        reference.add(item.id, tokenize(item.memory))
    expected = np.zeros(n + 1)
    for memory_id, score in reference.weighted_scores(weights).items():
        expected[retriever._slot[memory_id]] = score
    assert retriever._bm25(weights, n) == pytest.approx(expected)


def test_scores_of_some_documents_equal_scores() -> None:
    index = LexicalIndex(1.2, 0.3)
    for item in _memories(200):
        index.add(item.id, item.memory.split())
    for query in (["w0", "w7", "w0"], ["w150"], ["nothing"]):
        everything = index.scores(query)
        for ids in (["m1", "m2", "m50"], [f"m{i}" for i in range(200)]):
            assert index.scores_of(query, ids) == pytest.approx([everything.get(d, 0.0) for d in ids])


def test_a_fit_projects_every_memory_up_to_the_projection_limit() -> None:
    # Cubes of up to latent_project_limit memories get every latent vector at the fit, in array passes, so no
    # query pays for projecting the memories it reads (a 10k cube's cold queries paid 20-140 ms that way).
    retriever = Retriever(RetrievalConfig(candidate_limit=100))
    retriever.add_many(_memories(3000))
    live = np.flatnonzero(retriever._alive[: len(retriever._ids)])
    assert retriever.latent.known[live].all()
    eager, has = retriever.latent.vectors[live].copy(), retriever.latent.has[live].copy()
    retriever.latent.known[:] = False
    retriever.latent.project(live, retriever._window)
    assert has.tolist() == retriever.latent.has[live].tolist()
    assert eager == pytest.approx(retriever.latent.vectors[live], abs=1e-6)


def test_several_evidences_merge_what_each_found_in_a_large_cube() -> None:
    # each evidence of a large cube has candidates of its own: the merge must not be limited to the first's
    retriever = Retriever(RetrievalConfig(candidate_limit=100))
    retriever.add_many(_memories(4000))
    evidences = ["w250 w251", "w17 w300"]
    merged = dict(retriever.evidence_rank(evidences, 10).top(20))
    for evidence in evidences:
        for memory_id, score in retriever.rank(evidence).top(10):
            assert merged.get(memory_id, 0.0) >= score


def test_a_bounded_query_takes_the_memories_it_names_the_date_of_as_candidates() -> None:
    # Ranking every memory, a memory the query reaches by its date alone is a match (the date signal); a bounded
    # query must not lose it for holding none of the query's words.
    dated = MemoryItem(
        id="dated", memory="w290 w291 w292", sequence=9000, metadata={"session_id": "x", "session_date": "8 May 2023"}
    )
    retriever = Retriever(RetrievalConfig(exact_up_to=200, candidate_limit=200))
    retriever.add_many([*_memories(1500), dated])
    query = "what did we do on 8 May 2023 w0"
    rows, bounded, _ = retriever.bounded_signals(query)
    full, _ = retriever.signals(query)
    slot = retriever._slot["dated"]
    assert slot in rows.tolist()
    column = SIGNALS.index("date")
    assert bounded[rows.tolist().index(slot), column] == full[slot, column] == pytest.approx(1.0)
