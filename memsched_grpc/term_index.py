"""Which of a cube's memories hold which word.

The add handler's near-duplicate check needs only this: the few memories that share a new memory's rarest
words. A BM25 index (tests/lexical_reference.py) would answer too, but it also keeps term counts, lengths and
each document's term set, which a cube of 10k memories pays for at every load and in resident memory for a
question nobody asks of it; the memory's own token tuple (kept by the cube) already lists its terms.
"""

from __future__ import annotations

from collections.abc import Iterable


class TermIndex:
    def __init__(self) -> None:
        # a dict per term rather than a set: its insertion order makes the candidate list deterministic
        self._holders: dict[str, dict[str, None]] = {}

    def add(self, doc_id: str, tokens: Iterable[str]) -> None:
        holders = self._holders
        for term in set(tokens):
            held = holders.get(term)
            if held is None:
                holders[term] = {doc_id: None}
            else:
                held[doc_id] = None

    def remove(self, doc_id: str, tokens: Iterable[str]) -> None:
        """Forget ``doc_id``; ``tokens`` are the ones it was added with."""
        holders = self._holders
        for term in set(tokens):
            held = holders.get(term)
            if held is not None:
                held.pop(doc_id, None)
                if not held:
                    del holders[term]

    def holders(self, term: str) -> int:
        return len(self._holders.get(term, ()))

    def sharing_rarest(self, tokens: Iterable[str], terms: int = 3, limit: int = 256) -> list[str]:
        """Memories holding one of the ``terms`` rarest of ``tokens`` (at most ``limit``, in the order they were
        added): a candidate set whose size does not grow with the cube the way a common word's holders do."""
        holders = self._holders
        present = sorted((len(holders[t]), t) for t in set(tokens) if t in holders)
        out: dict[str, None] = {}
        for _, term in present[:terms]:
            for doc_id in holders[term]:
                out[doc_id] = None
                if len(out) >= limit:
                    return list(out)
        return list(out)
