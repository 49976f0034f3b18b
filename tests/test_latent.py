"""The latent space's sparse products (retrieval/latent.py): summed in chunks, equal to the bit to summing every
term at once, and equal to a dense matrix product."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memsched_grpc.retrieval import latent
from memsched_grpc.retrieval.latent import LatentIndex, fit, weighted_sums


def _at_once(weights: np.ndarray, index: np.ndarray, dense: np.ndarray, keys: np.ndarray, size: int) -> np.ndarray:
    """The sums as computed before chunking: every term's scaled row in one array, one reduceat."""
    out = np.zeros((size, dense.shape[1]))
    if len(keys):
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        out[keys[starts]] = np.add.reduceat(weights[:, None] * dense[index], starts, axis=0)
    return out


# monkeypatch is function-scoped, but each example patches and restores within its own context
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1),
    terms=st.integers(0, 60),
    size=st.integers(1, 12),
    chunk=st.sampled_from([1, 2, 3, 7, 1024]),
)
def test_weighted_sums_equal_the_sums_at_once_to_the_bit(
    seed: int, terms: int, size: int, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(seed)
    columns = 5
    dense = rng.standard_normal((columns, 4))
    keys = np.sort(rng.integers(0, size, terms)).astype(np.int64)  # some keys hold many terms, some none
    index = rng.integers(0, columns, terms).astype(np.int64)
    weights = rng.standard_normal(terms)
    with monkeypatch.context() as patch:
        patch.setattr(latent, "SUM_CHUNK", chunk)  # chunks smaller than a key's terms, and one chunk for all
        got = weighted_sums(weights, index, dense, keys, size)
    assert np.array_equal(got, _at_once(weights, index, dense, keys, size))
    sparse = np.zeros((size, columns))
    np.add.at(sparse, (keys, index), weights)
    assert np.allclose(got, sparse @ dense)


def test_a_fit_and_its_projections_do_not_depend_on_the_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole fit (randomized SVD through dot and tdot) and the projection of every window, with chunks of one term
    and with the default: the same vectors to the bit."""
    rng = np.random.default_rng(7)
    words = [f"w{i}" for i in range(80)]
    documents = [list(rng.choice(words, size=int(rng.integers(3, 15)))) for _ in range(120)]

    def run() -> tuple[np.ndarray, np.ndarray]:
        space = fit(documents, 8)
        assert space is not None
        index = LatentIndex(8, 0.1, 1000)
        index.ensure_capacity(len(documents))
        index.space = space
        index.vectors = np.zeros((len(index.has), space.dimensions), dtype=np.float32)
        slots = np.arange(len(documents), dtype=np.int64)
        owner = np.repeat(slots, [len(d) for d in documents])
        columns = np.array([space.vocabulary[t] for d in documents for t in d], dtype=np.int64)
        index.project_terms(slots, owner, columns)
        return space.projection, index.vectors[: len(documents)].copy()

    projection, vectors = run()
    with monkeypatch.context() as patch:
        patch.setattr(latent, "SUM_CHUNK", 1)
        small_projection, small_vectors = run()
    assert np.array_equal(projection, small_projection)
    assert np.array_equal(vectors, small_vectors)
    assert np.abs(vectors).sum() > 0
