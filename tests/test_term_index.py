"""The cube's term index gives the near-duplicate check the same candidates, in the same order, as the BM25 index
it replaced, through any sequence of adds, re-adds with new text and removals."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from memsched_grpc.term_index import TermIndex
from tests.lexical_reference import LexicalIndex

WORDS = st.sampled_from([f"w{i}" for i in range(40)])
STEPS = st.lists(
    st.tuples(st.sampled_from(["add", "remove"]), st.integers(0, 30), st.lists(WORDS, max_size=12)),
    max_size=120,
)


@settings(max_examples=200, deadline=None)
@given(STEPS, st.lists(st.lists(WORDS, min_size=1, max_size=10), min_size=1, max_size=8), st.integers(1, 40))
def test_same_candidates_as_the_bm25_index(
    steps: list[tuple[str, int, list[str]]], probes: list[list[str]], limit: int
) -> None:
    reference, terms = LexicalIndex(), TermIndex()
    held: dict[str, list[str]] = {}
    for op, n, tokens in steps:
        doc = f"m{n}"
        if op == "add":
            reference.add(doc, tokens)
            if doc in held:
                terms.remove(doc, held[doc])
            terms.add(doc, tokens)
            held[doc] = tokens
        elif doc in held:
            reference.remove(doc)
            terms.remove(doc, held.pop(doc))
    for probe in probes:
        assert terms.sharing_rarest(probe, limit=limit) == reference.sharing_rarest(probe, limit=limit)
        assert [terms.holders(t) for t in probe] == [reference.document_frequency(t) for t in probe]
