"""The dashboard's HTTP face without a browser: what the JSON API and the event stream say, who may read
them, and that the web server stays read-only, stops cleanly and out of the workers."""

from __future__ import annotations

import http.client
import json
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from memsched_grpc.config import load_settings
from memsched_grpc.errors import ConfigError
from memsched_grpc.server import SchedulerServer
from tests.conftest import ROOT, Client, item, settings_dict

WEB = {"enabled": True, "address": "127.0.0.1:0"}
WAIT = 20.0
QUESTION = "What's my dog's name again?"
FACTS = [
    {"role": "user", "content": "I just adopted a golden retriever puppy yesterday."},
    {"role": "user", "content": "His name is Max. I live near Central Park in New York where we'll walk daily."},
    {"role": "assistant", "content": "Max will love those walks! Any favorite treats for him?"},
]
TOKEN_U1 = "token-for-user-one-only"
TOKEN_ALL = "token-for-every-user-here"


def get(server: SchedulerServer, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    status, body, _ = request(server, "GET", path, headers)
    return status, json.loads(body)


def request(
    server: SchedulerServer, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes, http.client.HTTPMessage]:
    assert server.web is not None
    conn = http.client.HTTPConnection("127.0.0.1", server.web.port, timeout=WAIT)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read(), response.headers
    finally:
        conn.close()


class EventStream:
    """Reads a Server-Sent Events stream the way a browser's EventSource does, on a background thread."""

    def __init__(self, server: SchedulerServer, path: str, headers: dict[str, str] | None = None) -> None:
        assert server.web is not None
        self.conn = http.client.HTTPConnection("127.0.0.1", server.web.port, timeout=WAIT)
        self.conn.request("GET", path, headers=headers or {})
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.events: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self.ended = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        name, data = "message", []
        try:
            for raw in self.response:
                line = raw.decode().rstrip("\r\n")
                if not line:
                    if data:
                        self.events.put((name, json.loads("\n".join(data))))
                    name, data = "message", []
                elif not line.startswith(":"):
                    field, _, value = line.partition(":")
                    if field == "event":
                        name = value.strip()
                    elif field == "data":
                        data.append(value.removeprefix(" "))
        except (OSError, ValueError):
            pass
        finally:
            self.ended.set()
            self.events.put(None)

    def next(self, timeout: float = WAIT) -> tuple[str, Any]:
        event = self.events.get(timeout=timeout)
        if event is None:
            raise EOFError("the stream ended")
        return event

    def wait_for(self, wanted: Callable[[str, Any], bool], timeout: float = WAIT) -> tuple[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            name, data = self.next(max(0.01, deadline - time.monotonic()))
            if wanted(name, data):
                return name, data

    def close(self) -> None:
        if self.conn.sock is not None:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()


def converse(client: Client, question: str = QUESTION) -> None:
    client.session([item(label="add", content=json.dumps(FACTS))], [item(label="query", content=question)])


def test_dashboard_is_off_unless_enabled(make_server: Any) -> None:
    server, _ = make_server()
    assert server.web is None
    assert load_settings().web.enabled is False
    assert load_settings().web.address == "127.0.0.1:8080"


def test_overview_and_cube_show_what_the_scheduler_holds(make_server: Any) -> None:
    server, client = make_server(web=WEB)
    converse(client)
    client.session([item(user="u2", cube="notes", label="add", content="Buy milk on Friday.")])
    client.wait_idle("u1")
    client.wait_idle("u2")

    status, overview = get(server, "/api/overview")
    assert status == 200
    assert overview["server"]["backlog"] == 0
    assert overview["server"]["activation"] is False
    cubes = {(c["user_id"], c["mem_cube_id"]): c for c in overview["cubes"]}
    assert set(cubes) == {("u1", "c1"), ("u2", "notes")}
    c1 = cubes[("u1", "c1")]
    assert (c1["pending"], c1["completed"], c1["failed"]) == (0, 2, 0)
    assert (c1["working"], c1["working_capacity"], c1["long_term"], c1["user"]) == (3, 20, 1, 2)

    status, cube = get(server, "/api/cube?user_id=u1&mem_cube_id=c1")
    assert status == 200
    assert [w["memory"] for w in cube["working"]] == client.working_texts()
    assert [p["type"] for p in cube["partitions"]] == ["WorkingMemory", "LongTermMemory", "UserMemory"]
    assert {p["type"]: (p["size"], p["capacity"]) for p in cube["partitions"]}["UserMemory"] == (2, 10000)
    assert cube["query_window"] == [QUESTION]
    assert "dog" in dict(cube["keywords"])
    state, usage = server.scheduler.cube_state("u1", "c1")
    assert [(w["id"], w["importance"], w["usage_count"]) for w in cube["working"]] == [
        (e.id, e.importance, usage[e.id]) for e in state.working
    ]
    assert any(w["importance"] > 0 for w in cube["working"])


def test_activation_memory_shows_only_when_enabled(make_server: Any) -> None:
    server, client = make_server(web=WEB, scheduler={"enable_activation_memory": True, "act_mem_update_interval": 0})
    converse(client)
    client.wait_idle("u1")
    _, cube = get(server, "/api/cube?user_id=u1&mem_cube_id=c1")
    activation = next(p for p in cube["partitions"] if p["type"] == "ActivationMemory")
    assert activation["size"] > 0
    assert cube["activation_text"].startswith("1. ")


def test_events_replay_history_then_push_what_happens(make_server: Any) -> None:
    server, client = make_server(web=WEB)
    client.session([item(label="add", content=json.dumps(FACTS))])
    client.wait_idle("u1")

    stream = EventStream(server, "/api/events?user_id=u1&mem_cube_id=c1&replay=2")
    try:
        assert stream.status == 200
        assert stream.next()[0] == "overview"
        name, cube = stream.next()
        assert name == "cube" and cube["query_window"] == []
        assert stream.next() == ("latency", {"replace": True, "items": stream_latency(server)})
        name, replay = stream.next()
        assert name == "logs" and replay["replay"] is True
        assert [x["label"] for x in replay["items"]] == ["addMemory", "addMemory"]  # the last two of three
        assert replay["items"][-1]["seq"] == 3 and replay["items"][-1]["cause"] == "add"

        query = item(label="query", content=QUESTION)
        client.session([query])
        seen: list[tuple[str, Any]] = []

        def everything_arrived(name: str, data: Any) -> bool:  # the feed and the finish reports race
            seen.append((name, data))
            names = {n for n, d in seen if n != "cube" or d["query_window"] == [QUESTION]}
            return {"logs", "latency", "cube"} <= names

        stream.wait_for(everything_arrived)
        live = [x for n, d in seen if n == "logs" for x in d["items"]]
        assert all(not d["replay"] for n, d in seen if n == "logs")
        first = live[0]
        assert (first["label"], first["content"], first["source"], first["cause"]) == (
            "addMessage",
            f"[User] {QUESTION}",
            query.item_id,
            "query",
        )
        assert [x["seq"] for x in live] == list(range(4, 4 + len(live)))  # nothing replayed again, none skipped
        assert first["fill"]["WorkingMemory"] == [3, 20]
        latency = [s for n, d in seen if n == "latency" for s in d["items"]]
        assert [s["label"] for s in latency] == ["query"] and latency[0]["ok"] is True
        assert next(d for n, d in seen if n == "cube" and d["query_window"])["queries"] == 1
    finally:
        stream.close()


def stream_latency(server: SchedulerServer) -> list[dict[str, Any]]:
    assert server.web is not None
    return server.web.hub.latency(("u1", "c1"))


def test_a_page_without_a_cube_learns_of_new_cubes(make_server: Any) -> None:
    server, client = make_server(web=WEB)
    stream = EventStream(server, "/api/events")
    try:
        name, overview = stream.next()
        assert name == "overview" and overview["cubes"] == []
        client.session([item(user="u7", cube="fresh", label="add", content="A brand new memory.")])
        stream.wait_for(lambda n, d: n == "overview" and [c["mem_cube_id"] for c in d["cubes"]] == ["fresh"])
    finally:
        stream.close()


def test_read_only_and_guarded(make_server: Any) -> None:
    server, _ = make_server(web={**WEB, "max_streams": 1})
    status, page, headers = request(server, "GET", "/")
    assert status == 200 and b'src="/static/app.js"' in page
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    status, script, headers = request(server, "GET", "/static/vendor/uPlot.iife.min.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript") and b"uPlot" in script
    assert request(server, "GET", "/static/vendor/uPlot.LICENSE")[0] == 200

    for method in ("POST", "PUT", "DELETE"):
        status, _, headers = request(server, method, "/api/overview")
        assert (status, headers["Allow"]) == (405, "GET")
    assert get(server, "/static/../server.py")[0] == 404
    assert get(server, "/api/cube?user_id=u1") == (400, {"error": "user_id and mem_cube_id are required"})
    assert get(server, "/api/events?user_id=u1&mem_cube_id=c1&replay=-1")[0] == 400
    # A page on another site reaching the loopback port through DNS rebinding names another host.
    assert get(server, "/api/overview", {"Host": "attacker.example:80"})[0] == 421
    assert get(server, "/api/overview", {"Host": "localhost"})[0] == 200

    first = EventStream(server, "/api/events")
    try:
        assert first.next()[0] == "overview"
        status, body = get(server, "/api/events")
        assert status == 503 and "web.max_streams" in body["error"]
    finally:
        first.close()


def test_tokens_scope_what_the_dashboard_shows(make_server: Any) -> None:
    tokens = [{"token": TOKEN_U1, "users": ["u1"], "name": "one"}, {"token": TOKEN_ALL, "users": ["*"], "name": "all"}]
    server, _ = make_server(web=WEB, auth={"tokens": tokens})
    server.scheduler.submit([item(content="mine"), item(user="u2", cube="c2", content="theirs")])
    assert server.scheduler.wait_idle("u1", "", WAIT) == 0 and server.scheduler.wait_idle("u2", "", WAIT) == 0

    assert get(server, "/api/overview")[0] == 401
    assert get(server, "/api/overview", {"Authorization": "Bearer not-a-known-token-at-all"})[0] == 401
    one = {"Authorization": f"Bearer {TOKEN_U1}"}
    status, overview = get(server, "/api/overview", one)
    assert status == 200 and [c["user_id"] for c in overview["cubes"]] == ["u1"]
    assert get(server, "/api/cube?user_id=u1&mem_cube_id=c1", one)[0] == 200
    assert get(server, "/api/cube?user_id=u2&mem_cube_id=c2", one)[0] == 403
    assert get(server, f"/api/events?user_id=u2&mem_cube_id=c2&token={TOKEN_U1}")[0] == 403
    _, overview = get(server, "/api/overview", {"Authorization": f"Bearer {TOKEN_ALL}"})
    assert [c["user_id"] for c in overview["cubes"]] == ["u1", "u2"]

    stream = EventStream(server, f"/api/events?user_id=u1&mem_cube_id=c1&token={TOKEN_U1}")  # EventSource's way
    try:
        name, overview = stream.next()
        assert name == "overview" and [c["user_id"] for c in overview["cubes"]] == ["u1"]
    finally:
        stream.close()


def test_stop_ends_live_pages_before_the_scheduler_stops(tmp_path: Path, record_dir: Path) -> None:
    server = SchedulerServer(load_settings(**settings_dict(tmp_path / "data", web=WEB)))
    server.start()
    assert server.web is not None
    port = server.web.port
    try:
        client = Client(server.address)
        converse(client)
        client.close()
        stream = EventStream(server, "/api/events?user_id=u1&mem_cube_id=c1")
        stream.wait_for(lambda n, d: n == "logs")
    finally:
        started = time.monotonic()
        server.stop()
    assert time.monotonic() - started < 10
    assert stream.ended.wait(5), "the page's stream was left open"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), 1)


def test_public_web_address_needs_auth_or_consent(tmp_path: Path, record_dir: Path) -> None:
    settings = load_settings(**settings_dict(tmp_path / "data", web={"enabled": True, "address": "0.0.0.0:0"}))
    server = SchedulerServer(settings)
    with pytest.raises(ConfigError, match=re.escape("web.address '0.0.0.0:0' is not loopback")):
        server.start()


def test_workers_never_import_the_web_server() -> None:
    code = (
        "import sys, memsched_grpc.worker, memsched_grpc.handlers, memsched_grpc.cube;"
        "bad = sorted(m for m in sys.modules if m.startswith('memsched_grpc.web') or m.startswith('http.server'));"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
