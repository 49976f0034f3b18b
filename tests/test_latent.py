"""The latent space (retrieval/latent.py) computed with scipy's sparse products: the fit equals the same randomized
SVD over a dense matrix, a retriever's windows fit the same space from term ids as from token lists, and the three
ways of projecting a window (a query's, a batch of windows, a batch of term occurrences) give the same vectors."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from memsched_grpc.models import MemoryItem
from memsched_grpc.retrieval import latent
from memsched_grpc.retrieval.latent import LatentIndex, fit
from memsched_grpc.retrieval.retriever import Retriever
from memsched_grpc.retrieval.settings import RetrievalConfig


def _documents(seed: int, count: int = 120, first_word: int = 0) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(first_word, first_word + 80)]
    return [[str(w) for w in rng.choice(words, size=int(rng.integers(1, 15)))] for _ in range(count)]


def _dense_fit(documents: list[list[str]], dimensions: int) -> np.ndarray:
    """The fit's algorithm over a dense term-document matrix, written out step by step."""
    vocabulary: dict[str, int] = {}
    for tokens in documents:
        for term in tokens:
            vocabulary.setdefault(term, len(vocabulary))
    matrix = np.zeros((len(documents), len(vocabulary)))
    for row, tokens in enumerate(documents):
        for term, tf in Counter(tokens).items():
            matrix[row, vocabulary[term]] = 1.0 + math.log(tf)
    df = (matrix > 0).sum(axis=0)
    matrix *= np.log((len(documents) + 1.0) / (df + 1.0)) + 1.0
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    k = min(dimensions, len(documents) - 1, len(vocabulary) - 1)
    width = min(k + latent.OVERSAMPLE, len(documents), len(vocabulary))
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(matrix @ rng.standard_normal((len(vocabulary), width)))
    for _ in range(latent.POWER_ITERATIONS):
        z, _ = np.linalg.qr(matrix.T @ q)
        q, _ = np.linalg.qr(matrix @ z)
    _, _, vt = np.linalg.svd((matrix.T @ q).T, full_matrices=False)
    projection: np.ndarray = vt[:k].T
    return projection


@pytest.mark.parametrize("seed", [1, 7, 23])
def test_the_fit_equals_the_randomized_svd_of_the_dense_matrix(seed: int) -> None:
    documents = _documents(seed)
    space = fit(documents, 8)
    assert space is not None
    assert space.projection.shape == (80, 8)
    assert np.allclose(space.projection, _dense_fit(documents, 8), atol=1e-9)


@pytest.mark.parametrize("seed", [1, 7])
def test_windows_and_term_occurrences_project_as_a_query_does(seed: int) -> None:
    seen = _documents(seed, 60)
    space = fit(seen, 8)
    assert space is not None
    # then windows with words the space never saw, and one with none it did
    documents = seen + _documents(seed + 1, 60, first_word=40) + [["unseen", "words", "only"]]
    slots = np.arange(len(documents), dtype=np.int64)

    by_windows = LatentIndex(8, 0.1, 1000)
    by_windows.ensure_capacity(len(documents))
    by_windows.space = space
    by_windows.vectors = np.zeros((len(by_windows.has), space.dimensions), dtype=np.float32)
    by_windows.project(slots, lambda slot: documents[slot])

    by_terms = LatentIndex(8, 0.1, 1000)
    by_terms.ensure_capacity(len(documents))
    by_terms.space = space
    by_terms.vectors = np.zeros((len(by_terms.has), space.dimensions), dtype=np.float32)
    fitted = [[space.vocabulary[t] for t in d if t in space.vocabulary] for d in documents]
    owner = np.repeat(slots, [len(f) for f in fitted])
    columns = np.array([j for f in fitted for j in f], dtype=np.int64)
    by_terms.project_terms(slots, owner, columns)

    for slot, tokens in enumerate(documents):
        expected = space.project(tokens)
        assert by_windows.known[slot] and by_terms.known[slot]
        assert by_windows.has[slot] == by_terms.has[slot] == (expected is not None)
        if expected is not None:
            assert np.allclose(by_windows.vectors[slot], expected, atol=1e-6)
            assert np.allclose(by_terms.vectors[slot], expected, atol=1e-6)
    assert by_windows.has[: len(documents)].sum() > len(documents) // 2


def test_a_retrievers_windows_as_occurrences_fit_the_space_its_token_windows_do() -> None:
    """The retriever fits its space from term ids in array passes (Retriever._fit_occurrences): the same space to
    the bit as from its windows' token lists, through removals that relink sessions and memories in no session."""
    rng = np.random.default_rng(5)
    words = [f"w{i}" for i in range(200)]
    items = [
        MemoryItem(
            id=f"m{n}",
            memory=" ".join(str(w) for w in rng.choice(words, size=int(rng.integers(0, 9)))),
            sequence=n + 1,
            metadata={"session_id": f"s{n // 7}"} if n % 11 else {},
        )
        for n in range(600)
    ]
    retriever = Retriever(RetrievalConfig(exact_up_to=100))
    retriever.add_many(items)
    for n in range(0, 600, 13):
        retriever.remove(f"m{n}")
    live = np.flatnonzero(retriever._alive[: len(retriever._ids)]).astype(np.int64)
    owner, terms, names = retriever._fit_occurrences(live)
    windows = [retriever._window(int(s)) for s in live]
    assert [names[t] for t in terms] == [t for w in windows for t in w]
    assert owner.tolist() == [i for i, w in enumerate(windows) for _ in w]
    by_tokens = fit(windows, 16)
    by_terms = latent.fit_occurrences(owner, terms, names, len(live), 16)
    assert by_tokens is not None and by_terms is not None
    assert by_tokens.vocabulary == by_terms.vocabulary
    assert list(by_tokens.vocabulary) == list(by_terms.vocabulary)
    assert np.array_equal(by_tokens.idf, by_terms.idf)
    assert np.array_equal(by_tokens.projection, by_terms.projection)
