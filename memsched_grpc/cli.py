"""The ``memsched`` command. Owns signals and exit codes: the first SIGTERM/SIGINT drains and stops,
a second one exits at once (everything acknowledged is already durable)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from memsched_grpc.config import load_settings
from memsched_grpc.errors import MemschedError


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
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

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
    print(f"memsched listening on {server.address}", flush=True)
    if args.port_file:
        args.port_file.write_text(str(port))
    stop_requested.wait()
    server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="memsched", description="MemOS's memory scheduler as a gRPC service")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server (embedded defaults: 127.0.0.1:50051, ./memsched-data)")
    serve.add_argument("--config", type=Path, help="YAML configuration file")
    serve.add_argument("--address", help="host:port to listen on (overrides server.address)")
    serve.add_argument("--data-dir", type=Path, help="data directory (overrides storage.data_dir)")
    serve.add_argument("--workers", type=int, help="worker processes (overrides workers.count)")
    serve.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
    except MemschedError as e:
        print(f"memsched: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
