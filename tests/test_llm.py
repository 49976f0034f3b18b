"""The LLM-assisted configuration against a fake OpenAI-compatible endpoint on 127.0.0.1: the protocol (paths,
headers, bodies) and what each step changes; and the deterministic fallback whenever the endpoint is absent, slow or
answers garbage. The quality of a real LLM cannot be measured here (no model is reachable)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.conftest import Client, collect, completed_logs, item

KEY = "sk-test-123"
MEMORIES = [
    "The automobile is parked in the blue garage.",
    "Green tea tastes best at 80 degrees; I drink tea every morning, tea is life.",
    "I also like oolong tea sometimes.",
    "My tea kettle is red.",
    "The printer on floor two jams every Monday.",
]


@dataclass
class Fake:
    """What the fake endpoint answers, and every request it received."""

    chat: Callable[[str, str], str] = lambda system, user: "{}"
    embed: Callable[[list[str]], Any] = lambda texts: [[1.0, 0.0] for _ in texts]
    delay: float = 0.0
    status: int = 200
    requests: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def fake() -> Iterator[tuple[Fake, str]]:
    state = Fake()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            time.sleep(state.delay)
            if state.status != 200:
                self.send_response(state.status)
                self.end_headers()
                return
            if self.path == "/v1/chat/completions":
                system, user = body["messages"][0]["content"], body["messages"][1]["content"]
                answer: Any = {"choices": [{"message": {"role": "assistant", "content": state.chat(system, user)}}]}
            else:
                rows = state.embed(body["input"])
                answer = {"data": [{"index": i, "embedding": r} for i, r in enumerate(rows)]} if rows else "garbage"
            raw = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _llm(url: str, **retrieval: Any) -> dict[str, Any]:
    return {
        "capacities": {"working_memory_capacity": 2},
        "retrieval": {"llm": {"base_url": url, "model": "fake-model", "api_key": KEY, "timeout_seconds": 0.5}}
        | retrieval,
    }


def _ask(client: Client, question: str) -> tuple[list[str], list[Any]]:
    logs = completed_logs(client, [item(label="query", content=question)])
    return client.working_texts(), logs


def _load(client: Client) -> None:
    got = collect(client.session([item(content=text) for text in MEMORIES]))
    assert len(got["completions"]) == len(MEMORIES)
    # the query below matches nothing, so working memory holds nothing queried yet
    _ask(client, "zzz")


def _answers(keywords: list[str] | None = None, trigger: bool = True, first: str = "") -> Callable[[str, str], str]:
    """A well-behaved LLM: keywords, intent and rerank answers as the prompts ask."""

    def chat(system: str, user: str) -> str:
        if "search keywords" in system:
            return json.dumps({"keywords": keywords or []})
        if "working memory already answer" in system:
            return f"Sure! ```json\n{json.dumps({'trigger_retrieval': trigger, 'missing_evidences': []})}\n```"
        lines = [line for line in user.splitlines() if line[:1].isdigit()]
        order = sorted(range(1, len(lines) + 1), key=lambda n: first not in lines[n - 1])
        return json.dumps({"order": order})

    return chat


def test_llm_keywords_widen_the_query_over_the_openai_protocol(make_server: Any, fake: tuple[Fake, str]) -> None:
    state, url = fake
    state.chat = _answers(keywords=["automobile", "garage"])
    _, client = make_server(scheduler=_llm(url))
    _load(client)
    working, _ = _ask(client, "Where is my car?")  # "car" is in no memory: only the LLM's keywords find it
    assert working[0] == MEMORIES[0]
    chat = [r for r in state.requests if r["path"] == "/v1/chat/completions"]
    assert chat and all(r["auth"] == f"Bearer {KEY}" for r in chat)
    body = chat[-1]["body"]
    assert body["model"] == "fake-model" and body["temperature"] == 0
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert any("Where is my car?" in r["body"]["messages"][1]["content"] for r in chat)


def test_intent_that_working_memory_suffices_skips_retrieval(make_server: Any, fake: tuple[Fake, str]) -> None:
    state, url = fake
    _, client = make_server(scheduler=_llm(url))
    _load(client)
    state.chat = _answers()
    first, _ = _ask(client, "What is the colour of the kettle?")
    assert first[0] == MEMORIES[3]
    state.chat = _answers(trigger=False)
    working, logs = _ask(client, "Where is the automobile parked?")  # would bring a newcomer in if retrieved
    # nothing new comes in (the same memories, re-scored for the new query)
    assert sorted(working) == sorted(first) and [log.label for log in logs] == ["addMessage"]


def test_llm_reranker_orders_the_candidates(make_server: Any, fake: tuple[Fake, str]) -> None:
    state, url = fake
    state.chat = _answers(first="oolong")
    _, client = make_server(scheduler=_llm(url, reranker={"kind": "llm", "top_n": 5}))
    _load(client)
    working, _ = _ask(client, "Which tea do I drink?")
    assert working[0] == MEMORIES[2]  # lexically the weakest tea memory; the LLM put it first
    assert any("Candidates:" in r["body"]["messages"][1]["content"] for r in state.requests)


@pytest.mark.parametrize("failure", ["absent", "slow", "http_error", "not_json", "wrong_shape"])
def test_every_llm_step_falls_back_when_the_endpoint_fails(
    make_server: Any, fake: tuple[Fake, str], failure: str
) -> None:
    state, url = fake
    if failure == "absent":
        url = "http://127.0.0.1:9/v1"  # the discard port: nothing listens
    state.delay = 2.0 if failure == "slow" else 0.0
    state.status = 500 if failure == "http_error" else 200
    broken: dict[str, Callable[[str, str], str]] = {
        "not_json": lambda system, user: "I think the answer is tea.",
        "wrong_shape": lambda system, user: '{"order": "x", "keywords": 3, "trigger_retrieval": "maybe"}',
    }
    state.chat = broken.get(failure, _answers(first="oolong"))
    _, client = make_server(scheduler=_llm(url, reranker={"kind": "llm"}))
    _load(client)
    started = time.monotonic()
    working, logs = _ask(client, "Which tea do I drink every morning?")
    assert working[0] == MEMORIES[1]  # the lexical order, as without an LLM
    assert [log.label for log in logs][:2] == ["addMessage", "scheduleMemory"]
    if failure == "slow":
        # the first timeout starts a cooldown: later steps and queries do not wait again
        assert time.monotonic() - started < 10
        working, _ = _ask(client, "Which kettle?")
        assert working[0] == MEMORIES[3]


def test_openai_embeddings_add_a_dense_signal(make_server: Any, fake: tuple[Fake, str]) -> None:
    state, url = fake
    state.embed = lambda texts: [[1.0, 0.0] if ("car" in t or "automobile" in t) else [0.0, 1.0] for t in texts]
    scheduler = _llm(url, embedder={"kind": "openai", "model": "fake-embed"}, llm={"base_url": url, "keywords": False})
    _, client = make_server(scheduler=scheduler)
    _load(client)
    working, _ = _ask(client, "Where is my car?")
    assert working[0] == MEMORIES[0]
    embeddings = [r for r in state.requests if r["path"] == "/v1/embeddings"]
    assert embeddings and embeddings[0]["body"]["model"] == "fake-embed"
    assert isinstance(embeddings[0]["body"]["input"], list)


def test_garbage_embeddings_leave_retrieval_lexical(make_server: Any, fake: tuple[Fake, str]) -> None:
    state, url = fake
    state.embed = lambda texts: [[1.0, 2.0, 3.0]]  # one vector, whatever the number of texts
    _, client = make_server(scheduler=_llm(url, embedder={"kind": "openai", "model": "fake-embed"}))
    _load(client)
    state.embed = lambda texts: []  # the endpoint now answers a string instead of data
    working, _ = _ask(client, "What colour is the kettle?")
    assert working[0] == MEMORIES[3]
