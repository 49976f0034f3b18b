"""The ``memsched`` command: ``serve`` runs the server; ``submit``, ``watch``, ``status``, ``memory`` and
``health`` talk to one through the Python client.

Owns signals and exit codes. ``serve``: the first SIGTERM/SIGINT drains and stops, a second one exits at
once (everything acknowledged is already durable); 2 for a bad configuration. Client commands: 0 on
success, 1 when the server refused or failed something (printed to stderr), 2 for bad usage or input,
3 when the server cannot be reached.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memsched_grpc.config import load_settings
from memsched_grpc.errors import MemschedError
from memsched_grpc.logging_setup import configure_logging

if TYPE_CHECKING:
    from memsched_client import MemschedClient, ScheduleLogForWebItem, ScheduleMessageItem


GC_THRESHOLDS = (700, 10, 1000)
"""The server process's collector: CPython's defaults but for full collections, 100 times rarer. A full collection
walks every object alive, and while accepted items wait for a worker each is a Record: with 100k of them (batched
ingest, workers behind) each full collection took 84-129 ms with every thread stopped, three in a run of 100k items;
with these thresholds none ran, and the young collections were as before (<= 6 ms). Cyclic garbage that dies young is
still found at once; what survives two young collections waits longer for a full one."""


def _serve(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    for section, key, value in (
        ("server", "address", args.address),
        ("storage", "data_dir", args.data_dir),
        ("workers", "count", args.workers),
    ):
        if value:
            part = getattr(settings, section).model_copy(update={key: value})
            settings = settings.model_copy(update={section: part})
    configure_logging(settings.log_level, settings.log_format)

    from memsched_grpc.server import SchedulerServer  # imports grpc: after settings are known good

    server = SchedulerServer(settings)
    stop_requested = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if stop_requested.is_set():
            os._exit(1)
        stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    port = server.start()
    gc.set_threshold(*GC_THRESHOLDS)
    gc.collect()
    gc.freeze()  # what exists once the server runs (modules, classes, the servicer) lives as long as the process
    print(f"memsched listening on {server.address}", flush=True)
    if args.port_file:
        args.port_file.write_text(str(port))
    # A timed wait: a signal the kernel delivers to another thread (gRPC's, the pool's) only sets a flag that the
    # main thread checks when it runs again; blocked in an untimed wait it never does (seen: SIGTERM ignored).
    while not stop_requested.wait(0.2):
        pass
    server.stop()
    return 0


# client commands: memsched_client is imported inside them, so `serve` spawns its workers before any grpc use

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
ID_NAMESPACE = uuid.UUID("6f1d3c52-53a4-4a8e-9a57-2b7c1e0f4d11")
"""Imported items without an item_id get a uuid5 of their place and text, so importing a file again
is acknowledged as duplicates instead of storing everything twice."""
MAX_TEXT = 160


class UsageError(Exception):
    """Bad input or options: exit code 2."""


def _client(args: argparse.Namespace) -> MemschedClient:
    from memsched_client import MemschedClient, TlsOptions

    token = args.token
    if args.token_file:
        token = args.token_file.read_text(encoding="utf-8").strip()
    tls = None
    if args.ca_file or args.cert_file or args.key_file:
        try:
            tls = TlsOptions.from_files(args.ca_file, args.cert_file, args.key_file, args.server_name)
        except (OSError, ValueError) as e:
            raise UsageError(f"TLS options: {e}") from e
    return MemschedClient(args.address, token=token, tls=tls, timeout=args.timeout)


def _short(text: str, width: int = MAX_TEXT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# submit


def _read_items(args: argparse.Namespace) -> list[ScheduleMessageItem]:
    from memsched_client import ScheduleMessageItem

    source = "-" if args.file == "-" else str(args.file)
    text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    fmt = args.format
    if fmt == "auto":
        fmt = "jsonl" if source.endswith(".jsonl") else _guess_format(text)
    defaults = {"user_id": args.user, "mem_cube_id": args.cube, "label": args.label, "task_id": args.task_id}
    defaults = {k: v for k, v in defaults.items() if v}
    items: list[ScheduleMessageItem] = []
    if fmt == "jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                if not isinstance(data, dict):
                    raise ValueError("a line must hold a JSON object")
                fields = {**defaults, **data}
                fields.setdefault("item_id", str(uuid.uuid5(ID_NAMESPACE, f"{number}:{line.strip()}")))
                items.append(ScheduleMessageItem.model_validate(fields))
            except ValueError as e:  # json and pydantic errors both derive from ValueError
                raise UsageError(f"{source}:{number}: {_first_line(e)}") from e
        return items
    return _chat_items(text, source, args, defaults)


def _guess_format(text: str) -> str:
    stripped = text.lstrip()
    if stripped.startswith("["):
        return "chat"
    try:
        data = json.loads(stripped)
    except json.JSONDecodeError:
        return "jsonl"
    return "chat" if isinstance(data, dict) and ("conversations" in data or "messages" in data) else "jsonl"


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _chat_items(
    text: str, source: str, args: argparse.Namespace, defaults: dict[str, str]
) -> list[ScheduleMessageItem]:
    """A chat transcript ([{role, content}] or {"conversations": [...]}): each turn becomes an ``add`` item
    (user turns land in UserMemory, the others in LongTermMemory), or with --dialogue a ``query`` (user) or
    ``answer`` (assistant) item, as MemOS's chat path would send them."""
    from memsched_client import ScheduleMessageItem

    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"{source}: not JSON: {e}") from e
    turns = data.get("conversations", data.get("messages")) if isinstance(data, dict) else data
    if not isinstance(turns, list):
        raise UsageError(f"{source}: a chat transcript is a JSON list of {{role, content}} (or under 'conversations')")
    if "user_id" not in defaults or "mem_cube_id" not in defaults:
        raise UsageError("a chat transcript needs --user and --cube")
    items = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("content"), str) or not turn["content"].strip():
            raise UsageError(f"{source}: turn {index} needs a non-empty string 'content'")
        role = str(turn.get("role", "user"))
        if args.dialogue:
            label, content = ("query" if role == "user" else "answer"), turn["content"]
        else:
            label, content = "add", json.dumps([{"role": role, "content": turn["content"]}], ensure_ascii=False)
        seed = f"{defaults['user_id']}/{defaults['mem_cube_id']}/{index}/{label}/{content}"
        fields = {**defaults, "label": label, "content": content}
        fields.setdefault("item_id", str(uuid.uuid5(ID_NAMESPACE, seed)))
        items.append(ScheduleMessageItem.model_validate(fields))
    return items


