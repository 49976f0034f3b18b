"""The dashboard's HTTP server: the page and its assets, a small read-only JSON API, and one Server-Sent
Events stream per open page.

The standard library's ThreadingHTTPServer is enough: a handful of developers watch at once, each page
holds one thread for its event stream (``web.max_streams`` caps them), and nothing here is on the
scheduler's hot path. Only GET is served. When the dashboard listens on loopback, requests must also name
a loopback host, so that a web page elsewhere cannot read it through DNS rebinding.
"""

from __future__ import annotations

import json
import logging
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from memsched_grpc.addresses import is_loopback_host, split_address
from memsched_grpc.auth import Authenticator, Unauthenticated
from memsched_grpc.config import WebConfig
from memsched_grpc.encoded_log import EncodedLog
from memsched_grpc.errors import ConfigError, NotFound
from memsched_grpc.feed import Subscription, WatcherOverflow
from memsched_grpc.models import MemoryType
from memsched_grpc.scheduler import MemScheduler
from memsched_grpc.web import views
from memsched_grpc.web.hub import Event, Hub, HubClosed, MayRead, Stream, TooManyStreams

log = logging.getLogger(__name__)

Authorize = Callable[[str], MayRead | None]
"""Token (empty when none was sent) -> a predicate telling which user ids it may read, or None to refuse it.
The gRPC API's authentication plugs in here; without one, the dashboard shows every user."""

HEARTBEAT_SECONDS = 15.0
"""An SSE comment this often keeps proxies from closing an idle stream and finds pages that went away."""
FEED_WAIT_SECONDS = 60.0
"""How long a page's feed reader blocks between checks; closing the subscription wakes it at once."""
SOCKET_TIMEOUT_SECONDS = 10.0
"""A page that stops reading its stream for this long is dropped, so stop() never waits on it."""
STOP_WAIT_SECONDS = 5.0
MAX_REPLAY = 1000
CAUSE_CACHE_ITEMS = 2048
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
}


def _everyone(user_id: str) -> bool:
    return True


def authorize_with(authenticator: Authenticator) -> Authorize:
    """The gRPC API's tokens, for the dashboard: a token shows exactly the users it may act for there."""

    def authorize(token: str) -> MayRead | None:
        try:
            return authenticator.authenticate_token(token).may_act_for
        except Unauthenticated:
            return None

    return authorize


def _load_assets() -> dict[str, tuple[bytes, str]]:
    """Every shipped asset, read once: requests are answered from this table, so no path reaches the disk."""
    assets: dict[str, tuple[bytes, str]] = {}
    root = resources.files("memsched_grpc.web") / "static"

    def walk(folder: Any, prefix: str) -> None:
        for entry in folder.iterdir():
            path = f"{prefix}/{entry.name}"
            if entry.is_dir():
                walk(entry, path)
                continue
            suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
            kind = CONTENT_TYPES.get(suffix)
            if kind is not None or entry.name.endswith("LICENSE"):
                assets[path] = (entry.read_bytes(), kind or CONTENT_TYPES[".txt"])

    walk(root, "/static")
    assets["/"] = assets["/static/index.html"]
    return assets


