"""Checks on incoming items. Every failure names the field and the rule; nothing here knows of gRPC."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Collection

from google.protobuf.struct_pb2 import Struct, Value

from memsched.v1 import items_pb2
from memsched_grpc.config import LimitsConfig
from memsched_grpc.errors import InvalidItem

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# google.protobuf.Timestamp's valid range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_TS_MIN, _TS_MAX = -62135596800, 253402300799
_OPTIONAL_IDS = ("session_id", "task_id", "trace_id", "user_name")
_KNOWN_IDS = 65_536  # id values remembered as valid (the same rules apply to every id field)
# Labels whose handler has nothing to work on without content: refused here rather than failed later.
NEEDS_CONTENT = frozenset({"add", "query", "answer"})


class ItemValidator:
    """Validates ScheduleMessageItems against the limits and the registered labels."""

    def __init__(self, limits: LimitsConfig, labels: Collection[str]) -> None:
        self._limits = limits
        self._labels = frozenset(labels)
        self._label_list = ", ".join(sorted(self._labels))
        self._known: set[str] = set()

    def check(self, item: items_pb2.ScheduleMessageItem, index: int = 0) -> None:
        """Raise InvalidItem for the first rule ``item`` breaks."""
        item_id = item.item_id
        if not item_id:
            raise InvalidItem("item_id", "is required and must not be empty", item_id, index)
        self._check_id("item_id", item_id, item_id, index)
        known = self._known
        # Users, cubes and labels repeat from item to item: a value that passed once is not checked again.
        for name, value in (("user_id", item.user_id), ("mem_cube_id", item.mem_cube_id), ("label", item.label)):
            if value in known:
                continue
            if not value:
                raise InvalidItem(name, "is required and must not be empty", item_id, index)
            self._check_id(name, value, item_id, index)
            self._remember(value)
        for name in _OPTIONAL_IDS:
            value = getattr(item, name)
            if value and value not in known:
                self._check_id(name, value, item_id, index)
                self._remember(value)
        if item.label not in self._labels:
            raise InvalidItem(
                "label", f"unknown label {item.label!r}; registered labels: {self._label_list}", item_id, index
            )
        content = item.content
        if not content.strip() and item.label in NEEDS_CONTENT:
            raise InvalidItem("content", f"must not be empty for label {item.label!r}", item_id, index)
        limit = self._limits.max_content_bytes
        # len(str) <= bytes <= 4·len(str): only encode when the cheap bound cannot decide.
        if len(content) * 4 > limit and len(content.encode("utf-8")) > limit:
            raise InvalidItem("content", f"must be at most {limit} bytes of UTF-8", item_id, index)
        if len(item.mem_cube) > 4096:
            raise InvalidItem("mem_cube", "must be at most 4096 characters", item_id, index)
        if item.HasField("info"):
            if item.info.ByteSize() > limit:
                raise InvalidItem("info", f"must encode to at most {limit} bytes", item_id, index)
            if not _finite_struct(item.info):
                raise InvalidItem("info", "numbers must be finite (JSON has no NaN or Infinity)", item_id, index)
        if item.HasField("timestamp"):
            self._check_timestamp(item, index)

    def _remember(self, value: str) -> None:
        if len(self._known) >= _KNOWN_IDS:
            self._known.clear()  # crude, but bounded; refilling costs one check per distinct value
        self._known.add(value)

    def _check_id(self, name: str, value: str, item_id: str, index: int) -> None:
        limit = self._limits.max_id_bytes
        if len(value) * 4 > limit and len(value.encode("utf-8")) > limit:
            raise InvalidItem(name, f"must be at most {limit} bytes", item_id, index)
        if _CONTROL.search(value):
            raise InvalidItem(name, "must not contain control characters", item_id, index)

    def _check_timestamp(self, item: items_pb2.ScheduleMessageItem, index: int) -> None:
        ts = item.timestamp
        if not (_TS_MIN <= ts.seconds <= _TS_MAX) or not (0 <= ts.nanos < 1_000_000_000):
            raise InvalidItem(
                "timestamp", "must be a valid google.protobuf.Timestamp (years 1-9999)", item.item_id, index
            )
        skew = self._limits.timestamp_skew_days * 86400
        if abs(ts.seconds - time.time()) > skew:
            raise InvalidItem(
                "timestamp",
                f"must be within {self._limits.timestamp_skew_days} days of the server's clock",
                item.item_id,
                index,
            )


def _finite_struct(struct: Struct) -> bool:
    """Handlers get ``info`` as JSON-like data, and JSON cannot hold NaN or Infinity: such an item would fail
    every attempt to convert it, so it is refused here."""
    return all(_finite_value(v) for v in struct.fields.values())


def _finite_value(value: Value) -> bool:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return math.isfinite(value.number_value)
    if kind == "struct_value":
        return _finite_struct(value.struct_value)
    if kind == "list_value":
        return all(_finite_value(v) for v in value.list_value.values)
    return True
