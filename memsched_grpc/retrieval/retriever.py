"""The cube's retriever: BM25 over memories plus the conversation around each memory, fused linearly in two stages.

A question rarely shares many words with the turn that answers it; it shares them with the turn before ("What did
you research?" / "Adoption agencies."), with the session the answer sits in, with the person it names and with
the date it names. Each of these becomes a signal per memory, taken from generic memory metadata that any MemOS
client can send (see RetrievalConfig): who said it (``speaker``), which session it belongs to (``session_id``),
when (``session_date``/``date``/``timestamp``, else created_at) and insertion order. The signals, each in 0..1:

- lexical: the memory's BM25 score over the best score of the query (text plus indexed metadata such as captions);
- previous / next / previous2: the lexical signal of the memory said just before / just after / two before it in
  the same session (the answer usually follows the question that shares the query's words);
- session: the BM25 score of the memory's whole session as one document, over the best session's;
- speaker: 1 when the query names the person who said the memory;
- date: exp(-days / date_scale_days) from the memory's date to the nearest date the query names;
- length, session_start, time_mention: what the memory is like, whatever the query: log of its length, whether it
  opens its session, whether it mentions a time ("yesterday", "last week", "ago"). Turns that report news carry
  the facts people ask about later; greetings and short replies do not;
- first_person, second_person, question, names, number (priors too): the share of "I/my/we" and of "you/your"
  words (people are asked about what they said about themselves, not about what they said to the other), whether
  the memory is a question, how many capitalised names it holds (up to 3) and whether it holds a number;
- latent, previous_latent, next_latent (second stage): cosine, in the cube's own LSA space (retrieval/latent.py),
  of the memory's window (it and the ``latent_window`` memories either side of it) with the query plus the centroid
  of the first stage's best memories, min-max scaled;
- feedback, previous_feedback, next_feedback (second stage): BM25 of the distinctive terms of the first stage's
  best memories (pseudo-relevance feedback), the query's own terms left out: the other halves of a multi-hop
  answer share words with the first half rather than with the question;
- lexicon, previous_lexicon, next_lexicon (second stage): BM25 of the terms WordNet relates to the query's nouns
  (synonyms and direct hyponyms of their first senses, retrieval/lexicon.py) that the cube holds, the query's own
  terms and common ones left out ("martial arts" -> taekwondo, judo): word knowledge the cube's own text lacks;
- dense, previous_dense, next_dense: cosine with the query under the configured embedder, min-max scaled over the
  cube, of the memory and of its neighbours (optional).

The first stage ranks by the lexical and conversational signals (``first_stage`` weights); its ``feedback_docs``
best memories feed the second-stage signals, and the fused score is the weighted sum of all of them (``weights``,
fitted, see FusionWeights), the query-dependent ones taken in units of their spread over the query's matches
(spread()). Everything is incremental: adding a memory touches its postings, its session's postings, two neighbour
links and (between refits of the latent space) the latent projections of the memories within ``latent_window`` of
it; a query is two
BM25 passes over postings plus a few vector operations over the cube, about a millisecond at conversation sizes.

Past ``exact_up_to`` live memories (conversation-size cubes never get there) a query is bounded: the signals are
computed only for the ``candidate_limit`` best memories by BM25 over the query's postings and the as many best by
the feedback query, with their session neighbours, and as many nearest the dates the query names (bounded_signals),
the latent space is fitted without projecting every memory and a memory is projected when a query first reads it.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import re
from array import array
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from memsched_grpc.models import MemoryItem
from memsched_grpc.retrieval import dates
from memsched_grpc.retrieval.embedders import Embedder, EmbeddingError, Matrix
from memsched_grpc.retrieval.latent import LatentIndex, LatentSpace
from memsched_grpc.retrieval.lexicon import Lexicon, bundled
from memsched_grpc.retrieval.settings import FusionWeights, RetrievalConfig
from memsched_grpc.retrieval.tokenizer import STOPWORDS, stem, tokenize, words

log = logging.getLogger(__name__)

SIGNALS = (
    "lexical",
    "previous",
    "next",
    "previous2",
    "session",
    "speaker",
    "date",
    "length",
    "session_start",
    "time_mention",
    "first_person",
    "second_person",
    "question",
    "names",
    "number",
    "latent",
    "previous_latent",
    "next_latent",
    "feedback",
    "previous_feedback",
    "next_feedback",
    "lexicon",
    "previous_lexicon",
    "next_lexicon",
    "dense",
    "previous_dense",
    "next_dense",
)
_COLUMN = {name: i for i, name in enumerate(SIGNALS)}
PRIORS = ("first_person", "second_person", "question", "names", "number")
_PRIOR_COLUMNS = [_COLUMN[n] for n in PRIORS]
FIRST_STAGE = [_COLUMN[n] for n in SIGNALS[: SIGNALS.index("time_mention") + 1]]
"""Signals the first stage ranks by: the lexical and conversational ones (the priors, the feedback and latent
signals and the dense model are the second stage's)."""
MATCHES = [
    _COLUMN[n] for n in ("lexical", "previous", "next", "previous2", "speaker", "date", "feedback", "lexicon", "dense")
]
"""Signals that tie a memory to the query itself. A memory with none of them has relevance 0, whatever its
session's score or its priors: it is not a candidate, and it does not outrank memories that match. The latent
signal is not one of them: the cube's LSA space puts every memory at some distance from every query, so a topic
match alone would make the whole cube a candidate (the dense signal does, but only when a model is configured)."""
SPREAD = [
    _COLUMN[n]
    for n in (
        "lexical",
        "previous",
        "next",
        "previous2",
        "session",
        "latent",
        "previous_latent",
        "next_latent",
        "feedback",
        "previous_feedback",
        "next_feedback",
        "lexicon",
        "previous_lexicon",
        "next_lexicon",
    )
]
"""Query-dependent signals that enter the fusion in units of their spread over the query's matches (spread())."""
SPREAD_UNITS = 10.0
"""A signal enters the fusion as value / (SPREAD_UNITS x standard deviation): ~0..1 like the others (on LoCoMo the
best match of a query stands 4-11 deviations above 0, 25 at most)."""
SPREAD_MIN_MATCHES = 8
"""A signal that matches fewer memories than this is scaled to its best, as built: a handful of values says little
about a spread (two sessions of a small cube that score alike would put one of them many deviations up)."""
TIME_MENTION = re.compile(
    r"\b(?:yesterday|today|tonight|tomorrow|ago|recently|since"
    r"|(?:last|next|this)\s+(?:week|weekend|month|year|night|time|morning|summer|winter|spring|fall))\b",
    re.IGNORECASE,
)
_TIME_MENTION_CASED = re.compile(TIME_MENTION.pattern)
_ASCII_DIGIT = re.compile(r"[0-9]")


def mentions_time(text: str) -> bool:
    """``TIME_MENTION.search(text)``, twice as fast on ASCII text, where matching the lowercased text case-sensitively
    is the same match: every memory is checked when a cube is built from its records."""
    if text.isascii():
        return _TIME_MENTION_CASED.search(text.lower()) is not None
    return TIME_MENTION.search(text) is not None


def has_digit(text: str) -> bool:
    """``any(map(str.isdigit, text))``, ~4x faster on ASCII text, whose only digits are 0-9."""
    if text.isascii():
        return _ASCII_DIGIT.search(text) is not None
    return any(map(str.isdigit, text))


FIRST_PERSON = frozenset(
    ["i", "i'm", "i've", "i'd", "i'll", "my", "me", "mine", "myself", "we", "we're", "we've", "our", "us"]
)
SECOND_PERSON = frozenset(["you", "you're", "you've", "your", "yours", "yourself", "you'll", "you'd"])
NAME = re.compile(r"(?<![.!?]\s)\b[A-Z][a-z]+")
"""A capitalised word not opening a sentence: a name, a place, a title."""
NAMES_CAP = 3
LENGTH_SCALE = 5.0
"""log(1 + tokens) / LENGTH_SCALE keeps the length signal near 0..1 for chat-sized memories."""
EMBED_RETRY_PER_QUERY = 64
COMPACT_MIN_SLOTS = 1024
_INITIAL_CAPACITY = 64

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


def first_value(metadata: dict[str, Any], keys: Sequence[str]) -> Any:
    """The value of the first of ``keys`` that ``metadata`` holds with a non-empty value."""
    for key in keys:
        value = metadata.get(key)
        if value not in (None, "", [], {}):
            return value
    return None


def index_text(item: MemoryItem, metadata_keys: Sequence[str]) -> str:
    """The text a memory is searched by: its memory text and the string values of the indexed metadata keys."""
    parts = [item.memory]
    for key in metadata_keys:
        value = item.metadata.get(key)
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            parts.extend(v for v in value if isinstance(v, str))
    return "\n".join(parts)


def bm25_idf(documents: int, holding: int) -> float:
    """BM25's idf of a term ``holding`` of ``documents`` documents hold (memories, or sessions as documents)."""
    return math.log(1.0 + (documents - holding + 0.5) / (holding + 0.5))


_ONES: Floats = np.ones(0, dtype=np.float64)


def _ones(size: int) -> Floats:
    """A read-only view of ``size`` ones: most terms occur once in every memory holding them, so their cached
    postings share one array of counts instead of allocating their own (most of a query's postings are read for
    the first time in that query)."""
    global _ONES
    if len(_ONES) < size:
        _ONES = np.ones(max(size, 2 * len(_ONES), 4096), dtype=np.float64)
        _ONES.setflags(write=False)
    return _ONES[:size]


def _mask(size: int, *parts: Ints) -> npt.NDArray[np.bool_]:
    """A ``size``-cell mask marking the values of ``parts`` (each in -size..size-1). For the few thousand slots or
    sessions a large cube's query reads, marking a mask is linear but several times cheaper than the sorting or
    hashing of np.unique, np.union1d and np.setdiff1d (bounded_signals spent ~0.7 ms a query in them at 10k)."""
    mark = np.zeros(size, dtype=np.bool_)
    for part in parts:
        mark[part] = True
    return mark


def _members(size: int, *parts: Ints) -> Ints:
    """The distinct values of ``parts`` (each in 0..size-1), ascending."""
    members: Ints = np.flatnonzero(_mask(size, *parts))
    return members


def spread(matrix: Floats) -> Floats:
    """``matrix`` with each SPREAD column divided by SPREAD_UNITS times the standard deviation of its positive values.

    The signals are built scaled to their best memory (or min-max): the scale of a signal then rests on one memory,
    and the same weight means a different thing from one query to the next. Divided by their spread over the
    memories the query matches (z-score normalisation before fusion, without the shift, which changes no order), a
    signal counts how far a memory stands out among the query's matches, comparably across signals and queries; on
    LoCoMo that orders the places around 20 better (held-out recall@20 0.795 -> 0.801, bench/RESULTS.md), mostly by
    letting a match that stands far above the others count for more than 1 (capping the values at 1 lost the
    gain). Matches all alike stand out from none of each other and count as one deviation (1 / SPREAD_UNITS; a
    one-word query's BM25 matches often are: with b = 0 a word said once scores the same in every memory, and
    letting those count more lost 1 % held-out); fewer than SPREAD_MIN_MATCHES matches are scaled to their best."""
    out = matrix.copy()
    block = out[:, SPREAD]
    positive = block > 0
    count = positive.sum(axis=0)
    if not count.any():
        return out
    # masks multiplied, not np.where: the same values for finite signals, at a fifth of the cost on the thousands of
    # rows a large cube's query has
    values = block * positive
    mean = values.sum(axis=0) / np.maximum(count, 1)
    deviation = np.sqrt(((block - mean) ** 2 * positive).sum(axis=0) / np.maximum(count, 1))
    alike = deviation <= 1e-9 * mean
    scale = SPREAD_UNITS * np.where(alike, mean, deviation)
    scale = np.where(count < SPREAD_MIN_MATCHES, values.max(axis=0), scale)
    scale[scale <= 0] = 1.0
    out[:, SPREAD] = block / scale
    return out


def weight_vector(weights: FusionWeights) -> Floats:
    return np.array([getattr(weights, name) for name in SIGNALS], dtype=np.float64)


@dataclass
class Ranking:
    """Fused scores of every memory of the cube for one query; ``scores`` are scaled so the best is 1."""

    ids: list[str]
    scores: Floats
    signals: Floats
    dense: bool

    def top(self, k: int) -> list[tuple[str, float]]:
        """The ``k`` best memories with a positive score, best first (ties: insertion order)."""
        if not self.ids or k <= 0:
            return []
        k = min(k, len(self.ids))
        head = np.argpartition(-self.scores, k - 1)[:k] if k < len(self.ids) else np.arange(len(self.ids))
        head = head[np.lexsort((head, -self.scores[head]))]
        return [(self.ids[i], float(self.scores[i])) for i in head if self.scores[i] > 0]

    def score_map(self) -> dict[str, float]:
        positive = np.flatnonzero(self.scores > 0)
        ids = self.ids
        return {ids[i]: s for i, s in zip(positive.tolist(), self.scores[positive].tolist(), strict=True)}


class Retriever:
    """Per-cube retrieval state. Not thread-safe: a cube is only ever used by its own worker's thread."""

    def __init__(self, config: RetrievalConfig, embedder: Embedder | None = None) -> None:
        self.config = config
        self.embedder = embedder
        self._ids: list[str | None] = []
        self._slot: dict[str, int] = {}
        self._texts: dict[int, str] = {}
        """The texts of memories still to embed (an embedder is set); a memory's tokens are its term ids in
        _flat_terms."""
        self._signatures: dict[int, tuple[Any, ...]] = {}
        self._arrivals = 0
        self._session_of_key: dict[str, int] = {}
        self._session_length = np.zeros(_INITIAL_CAPACITY, dtype=np.int64)
        self._session_present = np.zeros(_INITIAL_CAPACITY, dtype=bool)
        """Sessions counted as BM25 documents: one joins with its first memory and leaves when a removal leaves it
        without a token (as a document grown and shrunk term by term would), so a session of empty memories counts
        until one of them goes."""
        self._sessions_present = 0
        self._total_tokens = 0
        """Tokens of the live memories: the summed length of the memories, and of the sessions, as BM25 documents."""
        self._tail = np.full(_INITIAL_CAPACITY, -1, dtype=np.int64)
        """The last memory of each session in insertion order (-1: none); the rest of the order is _prev/_next."""
        self._speaker_of_name: dict[str, int] = {}
        self._speakers_by_word: dict[str, set[int]] = {}
        self._years: Counter[int] = Counter()
        self._pending_vectors: set[int] = set()
        self._posting_arrays: dict[str, tuple[Ints, Floats]] = {}
        self._slot_postings: dict[str, array[int]] = {}
        """Per term, the slots holding it, a slot once per occurrence (so, adjacent: one array per term, 4 bytes a
        posting), appended as memories arrive; removed memories' slots stay until a compaction (a query drops dead
        slots), so filling _posting_arrays is a copy, not a dict walk."""
        self._repeated: set[str] = set()
        """Terms some memory holds more than once (or did: the set never shrinks), the only postings whose counts
        a query has to count."""
        cap = _INITIAL_CAPACITY
        self._session = np.zeros(cap, dtype=np.int64)
        self._sequence_key = np.zeros(cap, dtype=np.float64)
        self._time_key = np.zeros(cap, dtype=np.float64)
        self._arrival = np.zeros(cap, dtype=np.int64)
        """A memory's place in its session: (sequence, created_at, arrival) ordered as a tuple."""
        self._speaker = np.full(cap, -1, dtype=np.int64)
        self._day = np.full(cap, np.nan, dtype=np.float64)
        self._prev = np.full(cap, -1, dtype=np.int64)
        self._next = np.full(cap, -1, dtype=np.int64)
        self._alive = np.zeros(cap, dtype=bool)
        self._length = np.zeros(cap, dtype=np.float64)
        self._token_count = np.zeros(cap, dtype=np.float64)
        self._term_id: dict[str, int] = {}
        self._terms: list[str] = []
        """Term by id (the inverse of _term_id)."""
        self._df: list[int] = []
        """Live memories holding the term, by term id: BM25's document frequency, kept with the slot postings
        instead of in a second index of the same postings keyed by memory id."""
        self._flat_terms = np.zeros(_INITIAL_CAPACITY * 16, dtype=np.int32)
        self._flat_size = 0
        self._term_start = np.zeros(cap, dtype=np.int64)
        self._space_columns: tuple[LatentSpace | None, Ints] = (None, np.zeros(0, dtype=np.int64))
        self._time_mention = np.zeros(cap, dtype=np.float64)
        self._priors = np.zeros((cap, len(PRIORS)), dtype=np.float64)
        self.latent = LatentIndex(config.latent_dimensions, config.latent_refit_growth, config.latent_fit_limit)
        self.latent.ensure_capacity(cap)
        self._vectors: Matrix | None = None
        self._has_vector = np.zeros(cap, dtype=bool)
        self._lexicon: Lexicon | None = bundled() if config.lexicon else None

    _DERIVED = ("config", "embedder", "_lexicon", "_posting_arrays", "_space_columns")
    """Attributes export_state leaves out: given anew (config, embedder), shared by the process (lexicon), or caches
    that fill again as queries read them."""

    def export_state(self) -> dict[str, Any]:
        """Everything the index learned from its memories, for a snapshot (memsched_grpc/snapshot.py); restore()
        makes a retriever equal to this one from it."""
        return {name: value for name, value in vars(self).items() if name not in self._DERIVED}

    @classmethod
    def restore(cls, config: RetrievalConfig, embedder: Embedder | None, state: dict[str, Any]) -> Retriever:
        """The retriever export_state() described, for ``config`` (the one it was built with)."""
        retriever = cls(config, embedder)
        missing = set(vars(retriever)) - set(state) - set(cls._DERIVED)
        if missing:
            raise ValueError(f"retriever state lacks {sorted(missing)}")
        vars(retriever).update(state)
        return retriever

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, memory_id: str) -> bool:
        return memory_id in self._slot

    # building
    def add(self, item: MemoryItem, tokens: Sequence[str] | None = None) -> None:
        self.add_many([item], [tokens])

    def add_many(self, items: Iterable[MemoryItem], tokens: Iterable[Sequence[str] | None] | None = None) -> None:
        """Index memories (an id already present is replaced); embeds them in one batch when an embedder is set.

        ``tokens``: each memory's text's tokens (``tokenize(item.memory)``), where the caller has them: a cube
        holds them already, and a memory indexed by its text alone need not be tokenized twice (~7 µs a memory:
        a 10k cube's first query after a load 0.07 s shorter)."""
        known = itertools.repeat(None) if tokens is None else tokens
        slots = [s for s in map(self._add_one, items, known) if s is not None]
        if self.embedder is not None and slots:
            self._embed_slots(slots)
        if slots:
            self._update_latent(slots)

    def remove(self, memory_id: str) -> None:
        slot = self._slot.pop(memory_id, None)
        if slot is None:
            return
        self._ids[slot] = None
        self._alive[slot] = False
        self._has_vector[slot] = False
        self._pending_vectors.discard(slot)
        self._texts.pop(slot, None)
        self._signatures.pop(slot, None)
        held = self._term_ids(slot)
        self._total_tokens -= len(held)
        for term_id in set(held):
            self._posting_arrays.pop(self._terms[term_id], None)
            self._df[term_id] -= 1
        session = int(self._session[slot])
        if self._session_present[session]:
            self._session_length[session] -= len(held)
            if not self._session_length[session]:
                self._session_present[session] = False
                self._sessions_present -= 1
        before, after = int(self._prev[slot]), int(self._next[slot])
        if self._tail[session] == slot:
            self._tail[session] = before
        if before >= 0:
            self._next[before] = after
        if after >= 0:
            self._prev[after] = before
        self._prev[slot] = self._next[slot] = -1
        self.latent.forget(slot)
        self.latent.changed()
        for neighbour in self._reach(before, after):
            self.latent.fold_in(neighbour, self._window(neighbour))
        if not math.isnan(self._day[slot]):
            year = dates.year_of(int(self._day[slot]))
            self._years[year] -= 1
            if self._years[year] <= 0:
                del self._years[year]

    def _add_one(self, item: MemoryItem, memory_tokens: Sequence[str] | None) -> int | None:
        """Index one memory; None when it is already indexed exactly so (a usage count changed, say)."""
        config = self.config
        text = index_text(item, config.indexed_metadata_keys)
        session_key = first_value(item.metadata, config.session_keys)
        speaker = first_value(item.metadata, config.speaker_keys)
        date = first_value(item.metadata, config.date_keys)
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        signature = (digest, item.sequence, item.created_at, session_key, speaker, date)
        old = self._slot.get(item.id)
        if old is not None:
            if self._signatures.get(old) == signature:
                return None
            self.remove(item.id)
        if len(self._ids) >= COMPACT_MIN_SLOTS and len(self._ids) > 2 * len(self._slot):
            self._compact()
        slot = len(self._ids)
        self._ensure_capacity(slot + 1)
        self._ids.append(item.id)
        self._slot[item.id] = slot
        self._signatures[slot] = signature
        self._alive[slot] = True
        tokens = list(memory_tokens) if memory_tokens is not None and text == item.memory else tokenize(text)
        self._length[slot] = math.log1p(len(tokens)) / LENGTH_SCALE
        self._token_count[slot] = len(tokens)
        self._time_mention[slot] = 1.0 if mentions_time(item.memory) else 0.0
        self._priors[slot] = self._prior_row(item.memory)
        self.latent.changed()
        df = self._df
        for term_id in set(self._store_terms(slot, tokens)):
            df[term_id] += 1
        if self.embedder is not None:
            self._texts[slot] = text
        self._total_tokens += len(tokens)
        self._post(slot, tokens)

        self._arrivals += 1
        key = (float(item.sequence), item.created_at.timestamp(), self._arrivals)
        self._sequence_key[slot], self._time_key[slot], self._arrival[slot] = key
        session_name = f"add:{item.source_item_id}" if session_key is None else f"session:{session_key}"
        session = self._session_of_key.get(session_name)
        if session is None:
            session = len(self._session_of_key)
            self._session_of_key[session_name] = session
            if session == len(self._session_present):
                self._session_length = np.append(self._session_length, np.zeros(session, dtype=np.int64))
                self._session_present = np.append(self._session_present, np.zeros(session, dtype=bool))
                self._tail = np.append(self._tail, np.full(session, -1, dtype=np.int64))
        self._session[slot] = session
        self._session_length[session] += len(tokens)
        if not self._session_present[session]:
            self._session_present[session] = True
            self._sessions_present += 1
        self._link(slot, session, key)

        self._speaker[slot] = -1 if speaker is None else self._speaker_id(str(speaker))

        day = dates.to_day(date)
        if day is None:
            day = item.created_at.date().toordinal()
        self._day[slot] = day
        self._years[dates.year_of(day)] += 1
        return slot

    def _link(self, slot: int, session: int, key: tuple[float, float, int]) -> None:
        """Put ``slot`` between its neighbours in insertion order within its session (usually: at the end).

        Sessions keep no member lists (a cube without session metadata has a session per memory): the end of the
        order is the session's tail, and a memory that belongs before it (a memory replaced with its old sequence
        number) finds its place among the session's memories in one pass over the session column."""
        before, after = int(self._tail[session]), -1
        if before >= 0 and self._place(before) > key:
            members = np.flatnonzero(self._session[: len(self._ids)] == session)
            members = members[self._alive[members] & (members != slot)]
            sequence, time, arrival = self._sequence_key[members], self._time_key[members], self._arrival[members]
            order = np.lexsort((arrival, time, sequence))
            members, sequence, time, arrival = members[order], sequence[order], time[order], arrival[order]
            same_sequence_earlier = (time < key[1]) | ((time == key[1]) & (arrival < key[2]))
            earlier = (sequence < key[0]) | ((sequence == key[0]) & same_sequence_earlier)
            at = int(earlier.sum())
            before = int(members[at - 1]) if at > 0 else -1
            after = int(members[at]) if at < len(members) else -1
        else:
            self._tail[session] = slot
        self._prev[slot], self._next[slot] = before, after
        if before >= 0:
            self._next[before] = slot
        if after >= 0:
            self._prev[after] = slot

    def _place(self, slot: int) -> tuple[float, float, int]:
        return float(self._sequence_key[slot]), float(self._time_key[slot]), int(self._arrival[slot])

    def _speaker_id(self, name: str) -> int:
        normal = " ".join(name.lower().split())
        found = self._speaker_of_name.get(normal)
        if found is not None:
            return found
        speaker = len(self._speaker_of_name)
        self._speaker_of_name[normal] = speaker
        for word in words(normal):
            if word not in STOPWORDS and len(word) > 1:
                self._speakers_by_word.setdefault(word, set()).add(speaker)
        return speaker

    def _ensure_capacity(self, size: int) -> None:
        cap = len(self._alive)
        if size <= cap:
            return
        new = max(size, cap * 2)

        def grow(array: npt.NDArray[Any], fill: Any) -> npt.NDArray[Any]:
            out = np.full((new, *array.shape[1:]), fill, dtype=array.dtype)
            out[:cap] = array
            return out

        self._session = grow(self._session, 0)
        self._sequence_key = grow(self._sequence_key, 0.0)
        self._time_key = grow(self._time_key, 0.0)
        self._arrival = grow(self._arrival, 0)
        self._speaker = grow(self._speaker, -1)
        self._day = grow(self._day, np.nan)
        self._prev = grow(self._prev, -1)
        self._next = grow(self._next, -1)
        self._alive = grow(self._alive, False)
        self._length = grow(self._length, 0.0)
        self._token_count = grow(self._token_count, 0.0)
        self._term_start = grow(self._term_start, 0)
        self._time_mention = grow(self._time_mention, 0.0)
        self._priors = grow(self._priors, 0.0)
        self.latent.ensure_capacity(new)
        self._has_vector = grow(self._has_vector, False)
        if self._vectors is not None:
            self._vectors = grow(self._vectors, 0.0)

    def _compact(self) -> None:
        """Renumber the live memories 0..n-1 once removed and replaced ones hold most slots."""
        live = np.flatnonzero(self._alive[: len(self._ids)])
        count = len(live)
        offsets, _ = self._ranges(live)
        self._flat_terms = np.append(self._flat_terms[offsets], np.zeros(len(offsets), dtype=np.int32))
        self._flat_size = len(offsets)
        starts = np.zeros(len(self._term_start), dtype=np.int64)
        starts[1:count] = np.cumsum(self._token_count[live].astype(np.int64))[:-1]
        self._term_start = starts
        renumber = np.full(len(self._ids) + 1, -1, dtype=np.int64)  # the last cell maps a missing neighbour (-1)
        renumber[live] = np.arange(count)
        old_to_new = {int(old): new for new, old in enumerate(live)}

        def keep(array: npt.NDArray[Any], fill: Any) -> npt.NDArray[Any]:
            out = np.full_like(array, fill)
            out[:count] = array[live]
            return out

        self._session = keep(self._session, 0)
        self._sequence_key = keep(self._sequence_key, 0.0)
        self._time_key = keep(self._time_key, 0.0)
        self._arrival = keep(self._arrival, 0)
        self._speaker = keep(self._speaker, -1)
        self._day = keep(self._day, np.nan)
        self._length = keep(self._length, 0.0)
        self._token_count = keep(self._token_count, 0.0)
        self._time_mention = keep(self._time_mention, 0.0)
        self._priors = keep(self._priors, 0.0)
        self.latent.keep(live, len(self._alive))
        self._prev = keep(renumber[self._prev[: len(self._alive)]], -1)
        self._next = keep(renumber[self._next[: len(self._alive)]], -1)
        self._has_vector = keep(self._has_vector, False)
        self._alive = keep(self._alive, False)
        if self._vectors is not None:
            self._vectors = keep(self._vectors, 0.0)
        self._ids = [self._ids[int(i)] for i in live]
        self._slot = {memory_id: n for n, memory_id in enumerate(self._ids) if memory_id is not None}
        self._texts = {old_to_new[s]: t for s, t in self._texts.items()}
        self._signatures = {old_to_new[s]: t for s, t in self._signatures.items()}
        self._pending_vectors = {old_to_new[s] for s in self._pending_vectors}
        self._posting_arrays.clear()
        self._slot_postings.clear()
        for slot in range(count):
            self._post(slot, self._slot_tokens(slot))
        self._tail = renumber[self._tail]

    def _post(self, slot: int, tokens: list[str]) -> None:
        """Append ``slot`` to the slot postings of its terms; postings a query already cached as arrays grow in
        place, so the query after an add keeps them."""
        postings, cached = self._slot_postings, self._posting_arrays
        for term in tokens:
            held = postings.get(term)
            if held is None:
                held = postings[term] = array("i")
            held.append(slot)
        if len(set(tokens)) < len(tokens):
            self._repeated.update(term for term, tf in Counter(tokens).items() if tf > 1)
        if cached:
            for term, tf in Counter(tokens).items():
                arrays = cached.get(term)
                if arrays is not None:
                    cached[term] = (np.append(arrays[0], slot), np.append(arrays[1], float(tf)))

    def _store_terms(self, slot: int, tokens: list[str]) -> list[int]:
        """Keep the memory's tokens as term ids in one flat array (slot ``slot`` at ``_term_start[slot]``, as many
        as ``_token_count[slot]``): a large cube's latent vectors are projected from them in a few array passes.
        Returns the term ids."""
        ids = self._term_id
        known = len(ids)
        terms = [ids.setdefault(t, len(ids)) for t in tokens]
        if len(ids) > known:
            for term, j in zip(tokens, terms, strict=True):
                if j == len(self._terms):
                    self._terms.append(term)
            self._df.extend([0] * (len(ids) - known))
        end = self._flat_size + len(terms)
        if end > len(self._flat_terms):
            grown = np.zeros(max(end, 2 * len(self._flat_terms)), dtype=np.int32)
            grown[: self._flat_size] = self._flat_terms[: self._flat_size]
            self._flat_terms = grown
        self._flat_terms[self._flat_size : end] = terms
        self._term_start[slot] = self._flat_size
        self._flat_size = end
        return terms

    def _term_ids(self, slot: int) -> list[int]:
        """The term ids of the tokens of ``slot`` (live or removed), in order."""
        start = int(self._term_start[slot])
        ids: list[int] = self._flat_terms[start : start + int(self._token_count[slot])].tolist()
        return ids

    def _slot_tokens(self, slot: int) -> list[str]:
        """The tokens of ``slot``, in order (none for a removed memory)."""
        if not self._alive[slot]:
            return []
        terms = self._terms
        return [terms[j] for j in self._term_ids(slot)]

    def _ranges(self, slots: Ints) -> tuple[Ints, Ints]:
        """Positions in _flat_terms of the tokens of ``slots``, in order, and each slot's token count."""
        lengths = self._token_count[slots].astype(np.int64)
        total = int(lengths.sum())
        ends = np.cumsum(lengths)
        offsets = np.repeat(self._term_start[slots] - ends + lengths, lengths) + np.arange(total, dtype=np.int64)
        return offsets, lengths

    def _project(self, cover: Ints) -> None:
        """Latent vectors of the memories of ``cover`` that have none under the current space yet, from their
        windows' term ids in a few array passes (a large cube's refit projects nothing; see LatentIndex.refit)."""
        latent = self.latent
        space = latent.space
        if space is None:
            return
        todo = cover[~latent.known[cover] & self._alive[cover]]
        if not len(todo):
            return
        if self._space_columns[0] is not space:
            columns = np.full(len(self._term_id), -1, dtype=np.int64)
            for term, j in space.vocabulary.items():
                found = self._term_id.get(term)
                if found is not None:
                    columns[found] = j
            self._space_columns = (space, columns)
        columns = self._space_columns[1]
        owner, terms = self._window_terms(todo)
        known = terms < len(columns)
        column = np.full(len(terms), -1, dtype=np.int64)
        column[known] = columns[terms[known]]
        fitted = column >= 0
        latent.project_terms(todo, owner[fitted], column[fitted])

    def _window_terms(self, slots: Ints, in_order: bool = False) -> tuple[Ints, Ints]:
        """The windows of ``slots`` (see _window) as term occurrences: (position in ``slots``, term id) pairs. With
        ``in_order``, sorted by position and each window's terms in _window's order; else in no particular order."""
        rows = np.arange(len(slots), dtype=np.int64)
        parts, owners_of = [slots], [rows]
        for links in (self._prev, self._next):
            reached = slots
            for _ in range(self.config.latent_window):
                reached = np.where(reached >= 0, links[reached], -1)
                parts.append(reached)
                owners_of.append(rows)
        sources, owners = np.concatenate(parts), np.concatenate(owners_of)
        present = sources >= 0
        sources, owners = sources[present], owners[present]
        if in_order:  # the parts are own, before, further before, after, further after: _window's order
            by_owner = np.argsort(owners, kind="stable")
            sources, owners = sources[by_owner], owners[by_owner]
        offsets, lengths = self._ranges(sources)
        terms: Ints = self._flat_terms[offsets].astype(np.int64)
        return np.repeat(owners, lengths), terms

    def _fit_occurrences(self, slots: Ints) -> tuple[Ints, Ints, list[str]]:
        owner, terms = self._window_terms(slots, in_order=True)
        return owner, terms, self._terms

    @property
    def unprojected(self) -> bool:
        """Live memories may still lack a latent vector under the current space (see project_pending)."""
        return self.latent.unprojected

    def project_pending(self, limit: int | None = None) -> int:
        """Project up to ``limit`` (None: all) live memories that have no latent vector under the current space yet
        (past ``latent_project_limit`` a load or refit projects none, and a query projects what it reads): a worker
        calls this when it is idle, so that a large cube's first queries after a load or refit find the work done.
        Returns how many it projected (0: nothing left)."""
        if self.latent.space is None or not self.latent.unprojected:
            return 0
        n = len(self._ids)
        todo: Ints = np.flatnonzero(~self.latent.known[:n] & self._alive[:n])[:limit]
        if len(todo):
            self._project(todo)
        if limit is None or len(todo) < limit:  # that was all of them
            self.latent.unprojected = False
        return len(todo)

    def _prior_row(self, text: str) -> list[float]:
        """The query-independent priors of a memory's text, in PRIORS order (see the module docstring)."""
        said = words(text)
        count = max(len(said), 1)
        known = self._speakers_by_word
        names = sum(1 for n in NAME.findall(text) if n.lower() not in known)
        return [  # map() rather than generators: this runs for every memory when a cube is loaded
            sum(map(FIRST_PERSON.__contains__, said)) / count,
            sum(map(SECOND_PERSON.__contains__, said)) / count,
            1.0 if text.rstrip().endswith("?") else 0.0,
            min(names, NAMES_CAP) / NAMES_CAP,
            1.0 if has_digit(text) else 0.0,
        ]

    def _reach(self, before: int, after: int) -> list[int]:
        """The memories within ``latent_window`` places of a point in a session, walking back from ``before`` and
        forward from ``after`` (-1: none): the memories whose latent window holds a memory there."""
        out = []
        for start, links in ((before, self._prev), (after, self._next)):
            slot = start
            for _ in range(self.config.latent_window):
                if slot < 0:
                    break
                out.append(slot)
                slot = int(links[slot])
        return out

    def _window(self, slot: int) -> list[str]:
        """The tokens a memory is placed in the latent space by: its own and those of the ``latent_window`` memories
        said just before and just after it in its session."""
        out = self._slot_tokens(slot)
        for neighbour in self._reach(int(self._prev[slot]), int(self._next[slot])):
            out.extend(self._slot_tokens(neighbour))
        return out

    def _update_latent(self, slots: list[int]) -> None:
        """Refit the latent space when the cube changed enough since its fit, else fold the new memories in (and
        their neighbours, whose windows now hold them)."""
        if self.config.latent_dimensions <= 0:
            return
        if self.latent.stale(len(self._slot)):
            live = [int(s) for s in np.flatnonzero(self._alive[: len(self._ids)])]
            small = len(live) <= self.config.exact_up_to
            self.latent.refit(live, self._window, project=small, occurrences=self._fit_occurrences)
            if not small and len(live) <= self.config.latent_project_limit:
                self.project_pending()
            return
        if self.latent.space is None:
            return
        touched = set(slots)
        for slot in slots:
            touched.update(self._reach(int(self._prev[slot]), int(self._next[slot])))
        for slot in touched:
            if self._alive[slot]:
                self.latent.fold_in(slot, self._window(slot))

    def _embed_slots(self, slots: list[int]) -> bool:
        """Embed the memories in ``slots``; on failure they wait in _pending_vectors for a later try."""
        assert self.embedder is not None
        live = [s for s in slots if s in self._texts]
        if not live:
            return True
        try:
            vectors = self.embedder.embed([self._texts[s] for s in live])
        except EmbeddingError as e:
            log.warning("embedding %d memories failed, retrieval stays lexical for them: %s", len(live), e)
            self._pending_vectors.update(live)
            return False
        if self._vectors is None:
            self._vectors = np.zeros((len(self._alive), vectors.shape[1]), dtype=np.float32)
        if vectors.shape != (len(live), self._vectors.shape[1]):
            log.warning("embedder returned vectors of shape %s for %d texts; ignored", vectors.shape, len(live))
            self._pending_vectors.update(live)
            return False
        self._vectors[live] = vectors
        self._has_vector[live] = True
        self._pending_vectors.difference_update(live)
        for slot in live:
            del self._texts[slot]
        return True

    # querying
    def named_speakers(self, query: str) -> tuple[set[int], set[str]]:
        """Speakers the query names, and the query words that named them."""
        named: set[int] = set()
        matched: set[str] = set()
        for word in words(query):
            found = self._speakers_by_word.get(word)
            if found:
                named |= found
                matched.add(word)
        return named, matched

    def _query(self, query: str, extra_terms: Sequence[str]) -> tuple[set[int], list[str]]:
        """The speakers ``query`` names and its lexical tokens (with ``extra_terms``; speakers' names left out when
        ``drop_speaker_names``)."""
        named, name_words = self.named_speakers(query)
        dropped = {stem(w) for w in name_words} if self.config.drop_speaker_names else set()
        tokens = [t for t in tokenize(query) if t not in dropped]
        for term in extra_terms:
            tokens.extend(t for t in tokenize(term) if t not in dropped)
        return named, tokens

    def signals(
        self, query: str, extra_terms: Sequence[str] = (), first_stage: Floats | None = None
    ) -> tuple[Floats, bool]:
        """The signal matrix (one row per slot, one column per SIGNALS entry) and whether ``dense`` is live.

        Every memory is scored, whatever the cube's size (rank() bounds the work past ``exact_up_to``).
        ``first_stage`` overrides the configured first-stage weights (a SIGNALS-long vector; the fit uses it to
        keep the held-out conversation out of the first stage too)."""
        n = len(self._ids)
        if not self._slot:
            return np.zeros((n, len(SIGNALS)), dtype=np.float64), False
        named, tokens = self._query(query, extra_terms)
        # the extra last cell is 0: where a missing neighbour (-1) points
        lexical, hit = self._bm25_touched(Counter(tokens), n)
        if len(hit):
            lexical /= lexical.max()
        per_session = self._session_bm25(tokens)
        if per_session.any():
            per_session /= per_session.max()
        rows = np.arange(n)
        out = self._first_stage_rows(rows, lexical, per_session, named, self._dates(self._intervals(query)))
        first = weight_vector(self.config.first_stage) if first_stage is None else first_stage
        top, top_scores = self._feedback_docs(out, rows, first)
        feedback = self._feedback(top, top_scores, tokens, n)
        if feedback is not None:
            self._with_neighbours(out, rows, "feedback", feedback[0])
        lexicon = self._lexicon_signal(query, tokens, n)
        if lexicon is not None:
            self._with_neighbours(out, rows, "lexicon", lexicon)
        self._latent_columns(out, rows, tokens, top, rows)
        dense = self._dense(query, n)
        if dense is not None:
            self._dense_columns(out, rows, dense)
        out[~self._alive[:n]] = 0.0
        return out, dense is not None

    def bounded_signals(self, query: str, extra_terms: Sequence[str] = ()) -> tuple[Ints, Floats, bool]:
        """The rows of signals() for the memories a large cube's query is bounded to (see ``candidate_limit``),
        with those memories' slots (ascending) and whether ``dense`` is live.

        The candidates are the ``candidate_limit`` best memories by BM25 over the query's terms (scored over their
        postings, cached as arrays) and the ``candidate_limit`` best by the feedback query, each with the session
        neighbours whose previous/next/previous2 signals it feeds, and the ``candidate_limit`` nearest the dates the
        query names (_dated). Signals scaled over the cube (lexical, feedback, dense) are scaled as signals() scales
        them; session and latent, over the candidates."""
        n = len(self._ids)
        limit = self.config.candidate_limit
        named, tokens = self._query(query, extra_terms)
        lexical, hit = self._bm25_touched(Counter(tokens), n)
        if len(hit):
            lexical[hit] /= lexical[hit].max()
        rows = self._around(self._best(lexical, hit, limit))
        date = self._dates(self._intervals(query))
        if date is not None:
            rows = _members(n, rows, self._dated(date, limit))
        session_count = len(self._session_of_key)
        sessions = _members(session_count, self._session[rows])
        session_bm25 = self._session_bm25(tokens)
        raw = session_bm25[sessions]
        out = self._first_stage_rows(rows, lexical, self._per_session(sessions, raw), named, date)
        top, top_scores = self._feedback_docs(out, rows, weight_vector(self.config.first_stage))
        feedback = self._feedback(top, top_scores, tokens, n)
        if feedback is not None:
            values, touched = feedback
            around = self._around(self._best(values, touched, limit))
            extra = around[~_mask(n, rows)[around]]
            if len(extra):
                rows = _members(n, rows, extra)
                held = _members(session_count, self._session[extra])
                more = held[~_mask(session_count, sessions)[held]]
                sessions = np.concatenate([sessions, more])
                raw = np.concatenate([raw, session_bm25[more]])
                out = self._first_stage_rows(rows, lexical, self._per_session(sessions, raw), named, date)
            self._with_neighbours(out, rows, "feedback", values)
        lexicon = self._lexicon_signal(query, tokens, n)
        if lexicon is not None:
            self._with_neighbours(out, rows, "lexicon", lexicon)
        self._latent_columns(out, rows, tokens, top, self._around(rows, depth=1))
        dense = self._dense(query, n)
        if dense is not None:
            self._dense_columns(out, rows, dense)
        return rows, out, dense is not None

    def _best(self, values: Floats, slots: Ints, limit: int) -> Ints:
        """The ``limit`` of ``slots`` with the highest ``values`` (all of them when there are no more)."""
        if len(slots) <= limit:
            return slots
        chosen: Ints = slots[np.argpartition(-values[slots], limit - 1)[:limit]]
        return chosen

    def _around(self, slots: Ints, depth: int = 2) -> Ints:
        """``slots``, the memories just before and after each, and (depth 2) the one two after: every memory whose
        own or previous/next/previous2 signal a value at ``slots`` feeds; live, ascending."""
        before, after = self._prev[slots], self._next[slots]
        parts = [slots, before, after]
        if depth > 1:
            parts.append(self._next[after[after >= 0]])
        mark = _mask(len(self._ids) + 1, *parts)
        mark[-1] = False  # the last cell absorbs a missing neighbour, -1
        mark[: len(self._ids)] &= self._alive[: len(self._ids)]
        kept: Ints = np.flatnonzero(mark)
        return kept

    def _session_bm25(self, tokens: list[str]) -> Floats:
        """BM25 of every session as one document (its live memories' tokens) for the query's tokens, by session.

        A session's term counts are summed from the slot postings of the query's terms: sessions keep no postings
        of their own, which in a cube without session metadata (every memory its own session) held the cube's
        postings a second time."""
        count = len(self._session_of_key)
        out = np.zeros(count, dtype=np.float64)
        n = self._sessions_present
        if n == 0:
            return out
        average = self._total_tokens / n or 1.0
        k1, b = self.config.k1, self.config.session_b
        for term, qtf in Counter(tokens).items():
            arrays = self._live_posting(term)
            if arrays is None:
                continue
            slots, counts = arrays
            sessions = self._session[slots]
            if count > max(8 * len(slots), 4096):  # a few postings in many sessions: sort them, not the sessions
                held, inverse = np.unique(sessions, return_inverse=True)
                tf = np.bincount(inverse, weights=counts)
            else:
                summed = np.bincount(sessions, weights=counts, minlength=count)
                held = np.flatnonzero(summed != 0)  # as a mask: see _bm25_touched
                tf = summed[held]
            df = len(held)
            idf = bm25_idf(n, df)
            norm = k1 * (1.0 - b + b * self._session_length[held] / average)
            out[held] += qtf * idf * tf * (k1 + 1.0) / (tf + norm)
        return out

    def _per_session(self, sessions: Ints, raw: Floats) -> Floats:
        """The session signal by session: ``raw`` over its best at ``sessions``, 0 elsewhere."""
        per_session = np.zeros(len(self._session_of_key), dtype=np.float64)
        if len(raw) and raw.max() > 0:
            per_session[sessions] = raw / raw.max()
        return per_session

    def _intervals(self, query: str) -> list[dates.Interval]:
        """The day intervals ``query`` mentions (a month without a year in each year the cube's memories name),
        for the date column."""
        intervals = dates.mentioned(query)
        for month in dates.month_only(query):
            intervals.extend(dates.month_interval(year, month) for year in self._years)
        return intervals

    def _first_stage_rows(
        self, rows: Ints, lexical: Floats, per_session: Floats, named: set[int], date: Floats | None
    ) -> Floats:
        """The signal rows of ``rows`` with the lexical, conversational and prior columns filled (the others 0),
        from the lexical signal by slot (n + 1 cells, the last 0), the session signal by session and the date signal
        by slot (None when the query names no day)."""
        out = np.zeros((len(rows), len(SIGNALS)), dtype=np.float64)
        prev = self._prev[rows]
        out[:, _COLUMN["lexical"]] = lexical[rows]
        out[:, _COLUMN["previous"]] = lexical[prev]
        out[:, _COLUMN["next"]] = lexical[self._next[rows]]
        out[:, _COLUMN["previous2"]] = lexical[np.where(prev >= 0, self._prev[prev], -1)]
        out[:, _COLUMN["length"]] = self._length[rows]
        out[:, _COLUMN["session_start"]] = prev < 0
        out[:, _COLUMN["time_mention"]] = self._time_mention[rows]
        out[:, _PRIOR_COLUMNS] = np.take(self._priors, rows, axis=0)
        out[:, _COLUMN["session"]] = per_session[self._session[rows]]

        if named:
            out[:, _COLUMN["speaker"]] = np.isin(self._speaker[rows], list(named))

        if date is not None:
            out[:, _COLUMN["date"]] = date[rows]

        out[~self._alive[rows]] = 0.0
        return out

    def _dates(self, intervals: list[dates.Interval]) -> Floats | None:
        """exp(-days / date_scale_days) from every slot's day to the nearest of the query's day ``intervals`` (0 for
        an undated memory; None when the query names no day). Computed once per query over the cube: a bounded query
        reads it for its dated candidates and for its rows, twice when the feedback query adds rows."""
        if not intervals:
            return None
        day = self._day[: len(self._ids)]
        nearest = np.full(len(day), np.inf)
        for start, end in intervals:
            nearest = np.minimum(nearest, np.maximum(np.maximum(start - day, day - end), 0.0))
        with np.errstate(invalid="ignore"):
            signal: Floats = np.where(np.isnan(day), 0.0, np.exp(-nearest / self.config.date_scale_days))
        return signal

    def _dated(self, date: Floats, limit: int) -> Ints:
        """The ``limit`` live memories nearest the dates a query names (``date``: the date signal by slot), as more
        candidates of a bounded query: a memory the query reaches by its date alone is a match (MATCHES), and ranking
        every memory finds it, but no word makes it one of the BM25 candidates. They need no neighbours: the date
        signal has no neighbour columns."""
        signal = date * self._alive[: len(date)]
        return self._best(signal, np.flatnonzero(signal > 0), limit)

    def _feedback_docs(self, out: Floats, rows: Ints, first_stage: Floats) -> tuple[Ints, Floats]:
        """The first stage's ``feedback_docs`` best memories that match the query (slots, best first) and their
        first-stage scores: what the query is about, for the second stage.

        Their most distinctive terms (tf in the memory x idf x the memory's first-stage score, the query's own terms
        left out) are a second BM25 query (``feedback``: the other halves of a multi-hop answer share words with the
        first half, not with the question); the mean of their latent vectors is added to the query's own
        (``latent``: topic match beyond shared words)."""
        none = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        docs = self.config.feedback_docs
        if docs <= 0:
            return none
        scores = out[:, FIRST_STAGE] @ first_stage[FIRST_STAGE]
        scores[~(out[:, MATCHES] > 0).any(axis=1)] = 0.0
        positive = np.flatnonzero(scores > 0)
        if not len(positive):
            return none
        top = positive[np.argsort(-scores[positive], kind="stable")[: min(docs, len(positive))]]
        return rows[top], scores[top]

    def _feedback(self, top: Ints, top_scores: Floats, tokens: list[str], n: int) -> tuple[Floats, Ints] | None:
        """The feedback signal by slot (n + 1 cells, the last 0; the best 1) and the slots holding a feedback term;
        None when there is none."""
        if not len(top):
            return None
        best = float(top_scores[0])
        query_terms = set(tokens)
        weights: dict[str, float] = {}
        for slot, score in zip(top, top_scores, strict=True):
            own = self._slot_tokens(int(slot))
            if not own:
                continue
            share = float(score) / best / len(own)
            for term, tf in Counter(own).items():
                if term not in query_terms:
                    weights[term] = weights.get(term, 0.0) + share * tf * self._idf(term)
        kept = sorted(weights.items(), key=lambda kv: -kv[1])[: self.config.feedback_terms]
        feedback, touched = self._bm25_touched(dict(kept), n)
        if not len(touched):
            return None
        high = float(feedback[touched].max())
        if high <= 0:
            return None
        feedback /= high
        return feedback, touched

    def expansion(self, query: str, tokens: Sequence[str]) -> dict[str, float]:
        """The lexicon's expansion of ``query`` whose lexical tokens are ``tokens``: terms the cube holds that WordNet
        relates to a query noun (a word, or two adjacent words as in "martial arts"), each with its best weight,
        the query's own terms and terms held by more than ``lexicon_max_share`` of the memories left out."""
        lexicon = self._lexicon
        if lexicon is None or not self._slot:
            return {}
        config = self.config
        own = set(tokens)
        said = words(query)
        phrases = [w for w in said if w not in STOPWORDS and not w.isdigit() and stem(w) in own]
        phrases.extend(f"{a}_{b}" for a, b in itertools.pairwise(said) if a not in STOPWORDS and b not in STOPWORDS)
        limit = max(1.0, config.lexicon_max_share * len(self._slot))  # a term one memory holds is distinctive
        out: dict[str, float] = {}
        for phrase in phrases:
            for lemma, weight in lexicon.related_nouns(phrase, config.lexicon_senses, config.lexicon_max_senses):
                terms = tokenize(lemma.replace("_", " ").replace("-", " "))
                for term in terms:
                    found = self._term_id.get(term)
                    if term in own or found is None or not 0 < self._df[found] <= limit:
                        continue
                    share = weight / len(terms)
                    if share > out.get(term, 0.0):
                        out[term] = share
        return out

    def _lexicon_signal(self, query: str, tokens: Sequence[str], n: int) -> Floats | None:
        """The lexicon signal by slot (n + 1 cells, the last 0; the best 1): BM25 of the query's expansion; None
        when nothing in the cube is related."""
        expansion = self.expansion(query, tokens)
        if not expansion:
            return None
        values, touched = self._bm25_touched(expansion, n)
        if not len(touched):
            return None
        values /= float(values[touched].max())
        return values

    def _bm25(self, term_weights: Mapping[str, float], n: int) -> Floats:
        """BM25 with a weight per query term (LexicalIndex.weighted_scores of tests/lexical_reference.py) by slot
        (n + 1 cells, the last 0)."""
        return self._bm25_touched(term_weights, n)[0]

    def _bm25_touched(self, term_weights: Mapping[str, float], n: int) -> tuple[Floats, Ints]:
        """BM25 with a weight per query term (LexicalIndex.weighted_scores of tests/lexical_reference.py) by slot
        (n + 1 cells, the last 0) and the slots holding a term, over postings cached as arrays: common terms would
        cost milliseconds per query through the dict walk in a large cube.

        The postings are scored together, not term by term: a feedback query has 40 terms, and a few numpy calls per
        term cost more than the arithmetic. bincount adds each slot's contributions in term order, as adding one
        term's scores after another would, so the sums are the same to the bit."""
        k1, b = self.config.k1, self.config.b
        average = (self._total_tokens / len(self._slot) if self._slot else 0.0) or 1.0
        slot_parts: list[Ints] = []
        count_parts: list[Floats] = []
        scales: list[float] = []
        for term, weight in term_weights.items():
            arrays = self._live_posting(term)
            if arrays is None:
                continue
            slot_parts.append(arrays[0])
            count_parts.append(arrays[1])
            scales.append(weight * self._idf(term))
        if not slot_parts:
            return np.zeros(n + 1, dtype=np.float64), np.zeros(0, dtype=np.int64)
        slots = np.concatenate(slot_parts)
        counts = np.concatenate(count_parts)
        scale = np.repeat(np.array(scales, dtype=np.float64), [len(part) for part in slot_parts])
        norm = k1 * (1.0 - b + b * self._token_count[slots] / average) if b else k1
        scores = scale * counts * (k1 + 1.0) / (counts + norm)
        out = cast(Floats, np.bincount(slots, weights=scores, minlength=n + 1))  # weighted: float64
        # every posting's score is positive (idf > 0): one pass over the cells beats sorting the postings' slots. The
        # pass is over a boolean mask: numpy finds the non-zero cells of a float array ~9x slower (240 µs at 100k)
        hit: Ints = np.flatnonzero(out[:n] != 0)
        return out, hit

    def _live_posting(self, term: str) -> tuple[Ints, Floats] | None:
        """The live slots holding ``term`` and its count in each, cached as arrays; None when no live memory does."""
        arrays = self._posting_arrays.get(term)
        if arrays is None:
            held = self._slot_postings.get(term)
            if held is None:
                return None
            slots = np.frombuffer(held, dtype=np.int32).astype(np.int64)
            if term in self._repeated:
                first = np.flatnonzero(np.diff(slots, prepend=-1))
                counts = np.diff(first, append=len(slots)).astype(np.float64)
                slots = slots[first]
            else:
                counts = _ones(len(slots))
            if len(self._slot) < len(self._ids):  # some slots are dead until the next compaction
                live = self._alive[slots]
                if not live.all():
                    slots, counts = slots[live], counts[live]
            if not len(slots):
                return None
            arrays = self._posting_arrays[term] = (slots, counts)
        return arrays

    def _idf(self, term: str) -> float:
        """BM25's idf of ``term`` over the live memories (0 when none holds it)."""
        found = self._term_id.get(term)
        df = self._df[found] if found is not None else 0
        if not df:
            return 0.0
        return bm25_idf(len(self._slot), df)

    def _with_neighbours(self, out: Floats, rows: Ints, name: str, values: Floats) -> None:
        """Columns ``name``, ``previous_name`` and ``next_name`` of ``rows`` from ``values`` (by slot, n + 1 cells,
        the last 0)."""
        out[:, _COLUMN[name]] = values[rows]
        out[:, _COLUMN[f"previous_{name}"]] = values[self._prev[rows]]
        out[:, _COLUMN[f"next_{name}"]] = values[self._next[rows]]
        out[~self._alive[rows]] = 0.0

    def _latent_columns(self, out: Floats, rows: Ints, tokens: list[str], feedback: Ints, cover: Ints) -> None:
        """The latent columns of ``rows``: cosine of each memory's latent vector with the query's plus its feedback
        centroid, min-max scaled over ``cover`` (the slots the columns read: ``rows`` and their neighbours)."""
        latent = self.latent
        if latent.space is None:
            return
        self._project(cover)
        n = len(self._ids)
        everything = len(cover) == n
        has = latent.has[:n] & self._alive[:n] if everything else latent.has[cover] & self._alive[cover]
        if not has.any():
            return
        vectors = latent.vectors[:n] if everything else np.take(latent.vectors, cover, axis=0)
        query = latent.space.project(tokens)
        direction = np.zeros(vectors.shape[1]) if query is None else query
        chosen = feedback[latent.has[feedback] & self._alive[feedback]] if len(feedback) else feedback
        if len(chosen):
            centroid = latent.vectors[chosen].mean(axis=0).astype(np.float64)
            norm = float(np.linalg.norm(centroid))
            if norm > 0:
                direction = direction + centroid / norm
        if query is None and not len(chosen):
            return
        cosine = (vectors @ direction.astype(np.float32)).astype(np.float64)
        low, high = float(cosine[has].min()), float(cosine[has].max())
        values = np.zeros(n + 1, dtype=np.float64)
        if high > low:
            values[cover] = np.where(has, (cosine - low) / (high - low), 0.0)
        self._with_neighbours(out, rows, "latent", values)

    def _dense_columns(self, out: Floats, rows: Ints, dense: Floats) -> None:
        padded = np.append(dense, 0.0)
        out[:, _COLUMN["dense"]] = padded[rows]
        out[:, _COLUMN["previous_dense"]] = padded[self._prev[rows]]
        out[:, _COLUMN["next_dense"]] = padded[self._next[rows]]

    def _dense(self, query: str, n: int) -> Floats | None:
        if self.embedder is None:
            return None
        if self._pending_vectors:
            self._embed_slots(sorted(self._pending_vectors)[:EMBED_RETRY_PER_QUERY])
        if self._vectors is None or not self._has_vector[:n].any():
            return None
        try:
            q = self.embedder.embed([query])
        except EmbeddingError as e:
            log.warning("embedding the query failed, ranking lexically: %s", e)
            return None
        if q.shape != (1, self._vectors.shape[1]):
            return None
        cosine = (self._vectors[:n] @ q[0]).astype(np.float64)
        has = self._has_vector[:n] & self._alive[:n]
        low, high = float(cosine[has].min()), float(cosine[has].max())
        scaled = (cosine - low) / (high - low) if high > low else np.zeros(n)
        scaled[~has] = 0.0
        result: Floats = scaled
        return result

    def rank(self, query: str, extra_terms: Sequence[str] = ()) -> Ranking:
        """Fused scores for ``query`` (plus ``extra_terms`` as more query words) of every memory, or past
        ``exact_up_to`` live memories of the bounded candidates (bounded_signals)."""
        bounded = len(self._slot) > self.config.exact_up_to
        if bounded:
            alive, matrix, dense = self.bounded_signals(query, extra_terms)
        else:
            matrix, dense = self.signals(query, extra_terms)
            alive = np.flatnonzero(self._alive[: len(self._ids)])
            if len(alive) < len(matrix):
                matrix = matrix[alive]
        weights = weight_vector(self.config.dense_weights if dense else self.config.weights)
        matches = (matrix[:, MATCHES] > 0).any(axis=1)
        matrix = spread(matrix)
        fused = matrix @ weights
        fused[~matches] = 0.0
        fused = self._scaled(fused)
        if bounded:  # of the candidates only those with a score matter (top, score_map): the rest need no id
            keep = np.flatnonzero(fused > 0)
            alive, fused, matrix = alive[keep], fused[keep], matrix[keep]
        ids = self._ids
        return Ranking(cast(list[str], [ids[i] for i in alive.tolist()]), fused, matrix, dense)  # alive: no None

    def _scaled(self, fused: Floats) -> Floats:
        """Relevance in 0..1: the best memory 1, the last of the candidate pool (and anything below) 0.

        Scaling over the pool rather than dividing by the best keeps relevance spread out among the candidates,
        so MemOS's small keyword and usage terms in importance break near-ties instead of reshuffling the list.
        """
        positive = fused[fused > 0]
        if not len(positive):
            return np.zeros_like(fused)
        best = float(positive.max())
        pool = self.config.candidate_pool
        floor = float(np.partition(positive, -pool)[-pool]) if len(positive) > pool else 0.0
        if best <= floor:
            return np.where(fused > 0, 1.0, 0.0)
        scaled: Floats = np.clip((fused - floor) / (best - floor), 0.0, 1.0)
        return scaled

    def evidence_rank(self, evidences: Sequence[str], per_evidence: int, extra_terms: Sequence[str] = ()) -> Ranking:
        """MemOS step 3 for several evidences: each evidence's ranking, merged by the best score a memory gets."""
        rankings = [self.rank(e, extra_terms) for e in evidences]
        if len(rankings) == 1:
            return rankings[0]
        # over the union of what each evidence found: in a large cube each evidence has candidates of its own
        best: dict[str, tuple[float, Floats]] = {}
        for ranking in rankings:
            row_of = {memory_id: i for i, memory_id in enumerate(ranking.ids)}
            for memory_id, score in ranking.top(per_evidence):
                if memory_id not in best or score > best[memory_id][0]:
                    best[memory_id] = (score, ranking.signals[row_of[memory_id]])
        ids = list(best)
        scores = np.array([best[m][0] for m in ids], dtype=np.float64)
        signals = np.array([best[m][1] for m in ids]).reshape(len(ids), rankings[0].signals.shape[1])
        return Ranking(ids, scores, signals, rankings[0].dense)
