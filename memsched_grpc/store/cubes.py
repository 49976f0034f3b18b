"""Cube tables inside one shard environment: memories by partition, cube state, log history,
archived memories, use counts, and the markers that make processing exactly-once.

A memory's use count is kept apart from its record, in one array per cube and USAGE_CHUNK insertion sequence
numbers (``usage``). A query counts a use of each of the ~20 memories it brings into working memory; rewriting
their records dirtied ~20 scattered pages per commit, which LMDB's commit and the page cache's large folios
turned into 2.5 MB written to disk per query (scratch harness, 10k-memory cube) and ~0.7 ms more of the commit's
fsync; rewriting one 40 KB array writes ~1 MB. Memories stored before sequence numbers existed (sequence 0) keep
their count in their record; a record's count is also the count until its cube's array covers the memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

from memsched_grpc.encoded_log import EncodedLog
from memsched_grpc.models import CubeState, LogItem, MemoryItem, MemoryType
from memsched_grpc.store import keys
from memsched_grpc.store.environment import Environment, as_bytes

DB_NAMES = ("memory", "cube", "history", "archive", "done", "usage")
USAGE_CHUNK = 16_384
"""Use counts per stored array: a 10k-memory cube's counts are one contiguous 40 KB value."""
USAGE_DTYPE = np.dtype("<u4")


def shard_path(data_dir: Path, shard: int) -> Path:
    return data_dir / "shards" / f"{shard:03d}"


