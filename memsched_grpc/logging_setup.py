"""Process-wide logging for ``memsched serve``: readable text (default) or one JSON object per line.

JSON lines are for log shippers: every record carries time, level, logger and message, plus the
``item_id`` / ``user_id`` / ``mem_cube_id`` / ``task_id`` / ``trace_id`` a caller passed in ``extra``, and the
traceback when there is one. Imports nothing of grpc, so workers may use it too.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONTEXT_FIELDS = ("item_id", "user_id", "mem_cube_id", "task_id", "trace_id", "worker")


class JsonFormatter(logging.Formatter):
    """One JSON object per record; never raises on odd arguments (they are rendered with ``str``)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            "thread": record.threadName,
        }
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(level: str, fmt: LogFormat = "text", prefix: str = "") -> None:
    """Replace the root handlers with one stderr handler in ``fmt``; ``prefix`` tags text lines (worker-3)."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        text = TEXT_FORMAT.replace("%(levelname)s", f"{prefix} %(levelname)s") if prefix else TEXT_FORMAT
        handler.setFormatter(logging.Formatter(text))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
