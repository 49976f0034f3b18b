"""An incremental BM25 index over memory ids: the reference the service's own structures are tested against.

The service once kept it (the cube, for near-duplicate candidates; the retriever, for memory and session BM25).
Both moved to structures of their own (term_index.TermIndex; BM25 statistics beside the retriever's slot
postings) that must give the same candidates and bit-identical scores; this plain version states what those are.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence


class LexicalIndex:
    """BM25 over token lists. ``b`` defaults to 0.3: chat turns are short and of similar length, and
    full length normalisation punishes the longer turns that usually carry the facts."""

    def __init__(self, k1: float = 1.2, b: float = 0.3) -> None:
        self.k1 = k1
        self.b = b
        self._postings: dict[str, dict[str, int]] = {}
        self._lengths: dict[str, int] = {}
        self._total_length = 0
        self._terms_of: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._lengths)

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self._lengths

    def add(self, doc_id: str, tokens: Iterable[str]) -> None:
        """Index ``doc_id``; an id already present is replaced."""
        if doc_id in self._lengths:
            self.remove(doc_id)
        self.extend(doc_id, tokens)

    def extend(self, doc_id: str, tokens: Iterable[str]) -> None:
        """Append ``tokens`` to ``doc_id`` (created when absent)."""
        counts = Counter(tokens)
        terms = self._terms_of.setdefault(doc_id, set())
        for term, tf in counts.items():
            posting = self._postings.setdefault(term, {})
            posting[doc_id] = posting.get(doc_id, 0) + tf
            terms.add(term)
        length = sum(counts.values())
        self._lengths[doc_id] = self._lengths.get(doc_id, 0) + length
        self._total_length += length

    def retract(self, doc_id: str, tokens: Iterable[str]) -> None:
        """Take ``tokens`` (once added with ``extend``) out of ``doc_id``; an emptied document disappears."""
        if doc_id not in self._lengths:
            return
        terms = self._terms_of[doc_id]
        removed = 0
        for term, tf in Counter(tokens).items():
            posting = self._postings.get(term)
            if posting is None or doc_id not in posting:
                continue
            left = posting[doc_id] - tf
            removed += min(tf, posting[doc_id])
            if left > 0:
                posting[doc_id] = left
                continue
            del posting[doc_id]
            terms.discard(term)
            if not posting:
                del self._postings[term]
        self._total_length -= removed
        self._lengths[doc_id] -= removed
        if not terms:
            del self._lengths[doc_id]
            del self._terms_of[doc_id]

    def remove(self, doc_id: str) -> None:
        length = self._lengths.pop(doc_id, None)
        if length is None:
            return
        self._total_length -= length
        for term in self._terms_of.pop(doc_id, ()):
            posting = self._postings.get(term)
            if posting is not None:
                posting.pop(doc_id, None)
                if not posting:
                    del self._postings[term]

    def document_frequency(self, term: str) -> int:
        return len(self._postings.get(term, ()))

    def sharing_rarest(self, tokens: Iterable[str], terms: int = 3, limit: int = 256) -> list[str]:
        """Documents holding one of the ``terms`` rarest of ``tokens`` (at most ``limit``): a bounded candidate
        set for near-duplicate checks, whose cost must not grow with the index the way scoring every posting
        of a common word does."""
        present = sorted((len(self._postings[t]), t) for t in set(tokens) if t in self._postings)
        out: dict[str, None] = {}
        for _, term in present[:terms]:
            for doc_id in self._postings[term]:
                out[doc_id] = None
                if len(out) >= limit:
                    return list(out)
        return list(out)

    def posting(self, term: str) -> Mapping[str, int]:
        """The documents holding ``term`` and its count in each (read-only)."""
        return self._postings.get(term, {})

    @property
    def average_length(self) -> float:
        return self._total_length / len(self._lengths) if self._lengths else 0.0

    def idf(self, term: str) -> float:
        """BM25's idf of ``term`` (0 when no document holds it)."""
        posting = self._postings.get(term)
        if not posting:
            return 0.0
        n = len(self._lengths)
        return math.log(1.0 + (n - len(posting) + 0.5) / (len(posting) + 0.5))

    def scores(self, query_tokens: Iterable[str]) -> dict[str, float]:
        """BM25 score of every document that shares a term with the query."""
        return self.weighted_scores(Counter(query_tokens))

    def scores_of(self, query_tokens: Iterable[str], doc_ids: Sequence[str]) -> list[float]:
        """The scores() of ``doc_ids`` only (0 for a document sharing no term): the cost follows the documents asked
        about, not the postings of the query's terms."""
        n = len(self._lengths)
        out = [0.0] * len(doc_ids)
        if n == 0:
            return out
        avg = self._total_length / n or 1.0
        k1, b = self.k1, self.b
        lengths = self._lengths
        position: dict[str, int] | None = None
        for term, qtf in Counter(query_tokens).items():
            posting = self._postings.get(term)
            if not posting:
                continue
            idf = math.log(1.0 + (n - len(posting) + 0.5) / (len(posting) + 0.5))
            if len(posting) < len(doc_ids):  # walk the shorter side
                if position is None:
                    position = {doc_id: i for i, doc_id in enumerate(doc_ids)}
                hits = [(position[d], tf) for d, tf in posting.items() if d in position]
            else:
                hits = [(i, tf) for i, d in enumerate(doc_ids) if (tf := posting.get(d))]
            for i, tf in hits:
                norm = k1 * (1.0 - b + b * lengths[doc_ids[i]] / avg)
                out[i] += qtf * idf * tf * (k1 + 1.0) / (tf + norm)
        return out

    def weighted_scores(self, term_weights: Mapping[str, float]) -> dict[str, float]:
        """BM25 with a weight per query term (a repeated query word weighs its count): an expanded query's terms
        weigh what the expansion gave them."""
        n = len(self._lengths)
        if n == 0:
            return {}
        avg = self._total_length / n or 1.0
        k1, b = self.k1, self.b
        lengths = self._lengths
        out: dict[str, float] = {}
        for term, qtf in term_weights.items():
            posting = self._postings.get(term)
            if not posting:
                continue
            idf = math.log(1.0 + (n - len(posting) + 0.5) / (len(posting) + 0.5))
            for doc_id, tf in posting.items():
                norm = k1 * (1.0 - b + b * lengths[doc_id] / avg)
                out[doc_id] = out.get(doc_id, 0.0) + qtf * idf * tf * (k1 + 1.0) / (tf + norm)
        return out