class CubeTables:
    """Reads and writes of cube data; every method takes the caller's transaction."""

    def __init__(self, env: Environment) -> None:
        self.env = env
        self._memory = env.dbs["memory"]
        self._cube = env.dbs["cube"]
        self._history = env.dbs["history"]
        self._archive = env.dbs["archive"]
        self._done = env.dbs["done"]
        self._usage = env.dbs["usage"]

    @classmethod
    def open(cls, data_dir: Path, shard: int, map_size: int, sync: bool) -> CubeTables:
        return cls(Environment(shard_path(data_dir, shard), map_size, sync, DB_NAMES))

    # cube state
    def load_state(self, txn: lmdb.Transaction, cube: bytes) -> CubeState | None:
        raw = txn.get(cube, db=self._cube)
        return None if raw is None else CubeState.model_validate_json(as_bytes(raw))

    def save_state(self, txn: lmdb.Transaction, cube: bytes, state: CubeState) -> None:
        txn.put(cube, state.model_dump_json().encode(), db=self._cube)

    def iter_cubes(self, txn: lmdb.Transaction, user_id: str) -> Iterator[CubeState]:
        """The cubes of one user (cube keys start with the user id), or of all users when it is empty."""
        prefix = user_id.encode() + keys.CUBE_SEP if user_id else b""
        for raw in _values_with_prefix(txn, self._cube, prefix):
            yield CubeState.model_validate_json(raw)

    # memories
    def get_memory(
        self, txn: lmdb.Transaction, cube: bytes, memory_type: MemoryType, memory_id: str
    ) -> MemoryItem | None:
        item = self.memory_record(txn, cube, memory_type, memory_id)
        if item is not None and item.sequence:
            chunk, index = divmod(item.sequence, USAGE_CHUNK)
            counts = txn.get(keys.usage_key(cube, chunk), db=self._usage)
            item.usage_count = _count(None if counts is None else as_bytes(counts), index, item.usage_count)
        return item

    def memory_record(
        self, txn: lmdb.Transaction, cube: bytes, memory_type: MemoryType, memory_id: str
    ) -> MemoryItem | None:
        """The memory as its record holds it: its use count may be behind the usage table's (see get_memory)."""
        raw = txn.get(keys.memory_key(cube, memory_type, memory_id), db=self._memory)
        return None if raw is None else MemoryItem.model_validate_json(as_bytes(raw))

    def find_memory(self, txn: lmdb.Transaction, cube: bytes, memory_id: str) -> MemoryItem | None:
        """A working-memory entry refers to a memory in LongTermMemory or UserMemory without saying which."""
        return self.get_memory(txn, cube, MemoryType.LONG_TERM, memory_id) or self.get_memory(
            txn, cube, MemoryType.USER, memory_id
        )

    def put_memory(self, txn: lmdb.Transaction, cube: bytes, item: MemoryItem) -> None:
        txn.put(keys.memory_key(cube, item.memory_type, item.id), item.model_dump_json().encode(), db=self._memory)

    def delete_memory(self, txn: lmdb.Transaction, cube: bytes, memory_type: MemoryType, memory_id: str) -> None:
        txn.delete(keys.memory_key(cube, memory_type, memory_id), db=self._memory)

    def iter_memories(
        self, txn: lmdb.Transaction, cube: bytes, memory_type: MemoryType, usage: dict[int, bytes] | None = None
    ) -> Iterator[MemoryItem]:
        """The partition's memories in id order, with their use counts (``usage``: the cube's arrays, when the
        caller has read them already)."""
        usage = self.load_usage(txn, cube) if usage is None else usage
        for raw in _values_with_prefix(txn, self._memory, keys.memory_prefix(cube, memory_type)):
            item = MemoryItem.model_validate_json(raw)
            if item.sequence:
                chunk, index = divmod(item.sequence, USAGE_CHUNK)
                item.usage_count = _count(usage.get(chunk), index, item.usage_count)
            yield item

    def archive_memory(self, txn: lmdb.Transaction, cube: bytes, item: MemoryItem) -> None:
        """Evicted memories stay retrievable here, keyed like live ones."""
        txn.put(keys.memory_key(cube, item.memory_type, item.id), item.model_dump_json().encode(), db=self._archive)

    def iter_archive(self, txn: lmdb.Transaction, cube: bytes, memory_type: MemoryType) -> Iterator[MemoryItem]:
        for raw in _values_with_prefix(txn, self._archive, keys.memory_prefix(cube, memory_type)):
            yield MemoryItem.model_validate_json(raw)

    # use counts
    def load_usage(self, txn: lmdb.Transaction, cube: bytes) -> dict[int, bytes]:
        """The cube's stored use-count arrays by chunk (USAGE_CHUNK sequence numbers each)."""
        prefix = keys.usage_prefix(cube)
        out: dict[int, bytes] = {}
        cursor = txn.cursor(db=self._usage)
        if cursor.set_range(prefix):
            for key, raw in cursor:
                if not as_bytes(key).startswith(prefix):
                    break
                out[int.from_bytes(key[len(prefix) :], "big")] = as_bytes(raw)
        return out

    def put_usage(self, txn: lmdb.Transaction, cube: bytes, chunk: int, counts: np.ndarray) -> None:
        """Store the use counts of sequence numbers chunk * USAGE_CHUNK + i (``counts[i]``); the array holds every
        memory of that range that exists, or the record's count would be read for those it misses."""
        txn.put(keys.usage_key(cube, chunk), counts.astype(USAGE_DTYPE, copy=False).tobytes(), db=self._usage)

    # log history
    def append_log(self, txn: lmdb.Transaction, cube: bytes, log: EncodedLog, keep: int) -> None:
        """History holds the bytes the clients receive: a log item is serialized once, for both."""
        txn.put(keys.history_key(cube, log.sequence), log.data, db=self._history)
        if log.sequence > keep:
            txn.delete(keys.history_key(cube, log.sequence - keep), db=self._history)

    def page_in_history(self, txn: lmdb.Transaction, cube: bytes) -> None:
        """Read the cube's history keys once, when the cube loads. Every log item deletes the oldest entry
        (``append_log``), and a delete reads the entry's leaf page: after a restart those pages are on disk only, and
        a query's ~20 log items waited for ~4 random page reads inside its transaction (1.5 ms a query at 100 x 10k,
        bench.handler). Read here, they are in memory when the trimming reaches them."""
        prefix = keys.history_prefix(cube)
        cursor = txn.cursor(db=self._history)
        if cursor.set_range(prefix):
            for key in cursor.iternext(keys=True, values=False):
                if not as_bytes(key).startswith(prefix):
                    break

    def history(self, txn: lmdb.Transaction, cube: bytes, last: int) -> list[EncodedLog]:
        """The ``last`` most recent log items of the cube, oldest first."""
        if last <= 0:
            return []
        prefix = keys.history_prefix(cube)
        cursor = txn.cursor(db=self._history)
        out: list[bytes] = []
        if not cursor.set_range(prefix + b"\xff" * 8):
            if not cursor.last():
                return []
        elif not cursor.prev():
            return []
        while len(out) < last:
            key = as_bytes(cursor.key())
            if not key.startswith(prefix) or len(key) != len(prefix) + 8:
                break
            out.append(as_bytes(cursor.value()))
            if not cursor.prev():
                break
        return [_history_entry(raw) for raw in reversed(out)]

    # exactly-once markers, keyed by inbox sequence number
    def is_done(self, txn: lmdb.Transaction, seq: int) -> bool:
        return txn.get(keys.seq_key(seq), db=self._done) is not None

    def mark_done(self, txn: lmdb.Transaction, seq: int, item_id: str) -> None:
        txn.put(keys.seq_key(seq), item_id.encode(), db=self._done)

    def prune_done(self, txn: lmdb.Transaction, below: int) -> None:
        """Markers below the inbox's low-water mark guard nothing: their items left the inbox."""
        cursor = txn.cursor(db=self._done)
        if not cursor.first():
            return
        while int.from_bytes(cursor.key(), "big") < below:
            if not cursor.delete():
                break


def _count(counts: bytes | None, index: int, recorded: int) -> int:
    """A memory's use count from its chunk's array, or ``recorded`` (its record's) where the array does not reach."""
    size = USAGE_DTYPE.itemsize
    if counts is None or size * (index + 1) > len(counts):
        return recorded
    return int.from_bytes(counts[size * index : size * (index + 1)], "little")


def _history_entry(raw: bytes) -> EncodedLog:
    """Data dirs written before history held wire bytes hold LogItem JSON; a serialized ScheduleLogForWebItem
    never starts with "{" (0x7b would be field 15 starting a group, which proto3 has not)."""
    if raw[:1] == b"{":
        return EncodedLog.of(LogItem.model_validate_json(raw))
    return EncodedLog.from_bytes(raw)


def _values_with_prefix(txn: lmdb.Transaction, db: Any, prefix: bytes) -> Iterator[bytes]:
    """Values of the keys that start with ``prefix``, in key order."""
    cursor = txn.cursor(db=db)
    if not cursor.set_range(prefix):
        return
    for key, raw in cursor:
        if not as_bytes(key).startswith(prefix):
            break
        yield as_bytes(raw)
