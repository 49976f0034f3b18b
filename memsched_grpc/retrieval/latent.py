"""Latent semantic matching learned from the cube itself: LSA (a truncated SVD of the cube's term-document matrix).

A question and the turn that answers it often share no word but share a topic ("family" / "kids", "husband";
"hobbies" / "painting", "pottery"). Words that occur in the same stretches of conversation get close in the
latent space, so a turn can match a question through the words around it. No model and no download: the space is
fitted with numpy and scipy's sparse matrices on the cube's own memories and refitted as the cube grows.

- Documents are windows: a memory's tokens plus those of the memories said just before and just after it in its
  session (a turn alone is too short to place in a topic). Terms are weighted 1 + log(tf) times a smoothed idf,
  documents L2-normalised.
- The space is fitted by a randomized SVD (Halko et al.) over sparse rows, with a fixed seed (deterministic), on
  at most ``fit_limit`` memories (the most recent). Memories added later are folded in (projected onto the
  fitted terms); the space is refitted when the cube has changed by ``refit_growth`` of its fitted size.
- A query is projected the same way. The caller may add a feedback centroid (the mean vector of its first-stage
  best memories), which is what turns the space into a topic match for multi-hop questions.

Costs: at conversation sizes (~700 memories, ~3,000 terms) a fit takes tens of milliseconds and projects every
memory (paid when a cube's retriever is built and once per 25 % growth, in the add that triggers it); a fold-in a
few microseconds; a query one (memories x 64) matrix-vector product. A large cube's fit (at most ``fit_limit``
memories: ~0.13 s) projects nothing; a query projects the memories it reads that are not projected yet.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
from scipy import sparse

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Vectors = npt.NDArray[np.float32]

MIN_FIT_DOCUMENTS = 8
"""Below this many memories there is nothing to learn a topic space from."""
MIN_REFIT_CHANGES = 32
"""A refit waits for at least this many changes, whatever ``refit_growth`` says: a cube growing one memory at a
time from nothing would otherwise refit on nearly every add while it is small (at 10 % growth: sizes 8, 9, 10,
...): in a chat workload of 64 growing cubes (bench.workers) that cost the workers 778 us an item against 606 with
this floor. From 320 memories on 10 % is more than this anyway: LoCoMo's figures are the same with it."""
OVERSAMPLE = 10
POWER_ITERATIONS = 2


def _matrix(rows: list[tuple[list[int], list[float]]], columns: int) -> sparse.csr_array:
    """Sparse rows (each its columns and values) over a fixed vocabulary, as a CSR matrix: scipy's products of a
    sparse and a dense matrix run in C, ~10x faster than the reduceat over scaled rows they replaced (a 10k cube's
    fit 231 -> 157 ms)."""
    lengths = np.fromiter((len(c) for c, _ in rows), dtype=np.int64, count=len(rows))
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    indices = np.fromiter((j for c, _ in rows for j in c), dtype=np.int64, count=int(indptr[-1]))
    data = np.fromiter((v for _, vs in rows for v in vs), dtype=np.float64, count=int(indptr[-1]))
    return sparse.csr_array((data, indices, indptr), shape=(len(rows), columns))


class LatentSpace:
    """A fitted latent space: term weights and the projection of terms onto ``dimensions`` latent axes."""

    def __init__(self, vocabulary: dict[str, int], idf: Floats, projection: Floats) -> None:
        self.vocabulary = vocabulary
        self.idf = idf
        self.projection = projection  # (terms, dimensions)

    @property
    def dimensions(self) -> int:
        return int(self.projection.shape[1])

    def weights(self, tokens: Sequence[str]) -> tuple[list[int], list[float]]:
        columns: list[int] = []
        values: list[float] = []
        for term, tf in Counter(tokens).items():
            j = self.vocabulary.get(term)
            if j is not None:
                columns.append(j)
                values.append((1.0 + math.log(tf)) * float(self.idf[j]))
        return columns, values

    def project(self, tokens: Sequence[str]) -> Floats | None:
        """The unit latent vector of a bag of tokens; None when it holds no fitted term."""
        columns, values = self.weights(tokens)
        if not columns:
            return None
        v = np.asarray(values) @ self.projection[columns]
        norm = float(np.linalg.norm(v))
        if norm == 0.0:
            return None
        out: Floats = v / norm
        return out