def _submit(args: argparse.Namespace) -> int:
    from memsched_client import Ack, Completion, Rejection, TaskStatus
    from tqdm import tqdm

    items = _read_items(args)
    if not items:
        raise UsageError("no items to submit")
    show = {"always": False, "never": True, "auto": None}[args.progress]
    acked = duplicates = completed = 0
    rejected: list[Rejection] = []
    failed: list[Completion] = []
    with _client(args) as client:
        client.wait_ready(args.timeout)
        bar = tqdm(total=len(items), unit="item", desc="stored", disable=show, file=sys.stderr)
        done_bar = tqdm(
            total=len(items), unit="item", desc="handled", disable=show if args.wait else True, file=sys.stderr
        )
        with client.session() as session:
            for start in range(0, len(items), args.batch_size):
                session.send(items[start : start + args.batch_size])
            session.close()
            for event in session:
                if isinstance(event, Ack):
                    acked += 1
                    duplicates += event.duplicate
                    bar.update()
                elif isinstance(event, Rejection):
                    rejected.append(event)
                    bar.update()
                    done_bar.update()
                elif isinstance(event, Completion):
                    completed += 1
                    if event.status == TaskStatus.FAILED:
                        failed.append(event)
                    done_bar.update()
                if not args.wait and acked + len(rejected) == len(items):
                    break  # all durable: their handling goes on without this stream
                if args.wait and completed + len(rejected) + duplicates == len(items):
                    break
        bar.close()
        done_bar.close()
    for r in rejected:
        print(f"rejected: {r}", file=sys.stderr)
    for f in failed:
        print(f"failed: item {f.item_id}: {f.error}", file=sys.stderr)
    summary = {
        "items": len(items),
        "stored": acked,
        "duplicates": duplicates,
        "rejected": len(rejected),
        **({"completed": completed - len(failed), "failed": len(failed)} if args.wait else {}),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(", ".join(f"{v} {k}" for k, v in summary.items()))
    return EXIT_REFUSED if rejected or failed else 0


# watch


def _format_log(log: ScheduleLogForWebItem) -> str:
    sizes = log.current_memory_sizes
    caps = log.memory_capacities
    move = f"{log.from_memory_type or '-'} → {log.to_memory_type or '-'}"
    text = log.log_content
    if log.metadata:  # the moved memories themselves; the "[From→To] key:" prefix repeats what the line shows
        text = " | ".join(m.memory for m in log.metadata)
    elif text.startswith("[") and "] " in text:
        text = text.split("] ", 1)[1]
    when = log.timestamp.astimezone().strftime("%H:%M:%S")
    status = "" if log.status in ("completed", "") else f" ({log.status})"
    return (
        f"{when}  {log.user_id}/{log.mem_cube_id}  {log.label:<15} {move:<32} {_short(text, 100)}{status}"
        f"  [WM {sizes.working_memory_size}/{caps.working_memory_capacity} LTM {sizes.long_term_memory_size}"
        f" UM {sizes.user_memory_size}]"
    )


def _watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.wait_ready(args.timeout)
        watch = client.watch_logs(args.user, args.cube or "", replay=args.replay, labels=args.label or [])
        timer = threading.Timer(args.seconds, watch.cancel) if args.seconds else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        seen = 0
        try:
            for log in watch:
                print(json.dumps(log.to_dict(), ensure_ascii=False) if args.json else _format_log(log), flush=True)
                seen += 1
                if args.count and seen >= args.count:
                    break
        except KeyboardInterrupt:
            pass
        finally:
            watch.cancel()
            if timer is not None:
                timer.cancel()
    return 0


# status, memory, health


def _status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if not args.item_id and not args.task:
            info = client.get_info()
            cubes = client.list_cubes(args.user or "")
            if args.json:
                out = {"info": info.model_dump(mode="json"), "cubes": [c.model_dump(mode="json") for c in cubes]}
                print(json.dumps(out))
                return 0
            print(
                f"memsched {info.version} at {client.address}: {info.workers} workers, labels {', '.join(info.labels)}"
            )
            print(f"{len(cubes)} cube(s); pending items: {sum(c.pending for c in cubes)}")
            for c in cubes:
                s = c.sizes
                print(
                    f"  {c.user_id}/{c.mem_cube_id}: pending {c.pending}, working {s.working_memory_size}, "
                    f"long-term {s.long_term_memory_size}, user {s.user_memory_size}"
                )
            return 0
        report = client.get_status(task_id=args.task) if args.task else client.get_status(args.item_id)
        if args.json:
            print(report.model_dump_json())
        else:
            print(f"{'task ' + args.task if args.task else 'item ' + args.item_id}: {report.status.value}")
            for st in report.items:
                error = f" error: {st.error}" if st.error else ""
                print(
                    f"  {st.item_id} {st.label} {st.user_id}/{st.mem_cube_id}: {st.status.value},"
                    f" {st.attempts} attempt(s){error}"
                )
        return EXIT_REFUSED if report.status == "failed" else 0


def _memory(args: argparse.Namespace) -> int:
    from memsched_client import MemoryType

    try:
        types = [MemoryType.parse(t) for t in args.type or []]
    except ValueError as e:
        raise UsageError(str(e)) from e
    with _client(args) as client:
        memory = client.get_memory(args.user, args.cube, types, args.limit, include_archived=args.archived)
    if args.json:
        print(memory.model_dump_json())
        return 0
    for part in memory.partitions:
        capacity = "off" if part.capacity < 0 else str(part.capacity)
        print(f"{part.memory_type.value}: {part.size} / {capacity}")
        for n, m in enumerate(part.items, start=1):
            score = f"[{m.importance:.2f}] " if part.memory_type == MemoryType.WORKING else ""
            print(f"  {n:>3}. {score}{_short(m.memory)}  (uses {m.usage_count}, id {m.id})")
        if part.memory_type == MemoryType.ACTIVATION and memory.activation_memory:
            print("  " + memory.activation_memory.replace("\n", "\n  "))
    if args.archived:
        print(f"Archived: {len(memory.archived)} shown")
        for n, m in enumerate(memory.archived, start=1):
            print(f"  {n:>3}. {_short(m.memory)}  (was {m.memory_type.value}, uses {m.usage_count}, id {m.id})")
    return 0


def _health(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.wait_ready(args.timeout)
        status = client.health(args.service)
    print(status)
    return 0 if status == "SERVING" else EXIT_REFUSED


def _client_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    conn = p.add_argument_group("connection")
    conn.add_argument("--address", default="127.0.0.1:50051", help="server host:port (default %(default)s)")
    conn.add_argument("--token", help="bearer token (prefer --token-file: command lines are visible to others)")
    conn.add_argument("--token-file", type=Path, help="file holding the bearer token")
    conn.add_argument("--ca-file", type=Path, help="CA certificate (PEM) for TLS; TLS is off without TLS options")
    conn.add_argument("--cert-file", type=Path, help="client certificate (PEM) for mutual TLS")
    conn.add_argument("--key-file", type=Path, help="client private key (PEM) for mutual TLS")
    conn.add_argument("--server-name", help="name to check the server certificate against")
    conn.add_argument("--timeout", type=float, default=10.0, help="seconds to connect and per call (%(default)s)")
    return p


def _add_client_commands(sub: Any) -> None:
    p = _client_parser(sub, "submit", "submit items from JSON lines or a chat transcript")
    p.add_argument("file", nargs="?", default="-", help="input file; '-' or nothing: standard input")
    p.add_argument("--format", choices=["auto", "jsonl", "chat"], default="auto", help="input format (%(default)s)")
    p.add_argument("--user", help="user_id for items that have none (required for chats)")
    p.add_argument("--cube", help="mem_cube_id for items that have none (required for chats)")
    p.add_argument("--label", default="add", help="label for JSON-lines items that have none (%(default)s)")
    p.add_argument("--task-id", help="task_id for items that have none")
    p.add_argument("--dialogue", action="store_true", help="chat turns as query/answer items instead of add")
    p.add_argument("--batch-size", type=int, default=500, help="items per stream message (%(default)s)")
    p.add_argument("--wait", action="store_true", help="wait until every item is handled, report failures")
    p.add_argument("--progress", choices=["auto", "always", "never"], default="auto", help="progress bar on stderr")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(run=_submit)

    p = _client_parser(sub, "watch", "follow memory movements live, per cube")
    p.add_argument("--user", required=True, help="the user whose cubes to watch")
    p.add_argument("--cube", help="only this cube")
    p.add_argument("--replay", type=int, default=20, help="recent log items per cube shown first (%(default)s)")
    p.add_argument("--label", action="append", help="only this web-log label (repeatable)")
    p.add_argument("--count", type=int, default=0, help="stop after this many log items")
    p.add_argument("--seconds", type=float, default=0, help="stop after this many seconds")
    p.add_argument("--json", action="store_true", help="one JSON object per log item (MemOS's web-log dict)")
    p.set_defaults(run=_watch)

    p = _client_parser(sub, "status", "server and cube overview, or the status of an item or task")
    p.add_argument("item_id", nargs="?", help="an item's id")
    p.add_argument("--task", help="a task_id: the aggregate status of its items")
    p.add_argument("--user", help="overview: only this user's cubes")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_status)

    p = _client_parser(sub, "memory", "a cube's partitions: working, long-term, user and activation memory")
    p.add_argument("--user", required=True)
    p.add_argument("--cube", required=True)
    p.add_argument("--type", action="append", help="partition: working, long_term, user, activation (repeatable)")
    p.add_argument("--limit", type=int, default=0, help="at most this many items per partition (0: all)")
    p.add_argument("--archived", action="store_true", help="also list memories archived by capacity eviction")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_memory)

    p = _client_parser(sub, "health", "grpc health check; exit 0 when SERVING")
    p.add_argument("--service", default="", help="service name (default: the server as a whole)")
    p.set_defaults(run=_health)