class HttpError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class DashboardServer:
    """The live dashboard over one MemScheduler: start() binds and serves, stop() ends every page and returns."""

    def __init__(
        self,
        scheduler: MemScheduler,
        config: WebConfig,
        authorize: Authorize | None = None,
        allow_public_without_auth: bool = False,
    ) -> None:
        self.host, port = split_address(config.address, "web.address")
        self.loopback = is_loopback_host(self.host)
        if not self.loopback and authorize is None and not allow_public_without_auth:
            raise ConfigError(
                f"web.address {config.address!r} is not loopback and auth.tokens is empty; "
                "configure tokens, or set server.allow_public_without_auth: true to listen there anyway"
            )
        self.scheduler = scheduler
        self.config = config
        self.authorize = authorize
        self.activation = scheduler.settings.scheduler.enable_activation_memory
        self.hub = Hub(scheduler, config.max_streams)
        self.assets = _load_assets()
        self.port = port
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._busy = threading.Condition()
        self._in_flight = 0

    def start(self) -> int:
        """Bind and serve in a background thread; returns the bound port."""
        try:
            httpd = _HTTPServer((self.host, self.port), self)
        except OSError as e:
            raise ConfigError(f"web.address: cannot bind {self.config.address}: {e}") from e
        self.port = httpd.server_address[1]
        self.hub.start()
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, name="web", daemon=True)
        self._thread.start()
        log.info("dashboard at %s", self.url)
        return self.port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def stop(self) -> None:
        """End every live page and wait for requests in flight, so none reads the scheduler after it stops."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self.hub.stop()
        httpd.shutdown()
        httpd.server_close()
        with self._busy:
            if not self._busy.wait_for(lambda: self._in_flight == 0, STOP_WAIT_SECONDS):
                log.warning("dashboard stopped with %d requests still running", self._in_flight)
        if self._thread is not None:
            self._thread.join(STOP_WAIT_SECONDS)
        log.info("dashboard stopped")

    @contextmanager
    def request(self) -> Iterator[None]:
        with self._busy:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._busy:
                self._in_flight -= 1
                self._busy.notify_all()

    # what requests ask
    def may_read(self, token: str) -> MayRead:
        if self.authorize is None:
            return _everyone
        allowed = self.authorize(token)
        if allowed is None:
            raise HttpError(HTTPStatus.UNAUTHORIZED, "missing or unknown token")
        return allowed

    def host_allowed(self, host_header: str | None) -> bool:
        if not self.loopback:
            return True
        if not host_header:
            return False
        host = urlsplit("//" + host_header).hostname or ""
        return is_loopback_host(host)

    def cube(self, user_id: str, mem_cube_id: str) -> dict[str, Any]:
        view = self.scheduler.read_memory(user_id, mem_cube_id, [MemoryType.WORKING], 0)
        return views.cube_view(view, self.activation, self.scheduler.dispatcher.pending(user_id, mem_cube_id))


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], dashboard: DashboardServer) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.dashboard = dashboard
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, a DNS query that can stall a closed network.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    server_version = "memsched-dashboard"
    timeout = SOCKET_TIMEOUT_SECONDS

    @property
    def dashboard(self) -> DashboardServer:
        return self.server.dashboard

    def log_message(self, format: str, *args: Any) -> None:
        # The query string may carry a token: log the path only.
        log.debug("%s %s", self.address_string(), urlsplit(self.path).path)

    def do_GET(self) -> None:
        with self.dashboard.request():
            try:
                self._route()
            except HttpError as e:
                self._send_json({"error": str(e)}, e.status)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                log.debug("dashboard client %s went away", self.address_string())
            except Exception:
                log.exception("dashboard request %s failed", urlsplit(self.path).path)
                self._send_json({"error": "internal error; see the server log"}, HTTPStatus.INTERNAL_SERVER_ERROR)

    def _read_only(self) -> None:
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
        self.send_header("Allow", "GET")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _read_only

    def _route(self) -> None:
        if not self.dashboard.host_allowed(self.headers.get("Host")):
            raise HttpError(HTTPStatus.MISDIRECTED_REQUEST, "this dashboard answers only to a loopback host name")
        url = urlsplit(self.path)
        asset = self.dashboard.assets.get(url.path)
        if asset is not None:
            self._send(asset[0], asset[1], cache="no-cache")
            return
        api = {"/api/overview": self._overview, "/api/cube": self._cube, "/api/events": self._events}.get(url.path)
        if api is None:
            raise HttpError(HTTPStatus.NOT_FOUND, f"no such page: {url.path}")
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        api(query, self.dashboard.may_read(self._token(query)))

    def _token(self, query: dict[str, str]) -> str:
        """The Authorization header's bearer token, else ``token`` in the query (EventSource sends no headers)."""
        scheme, _, value = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return query.get("token", "")

    # API
    def _overview(self, query: dict[str, str], may_read: MayRead) -> None:
        self._send_json(self.dashboard.hub.overview(may_read))

    def _cube(self, query: dict[str, str], may_read: MayRead) -> None:
        user_id, mem_cube_id = self._cube_of(query, may_read, required=True)
        self._send_json(self.dashboard.cube(user_id, mem_cube_id))

    @staticmethod
    def _cube_of(query: dict[str, str], may_read: MayRead, required: bool) -> tuple[str, str]:
        user_id, mem_cube_id = query.get("user_id", ""), query.get("mem_cube_id", "")
        if required and not (user_id and mem_cube_id):
            raise HttpError(HTTPStatus.BAD_REQUEST, "user_id and mem_cube_id are required")
        if bool(user_id) != bool(mem_cube_id):
            raise HttpError(HTTPStatus.BAD_REQUEST, "give user_id and mem_cube_id together, or neither")
        if user_id and not may_read(user_id):
            raise HttpError(HTTPStatus.FORBIDDEN, f"this token may not read user_id {user_id!r}")
        return user_id, mem_cube_id

    def _events(self, query: dict[str, str], may_read: MayRead) -> None:
        """The live stream of one page: the overview always; with a cube, its state, latency and log feed.

        The cube's log items come from a subscription to the scheduler's feed (the one WatchLogs reads),
        taken before the history replay is read so that nothing falls between them.
        """
        user_id, mem_cube_id = self._cube_of(query, may_read, required=False)
        replay_text = query.get("replay", str(self.dashboard.config.replay))
        if not replay_text.isdigit() or int(replay_text) > MAX_REPLAY:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"replay must be a whole number from 0 to {MAX_REPLAY}")
        dashboard = self.dashboard
        cube = (user_id, mem_cube_id) if user_id else None
        try:
            stream = dashboard.hub.open(may_read, cube)
        except (HubClosed, TooManyStreams) as e:
            raise HttpError(HTTPStatus.SERVICE_UNAVAILABLE, str(e)) from e
        sub: Subscription | None = None
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-store")
            self._security_headers()
            self.end_headers()
            self._write("retry: 2000\n\n")
            self._event("overview", dashboard.hub.overview(may_read))
            if cube is None:
                self._pump_events(stream, None, {}, {})
                return
            sub, replayed = dashboard.scheduler.watch(user_id, mem_cube_id, (), int(replay_text))
            threading.Thread(target=_feed_into, args=(sub, stream), name="web-feed", daemon=True).start()
            causes: dict[str, str] = {}
            last_seen = {mem_cube_id: replayed[-1].sequence} if replayed else {}
            self._event("cube", dashboard.cube(user_id, mem_cube_id))
            self._event("latency", {"replace": True, "items": dashboard.hub.latency(cube)})
            self._event("logs", {"replay": True, "items": self._logs(replayed, causes)})
            self._pump_events(stream, cube, causes, last_seen)
        finally:
            dashboard.hub.close(stream)
            if sub is not None:
                sub.close()

    def _pump_events(
        self, stream: Stream, cube: tuple[str, str] | None, causes: dict[str, str], last_seen: dict[str, int]
    ) -> None:
        """Send what the hub and the feed push until the page leaves or the dashboard stops."""
        while True:
            events = stream.next(HEARTBEAT_SECONDS)
            if events is None:
                return
            if not events:
                self._write(": keep-alive\n\n")
                continue
            refresh = False
            for event in events:
                if event.name == "logs":
                    fresh = [x for x in event.data if x.sequence > last_seen.get(x.mem_cube_id, 0)]
                    if fresh:
                        last_seen[fresh[-1].mem_cube_id] = fresh[-1].sequence
                        self._event("logs", {"replay": False, "items": self._logs(fresh, causes)})
                    refresh = True
                elif event.name == "overflow":
                    self._event("overflow", event.data)
                    return
                else:
                    self._event(event.name, event.data)
                    refresh = refresh or event.name == "latency"
            if refresh and cube is not None:  # something of this cube finished: one read for the whole batch
                self._event("cube", self.dashboard.cube(*cube))

    def _logs(self, logs: list[EncodedLog], causes: dict[str, str]) -> list[dict[str, Any]]:
        """Feed rows, each with the label of the message that caused it (looked up once per message)."""
        out = []
        for item in (log.item() for log in logs):
            source = item.source_item_id
            if source not in causes:
                try:
                    causes[source] = self.dashboard.scheduler.status(source).label if source else ""
                except NotFound:
                    causes[source] = ""
                if len(causes) > CAUSE_CACHE_ITEMS:
                    causes.pop(next(iter(causes)))
            out.append(views.log_item(item, causes[source]))
        return out

    # writing
    def _security_headers(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)

    def _send(
        self, body: bytes, content_type: str, status: HTTPStatus = HTTPStatus.OK, cache: str = "no-store"
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self._security_headers()
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, body: dict[str, Any], status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(json.dumps(body, ensure_ascii=False).encode(), "application/json; charset=utf-8", status)

    def _event(self, name: str, data: Any) -> None:
        self._write(f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n")

    def _write(self, text: str) -> None:
        self.wfile.write(text.encode())
        self.wfile.flush()


def _feed_into(sub: Subscription, stream: Stream) -> None:
    """Forward a page's feed subscription into its event queue until either is closed."""
    while not sub.closed:
        try:
            logs = sub.get(FEED_WAIT_SECONDS)
        except WatcherOverflow as e:
            stream.push(Event("overflow", {"reason": str(e)}))
            return
        if logs:
            stream.push(Event("logs", logs))