def fit(documents: Sequence[Sequence[str]], dimensions: int, seed: int = 0) -> LatentSpace | None:
    """Fit a latent space on ``documents`` (token lists); None when there are too few to learn from."""
    names: dict[str, int] = {}
    terms = np.fromiter(
        (names.setdefault(t, len(names)) for tokens in documents for t in tokens),
        dtype=np.int64,
        count=sum(map(len, documents)),
    )
    owner = np.repeat(np.arange(len(documents), dtype=np.int64), [len(tokens) for tokens in documents])
    return fit_occurrences(owner, terms, list(names), len(documents), dimensions, seed)


def fit_occurrences(
    owner: Ints, terms: Ints, names: Sequence[str], documents: int, dimensions: int, seed: int = 0
) -> LatentSpace | None:
    """Fit a latent space on ``documents`` given as term occurrences: ``names[terms[i]]`` occurs in document
    ``owner[i]`` (``owner`` ascending, each document's terms in their order). In array passes, because a cube's
    retriever holds its windows as term ids: building 2,000 windows' token lists and counting them per document
    took a third of a 10k cube's fit. The vocabulary's columns are in order of first occurrence, as in ``fit``."""
    if documents < MIN_FIT_DOCUMENTS:
        return None
    present, first = np.unique(terms, return_index=True)
    if len(present) < 2:
        return None
    order = present[np.argsort(first, kind="stable")]
    column = np.zeros(int(present[-1]) + 1, dtype=np.int64)
    column[order] = np.arange(len(order), dtype=np.int64)
    size = len(order)
    cells, tf = np.unique(owner * size + column[terms], return_counts=True)
    rows, columns = cells // size, cells % size
    df = np.bincount(columns, minlength=size).astype(np.float64)
    idf = np.log((documents + 1.0) / (df + 1.0)) + 1.0
    values = (1.0 + np.log(tf)) * idf[columns]
    norms = np.sqrt(np.bincount(rows, weights=values * values, minlength=documents))
    values /= np.where(norms > 0, norms, 1.0)[rows]
    matrix = sparse.csr_array((values, (rows, columns)), shape=(documents, size))
    transposed = matrix.T.tocsr()
    k = min(dimensions, documents - 1, size - 1)
    if k < 1:
        return None
    width = min(k + OVERSAMPLE, documents, size)
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(matrix @ rng.standard_normal((size, width)))
    for _ in range(POWER_ITERATIONS):
        z, _ = np.linalg.qr(transposed @ q)
        q, _ = np.linalg.qr(matrix @ z)
    small = (transposed @ q).T  # (width, terms) = q.T @ matrix
    _, _, vt = np.linalg.svd(small, full_matrices=False)
    vocabulary = {names[t]: j for j, t in enumerate(order.tolist())}
    return LatentSpace(vocabulary, idf, np.ascontiguousarray(vt[:k].T))


