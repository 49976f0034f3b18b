"""Dense embedders behind one small interface, chosen by ``scheduler.retrieval.embedder.kind``.

An embedder turns texts into L2-normalised float32 rows. It may fail (a remote endpoint is down, slow or
answers garbage): it then raises ``EmbeddingError`` and retrieval carries on with its lexical signals alone,
so a failing embedder degrades quality, never availability.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from memsched_grpc.retrieval import model_files
from memsched_grpc.retrieval.llm import LLMClient, LLMError
from memsched_grpc.retrieval.settings import EmbedderConfig, LLMConfig

log = logging.getLogger(__name__)

Matrix = npt.NDArray[np.float32]


class EmbeddingError(RuntimeError):
    """The embedder could not produce vectors for this call; callers fall back to lexical retrieval."""


class Embedder(Protocol):
    """Texts to L2-normalised float32 rows of one fixed width."""

    name: str
    """Identifies the model, so vectors of different models are never mixed in a cache."""

    def embed(self, texts: Sequence[str]) -> Matrix:
        """One row per text; raises EmbeddingError when it cannot."""
        ...


def normalise(rows: npt.NDArray[Any]) -> Matrix:
    out = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    result: Matrix = out / norms
    return result


class HashingEmbedder:
    """Feature-hashed word and character-trigram counts: no model and no dependency, deterministic. It catches
    shared word parts (``paint``/``painting``) more than meaning; useful for tests and as a tiny dense signal."""

    def __init__(self, dimensions: int = 256) -> None:
        self.dimensions = dimensions
        self.name = f"hashing-{dimensions}"

    def _bucket(self, feature: str) -> int:
        return int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=4).digest(), "little") % self.dimensions

    def embed(self, texts: Sequence[str]) -> Matrix:
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                word = "".join(ch for ch in word if ch.isalnum())
                if not word:
                    continue
                out[row, self._bucket(word)] += 1.0
                padded = f"<{word}>"
                for i in range(len(padded) - 2):
                    out[row, self._bucket(padded[i : i + 3])] += 0.5
        return normalise(out)


class OnnxEmbedder:
    """A sentence encoder exported to ONNX (BERT-style inputs, mean pooling), run by onnxruntime on the CPU.

    Loads from standard places only: a .onnx file or a model directory in the Hugging Face layout (model.onnx or
    onnx/model.onnx beside tokenizer.json), or a model id already in the local Hugging Face cache. Nothing is
    downloaded: a server must not fetch code or weights at run time.
    """

    def __init__(self, model: str, tokenizer: str = "", max_tokens: int = 128, threads: int = 1, batch: int = 32):
        try:
            import onnxruntime
            from tokenizers import Tokenizer
        except ImportError as e:
            raise EmbeddingError("the onnx embedder needs the 'onnx' extra: pip install 'memsched[onnx]'") from e
        try:
            model_file = model_files.model_file(model)
            tokenizer_file = model_files.tokenizer_file(tokenizer or str(model_file.parent))
        except model_files.ModelNotFound as e:
            raise EmbeddingError(str(e)) from e
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            str(model_file), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.enable_truncation(max_length=max_tokens)
        self.tokenizer.enable_padding()
        self.batch = batch
        self.name = f"onnx:{model_file}"
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> Matrix:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        parts = [self._embed_batch(list(texts[i : i + self.batch])) for i in range(0, len(texts), self.batch)]
        return np.vstack(parts)

    def _embed_batch(self, texts: list[str]) -> Matrix:
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        with self._lock:
            output = self.session.run(None, feed)[0]
        if output.ndim == 3:  # token states: mean over the real tokens
            weights = mask[:, :, None].astype(np.float32)
            output = (output * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)
        return normalise(output)


class OpenAIEmbedder:
    """An OpenAI-compatible ``POST {base_url}/embeddings`` endpoint."""

    def __init__(self, client: LLMClient, model: str) -> None:
        self.client = client
        self.model = model
        self.name = f"openai:{client.base_url}:{model}"

    def embed(self, texts: Sequence[str]) -> Matrix:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        try:
            rows = self.client.embeddings(list(texts), self.model)
        except LLMError as e:
            raise EmbeddingError(str(e)) from e
        return normalise(np.array(rows, dtype=np.float32))


class CachedEmbedder:
    """Remembers vectors by text (bounded, least recently used first out) and embeds only the texts it lacks."""

    def __init__(self, inner: Embedder, size: int) -> None:
        self.inner = inner
        self.name = inner.name
        self.size = size
        self._cache: OrderedDict[bytes, Matrix] = OrderedDict()

    def embed(self, texts: Sequence[str]) -> Matrix:
        keys = [hashlib.blake2b(t.encode(), digest_size=16).digest() for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in self._cache))
        if missing:
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            fresh = self.inner.embed([texts[first[k]] for k in missing])
            for key, row in zip(missing, fresh, strict=True):
                self._cache[key] = row
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        rows = []
        for key in keys:
            row = self._cache.get(key)
            if row is None:  # evicted within this very call (size smaller than the batch)
                row = self.inner.embed([texts[keys.index(key)]])[0]
            else:
                self._cache.move_to_end(key)
            rows.append(row)
        return np.vstack(rows) if rows else np.zeros((0, 0), dtype=np.float32)


def build_embedder(config: EmbedderConfig, llm: LLMConfig) -> Embedder | None:
    """The embedder the configuration names, or None. A local model that cannot load is a configuration error
    (raised at once); a remote endpoint is only called when needed and may fail per call."""
    inner: Embedder
    if config.kind == "none":
        return None
    if config.kind == "hashing":
        inner = HashingEmbedder(config.dimensions)
    elif config.kind == "onnx":
        inner = OnnxEmbedder(config.model, config.tokenizer, config.max_tokens, config.threads, config.batch_size)
    else:
        base_url = config.base_url or llm.base_url
        if not base_url:
            raise EmbeddingError("embedder.kind is openai but neither embedder.base_url nor llm.base_url is set")
        key = config.api_key.get_secret_value() or llm.api_key.get_secret_value()
        client = LLMClient(base_url, key, config.timeout_seconds)
        inner = OpenAIEmbedder(client, config.model or llm.model)
    return CachedEmbedder(inner, config.cache_size) if config.cache_size else inner