def _run_client_command(args: argparse.Namespace) -> int:
    from memsched_client import MemschedError as ClientError
    from memsched_client import RpcError, Unavailable

    try:
        code: int = args.run(args)
        return code
    except UsageError as e:
        print(f"memsched {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Unavailable as e:
        print(f"memsched {args.command}: cannot reach {args.address}: {e.message}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except RpcError as e:
        print(f"memsched {args.command}: {e}", file=sys.stderr)
        for v in e.violations:
            print(f"  {v.field}: {v.description}", file=sys.stderr)
        return EXIT_REFUSED
    except ClientError as e:
        print(f"memsched {args.command}: {e}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as e:
        print(f"memsched {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="memsched", description="MemOS's memory scheduler as a gRPC service")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server (embedded defaults: 127.0.0.1:50051, ./memsched-data)")
    serve.add_argument("--config", type=Path, help="YAML configuration file")
    serve.add_argument("--address", help="host:port to listen on (overrides server.address)")
    serve.add_argument("--data-dir", type=Path, help="data directory (overrides storage.data_dir)")
    serve.add_argument("--workers", type=int, help="worker processes (overrides workers.count)")
    serve.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    _add_client_commands(sub)
    args = parser.parse_args(argv)
    if args.command != "serve":
        return _run_client_command(args)
    try:
        return _serve(args)
    except MemschedError as e:
        print(f"memsched: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
