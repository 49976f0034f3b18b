"""A minimal client for OpenAI-compatible HTTP endpoints (``/chat/completions`` and ``/embeddings``).

Standard library only (urllib): the endpoint may be OpenAI, vLLM, llama.cpp, Ollama or any proxy that speaks the
protocol, and the service should not pull an SDK for two POST requests. Every failure (connection refused,
timeout, HTTP error, a body that is not the expected JSON) becomes ``LLMError``; callers then use their
deterministic fallback.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.error
import urllib.request
from typing import Any

log = logging.getLogger(__name__)

_JSON_BLOCK = re.compile(r"\{.*\}|\[.*\]", re.DOTALL)


class LLMError(RuntimeError):
    """The endpoint did not give a usable answer."""


class LLMClient:
    def __init__(self, base_url: str, api_key: str = "", timeout: float = 5.0) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            f"{self.base_url}{path}", data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            raise LLMError(f"{path}: HTTP {e.code}") from e
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise LLMError(f"{path}: {e}") from e
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LLMError(f"{path}: the answer is not JSON") from e

    def chat(self, model: str, system: str, user: str, max_tokens: int = 256) -> str:
        """The assistant's reply text to one system and one user message, at temperature 0."""
        body = {
            "model": model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "temperature": 0,
            "max_tokens": max_tokens,
        }
        answer = self._post("/chat/completions", body)
        try:
            content = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as e:
            raise LLMError("/chat/completions: no choices[0].message.content in the answer") from e
        if not isinstance(content, str):
            raise LLMError("/chat/completions: message content is not text")
        return content

    def embeddings(self, texts: list[str], model: str) -> list[list[float]]:
        """One vector per text, in order; all of one width."""
        answer = self._post("/embeddings", {"model": model, "input": texts})
        try:
            data = sorted(answer["data"], key=lambda d: d["index"])
            rows = [[float(x) for x in d["embedding"]] for d in data]
        except (KeyError, TypeError, ValueError) as e:
            raise LLMError("/embeddings: the answer has no data[].embedding lists of numbers") from e
        if len(rows) != len(texts) or not rows or len({len(r) for r in rows}) != 1 or not rows[0]:
            raise LLMError(f"/embeddings: asked for {len(texts)} vectors of one width, got {len(rows)}")
        return rows


def json_in(text: str) -> Any:
    """The JSON value an LLM reply carries, tolerating code fences and prose around it; LLMError when none."""
    candidates = [text.strip()]
    match = _JSON_BLOCK.search(text)
    if match:
        candidates.append(match.group(0))
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except json.JSONDecodeError:
            continue
    raise LLMError("the reply holds no JSON")