class LatentIndex:
    """The latent vectors of a cube's memories by slot, kept current as memories come and go.

    ``window(slot)`` gives the tokens a slot is represented by (the retriever's neighbour window); the index asks
    for it when it fits or folds in, so it never holds a stale copy of the cube.
    """

    def __init__(self, dimensions: int, refit_growth: float, fit_limit: int) -> None:
        self.dimensions = dimensions
        self.refit_growth = refit_growth
        self.fit_limit = fit_limit
        self.space: LatentSpace | None = None
        self.vectors: Vectors = np.zeros((0, max(dimensions, 1)), dtype=np.float32)
        self.has = np.zeros(0, dtype=bool)
        self.known = np.zeros(0, dtype=bool)
        """Slots whose vector (or its absence: ``has`` False) is computed under the current space."""
        self.unprojected = False
        """A refit left live slots unprojected (``project`` False) and they may not all be done yet."""
        self._fitted_size = 0
        self._changes = 0

    def ensure_capacity(self, size: int) -> None:
        if size <= len(self.has):
            return
        new = max(size, 2 * len(self.has), 64)
        vectors = np.zeros((new, self.vectors.shape[1]), dtype=np.float32)
        vectors[: len(self.vectors)] = self.vectors
        has = np.zeros(new, dtype=bool)
        has[: len(self.has)] = self.has
        known = np.zeros(new, dtype=bool)
        known[: len(self.known)] = self.known
        self.vectors, self.has, self.known = vectors, has, known

    def changed(self, count: int = 1) -> None:
        self._changes += count

    def stale(self, live: int) -> bool:
        if live < MIN_FIT_DOCUMENTS:
            return False
        if self.space is None:
            return True
        return self._changes > max(self.refit_growth * max(self._fitted_size, MIN_FIT_DOCUMENTS), MIN_REFIT_CHANGES)

    def refit(
        self,
        slots: Sequence[int],
        window: Callable[[int], list[str]],
        project: bool = True,
        occurrences: Callable[[Ints], tuple[Ints, Ints, Sequence[str]]] | None = None,
    ) -> None:
        """Fit the space on the most recent ``fit_limit`` of ``slots``, then project every slot, or (``project``
        False: a large cube) none: project() computes the vectors a query reads when it reads them, so neither a
        large cube's load nor its refits cost a pass over every memory.

        ``occurrences(slots)``, when given, is the windows of ``slots`` as fit_occurrences takes them (owner as
        positions in ``slots``, term ids, the ids' names): the same fit as from ``window`` token lists, faster."""
        recent = np.asarray(list(slots)[-self.fit_limit :], dtype=np.int64)
        if occurrences is None:
            self.space = fit([window(int(s)) for s in recent], self.dimensions)
        else:
            owner, terms, names = occurrences(recent)
            self.space = fit_occurrences(owner, terms, names, len(recent), self.dimensions)
        self._fitted_size = len(slots)
        self._changes = 0
        self.has[:] = False
        self.known[:] = False
        if self.space is None:
            return
        self.vectors = np.zeros((len(self.has), self.space.dimensions), dtype=np.float32)
        self.unprojected = not project
        if project:
            self.project(np.asarray(slots, dtype=np.int64), window)

    def project_terms(
        self, slots: npt.NDArray[np.int64], owner: npt.NDArray[np.int64], columns: npt.NDArray[np.int64]
    ) -> None:
        """Project ``slots`` from their windows' fitted terms given as occurrences: ``columns[i]`` (a column of the
        space's vocabulary) occurs in the window of ``slots[owner[i]]``. The same weighting as weights()."""
        space = self.space
        if space is None:
            return
        width = len(space.vocabulary)
        keys, tf = np.unique(owner * width + columns, return_counts=True)
        rows, terms = keys // width, keys % width
        weights = (1.0 + np.log(tf)) * space.idf[terms]
        projected = sparse.csr_array((weights, (rows, terms)), shape=(len(slots), width)) @ space.projection
        norms = np.linalg.norm(projected, axis=1)
        ok = norms > 0
        self.vectors[slots[ok]] = projected[ok] / norms[ok, None]
        self.has[slots] = ok
        self.known[slots] = True

    def project(self, slots: npt.NDArray[np.int64], window: Callable[[int], list[str]]) -> None:
        """Compute the vectors of those of ``slots`` not yet projected onto the current space."""
        space = self.space
        if space is None:
            return
        live = slots[~self.known[slots]]
        if not len(live):
            return
        rows = [space.weights(window(int(s))) for s in live]
        projected = _matrix(rows, len(space.vocabulary)) @ space.projection
        norms = np.linalg.norm(projected, axis=1)
        ok = norms > 0
        self.vectors[live[ok]] = projected[ok] / norms[ok, None]
        self.has[live] = ok
        self.known[live] = True

    def fold_in(self, slot: int, tokens: Sequence[str]) -> None:
        if self.space is None:
            return
        v = self.space.project(tokens)
        if v is None:
            self.has[slot] = False
            self.vectors[slot] = 0.0
        else:
            self.vectors[slot] = v
            self.has[slot] = True
        self.known[slot] = True

    def forget(self, slot: int) -> None:
        if slot < len(self.has):
            self.has[slot] = False
            self.known[slot] = False

    def keep(self, live: npt.NDArray[np.int64], capacity: int) -> None:
        """Renumber after the retriever compacts its slots (``live`` old slots become 0..len(live)-1)."""
        vectors = np.zeros((capacity, self.vectors.shape[1]), dtype=np.float32)
        has = np.zeros(capacity, dtype=bool)
        known = np.zeros(capacity, dtype=bool)
        vectors[: len(live)] = self.vectors[live]
        has[: len(live)] = self.has[live]
        known[: len(live)] = self.known[live]
        self.vectors, self.has, self.known = vectors, has, known
