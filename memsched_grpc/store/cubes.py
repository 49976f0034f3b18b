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

import hashlib
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

from memsched_grpc.encoded_log import EncodedLog
from memsched_grpc.models import CubeState, LogItem, MemoryItem, MemoryType
from memsched_grpc.store import keys
from memsched_grpc.store.environment import Environment, as_bytes

DB_NAMES = ("memory", "cube", "history", "archive", "done", "usage", "snapshot")
USAGE_CHUNK = 16_384
"""Use counts per stored array: a 10k-memory cube's counts are one contiguous 40 KB value."""
USAGE_DTYPE = np.dtype("<u4")
_LOG_BATCH = b"\x00"
"""First byte of a history entry of several log items. A serialized ScheduleLogForWebItem never starts with 0 (field
number 0 does not exist), nor does LogItem JSON (written by earlier versions, "{")."""
_LOG_LENGTH = struct.Struct(">I")


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
        self._snapshot = env.dbs["snapshot"]

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
        self.drop_snapshot(txn, cube)

    def delete_memory(self, txn: lmdb.Transaction, cube: bytes, memory_type: MemoryType, memory_id: str) -> None:
        txn.delete(keys.memory_key(cube, memory_type, memory_id), db=self._memory)
        self.drop_snapshot(txn, cube)

    def iter_memories(
        self, txn: lmdb.Transaction, cube: bytes, memory_type: MemoryType, usage: dict[int, bytes] | None = None
    ) -> Iterator[MemoryItem]:
        """The partition's memories in id order, with their use counts (``usage``: the cube's arrays, when the
        caller has read them already)."""
        usage = self.load_usage(txn, cube) if usage is None else usage
        for raw in _values_with_prefix(txn, self._memory, keys.memory_prefix(cube, memory_type)):
            item = MemoryItem.model_validate_json(raw)
            if item.sequence:
                item.usage_count = stored_count(usage, item.sequence, item.usage_count)
            yield item

    def archive_memory(self, txn: lmdb.Transaction, cube: bytes, item: MemoryItem) -> None:
        """Evicted memories stay retrievable here, keyed like live ones."""
        txn.put(keys.memory_key(cube, item.memory_type, item.id), item.model_dump_json().encode(), db=self._archive)
        self.drop_snapshot(txn, cube)

    def iter_archive(self, txn: lmdb.Transaction, cube: bytes, memory_type: MemoryType) -> Iterator[MemoryItem]:
        for raw in _values_with_prefix(txn, self._archive, keys.memory_prefix(cube, memory_type)):
            yield MemoryItem.model_validate_json(raw)

    # snapshots of a loaded cube's indexes (memsched_grpc/snapshot.py)
    def get_snapshot(self, txn: lmdb.Transaction, cube: bytes) -> bytes | None:
        """The cube's snapshot, if one is stored and no write of its memories came after it.

        A snapshot is a file of its own (megabytes: LMDB's map, opened for random reads, faults a large value in a
        page at a time, 0.27 s for 15 MB against 0.02 s for a plain read); the table holds a random token per cube,
        which the file starts with. Writing the file, then the token, and deleting the token with every write of
        the cube's memories (put_memory, delete_memory, archive_memory, in their transaction) means a file counts
        only while no such write was committed after it, crash or not."""
        token = txn.get(cube, db=self._snapshot)
        if token is None:
            return None
        try:
            data = self._snapshot_path(cube).read_bytes()
        except OSError:
            return None
        return data[len(token) :] if data.startswith(as_bytes(token)) else None

    def snapshot_keys(self) -> list[bytes]:
        """The cubes with a stored snapshot (valid or not: get_snapshot and snapshot.decode tell)."""
        with self.env.env.begin() as txn:
            return [as_bytes(key) for key in txn.cursor(db=self._snapshot).iternext(values=False)]

    def remove_stale_snapshots(self, keys: list[bytes]) -> int:
        """Delete the snapshot files that no token names (``keys``: snapshot_keys(); their cube was written since, or
        the stop that wrote them was cut short before the token) and leftovers of interrupted writes; returns how
        many. Only the shard's worker may call it: it writes the files, and between a file and its token the file has
        none."""
        directory = self.env.path / "snapshots"
        if not directory.is_dir():
            return 0
        live = {self._snapshot_path(key).name for key in keys}
        removed = 0
        for path in directory.iterdir():
            if path.name not in live:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def put_snapshot(self, cube: bytes, data: bytes) -> None:
        """Store ``data`` as the cube's snapshot: the file first (written aside, synced, renamed over the last one),
        then its token, in a transaction of its own."""
        token = os.urandom(16)
        path = self._snapshot_path(cube)
        path.parent.mkdir(exist_ok=True)
        aside = path.with_suffix(".tmp")
        with open(aside, "wb") as f:
            f.write(token)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(aside, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

        def put(txn: lmdb.Transaction) -> None:
            txn.put(cube, token, db=self._snapshot)

        self.env.write(put)

    def drop_snapshot(self, txn: lmdb.Transaction, cube: bytes) -> None:
        """Called by every write of the cube's memories, in its transaction: a snapshot holds the memories as they
        were when it was written, and must not outlive a change to them (its file stays until the next one
        replaces it, and counts for nothing meanwhile)."""
        txn.delete(cube, db=self._snapshot)

    def _snapshot_path(self, cube: bytes) -> Path:
        return self.env.path / "snapshots" / f"{hashlib.blake2b(cube, digest_size=16).hexdigest()}.snap"

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
    def append_logs(self, txn: lmdb.Transaction, cube: bytes, logs: list[EncodedLog], keep: int) -> None:
        """Store one message's log items (consecutive sequence numbers) as one history entry, keyed by the first
        one's number, and delete the entries whose items are all older than the last ``keep``.

        History holds the bytes the clients receive: a log item is serialized once, for both. One entry per
        message, not per item: a query's ~20 items as ~20 entries dirtied ~10 leaf and branch pages of the history
        table per commit, each one more random write the commit's fsync waits for (~55 µs each on this machine's
        disk); one entry of several items is a run of consecutive overflow pages, one write. An entry's items
        end where the next entry's begin, so trimming reads keys only, and the history holds at least ``keep``
        items."""
        if not logs:
            return
        if len(logs) == 1:
            value = logs[0].data  # as every entry was before entries of several items existed
        else:
            value = _LOG_BATCH + b"".join(_LOG_LENGTH.pack(len(log.data)) + log.data for log in logs)
        txn.put(keys.history_key(cube, logs[0].sequence), value, db=self._history)
        self._trim_history(txn, cube, logs[-1].sequence - keep)

    def _trim_history(self, txn: lmdb.Transaction, cube: bytes, last_dropped: int) -> None:
        """Delete the cube's oldest entries while every item of theirs has a sequence number <= ``last_dropped``."""
        if last_dropped <= 0:
            return
        prefix = keys.history_prefix(cube)
        cursor = txn.cursor(db=self._history)
        if not cursor.set_range(prefix):
            return
        doomed: list[bytes] = []
        key = as_bytes(cursor.key())
        while _is_history_key(key, prefix) and cursor.next():
            following = as_bytes(cursor.key())
            if not _is_history_key(following, prefix) or _history_seq(following) - 1 > last_dropped:
                break
            doomed.append(key)
            key = following
        for key in doomed:
            txn.delete(key, db=self._history)

    def page_in_history(self, cube: bytes) -> None:
        """Read the pages the cube's history trimming will read, once, when the cube loads: after a restart they
        are on disk only, and a query waited for each inside its transaction (~4 random page reads a query, 1.5 ms
        at 100 x 10k, bench.handler, when every item had an entry).

        Deleting an entry reads its leaf page and, for an entry of several items, the first page of its value
        (where LMDB notes how many pages the value spans). Through a read-only view a value's first byte touches
        only that page; copying the values would read the whole history. The view is a transaction of its own
        beside the caller's write transaction (py-lmdb opens environments with MDB_NOTLS), and sees the last commit."""
        prefix = keys.history_prefix(cube)
        with self.env.env.begin(buffers=True) as view:
            cursor = view.cursor(db=self._history)
            if cursor.set_range(prefix):
                for key, value in cursor:
                    if not _is_history_key(bytes(key), prefix):
                        break
                    if len(value):
                        _ = value[0]  # the read is the point

    def history(self, txn: lmdb.Transaction, cube: bytes, last: int) -> list[EncodedLog]:
        """The ``last`` most recent log items of the cube, oldest first."""
        if last <= 0:
            return []
        prefix = keys.history_prefix(cube)
        cursor = txn.cursor(db=self._history)
        entries: list[list[bytes]] = []
        if not cursor.set_range(prefix + b"\xff" * 8):
            if not cursor.last():
                return []
        elif not cursor.prev():
            return []
        found = 0
        while found < last:
            key = as_bytes(cursor.key())
            if not _is_history_key(key, prefix):
                break
            entries.append(_history_items(as_bytes(cursor.value())))
            found += len(entries[-1])
            if not cursor.prev():
                break
        items = [item for entry in reversed(entries) for item in entry]
        return [_history_entry(raw) for raw in items[-last:]]

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


def stored_count(usage: dict[int, bytes], sequence: int, recorded: int) -> int:
    """The use count of memory ``sequence`` in a cube's arrays (load_usage), or ``recorded`` where they do not reach."""
    chunk, index = divmod(sequence, USAGE_CHUNK)
    return _count(usage.get(chunk), index, recorded)


def _count(counts: bytes | None, index: int, recorded: int) -> int:
    """A memory's use count from its chunk's array, or ``recorded`` (its record's) where the array does not reach."""
    size = USAGE_DTYPE.itemsize
    if counts is None or size * (index + 1) > len(counts):
        return recorded
    return int.from_bytes(counts[size * index : size * (index + 1)], "little")


def _is_history_key(key: bytes, prefix: bytes) -> bool:
    return len(key) == len(prefix) + 8 and key.startswith(prefix)


def _history_seq(key: bytes) -> int:
    return int.from_bytes(key[-8:], "big")


def _history_items(raw: bytes) -> list[bytes]:
    """The log items of one history entry: several after ``_LOG_BATCH``, each behind its length, or one."""
    if raw[:1] != _LOG_BATCH:
        return [raw]
    items, offset = [], 1
    while offset < len(raw):
        (length,) = _LOG_LENGTH.unpack_from(raw, offset)
        offset += _LOG_LENGTH.size
        items.append(raw[offset : offset + length])
        offset += length
    return items


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
