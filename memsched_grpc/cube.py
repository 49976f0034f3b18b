"""One cube as a worker holds it: state and retrieval index in memory, every change written through to
LMDB in the transaction of the message being handled.

A worker is the only writer of its cubes (cube -> shard -> worker is fixed while it runs), so the
in-memory copy stays exact; when a transaction is rolled back the worker drops the copy and reloads it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import lmdb
import numpy as np

from memsched.v1 import items_pb2
from memsched_grpc import convert, snapshot
from memsched_grpc.encoded_log import EncodedLog
from memsched_grpc.models import (
    CubeState,
    LogEntry,
    MemoryCapacities,
    MemoryItem,
    MemoryType,
    Message,
    TaskState,
    WorkingEntry,
    size_fields,
    utcnow,
)
from memsched_grpc.retrieval.components import components
from memsched_grpc.retrieval.retriever import Retriever
from memsched_grpc.retrieval.settings import RetrievalConfig
from memsched_grpc.retrieval.tokenizer import tokenize
from memsched_grpc.store import keys
from memsched_grpc.store.cubes import USAGE_CHUNK, USAGE_DTYPE, CubeTables, stored_count
from memsched_grpc.term_index import TermIndex

STORED_TYPES = (MemoryType.LONG_TERM, MemoryType.USER)
_SPACES = re.compile(r"\s+")


@lru_cache(maxsize=16)
def text_fingerprint(text: str) -> bytes:
    """Identity of a memory text for exact-duplicate detection: case and whitespace do not count. Cached, because
    an add asks for its text's fingerprint twice (the duplicate check, then storing it); only a few entries,
    because a text may be as large as limits.max_content_bytes."""
    return hashlib.blake2b(_SPACES.sub(" ", text.strip().lower()).encode(), digest_size=12).digest()


def _valid_snapshot(
    tables: CubeTables, txn: lmdb.Transaction, key: bytes, state: CubeState
) -> snapshot.CubeSnapshot | None:
    raw = tables.get_snapshot(txn, key)
    return None if raw is None else snapshot.decode(raw, state.long_term_size + state.user_size)


@dataclass(slots=True)
class Entry:
    """What the worker keeps in memory per stored memory; the full item stays in LMDB."""

    memory_type: MemoryType
    fingerprint: bytes
    usage_count: int
    updated_at: float
    tokens: tuple[str, ...]
    sequence: int


class Cube:
    def __init__(self, tables: CubeTables, state: CubeState, capacities: MemoryCapacities, history_keep: int) -> None:
        self.tables = tables
        self.key = keys.cube_key(state.user_id, state.mem_cube_id)
        self.state = state
        self.capacities = capacities
        self._capacities_proto = convert.capacities_to_proto(capacities)
        self._frame: tuple[tuple[str, tuple[int, ...]], items_pb2.ScheduleLogForWebItem] | None = None
        self.history_keep = history_keep
        self.terms = TermIndex()
        self.entries: dict[str, Entry] = {}
        self.by_fingerprint: dict[bytes, str] = {}
        self.txn: lmdb.Transaction | None = None
        self.last_sequence = 0
        self._retriever: Retriever | None = None
        self._usage: dict[int, np.ndarray] = {}
        """Use counts by sequence number, a copy of the usage table's arrays (see store/cubes.py)."""
        self._usage_changed: set[int] = set()
        self._unwritten_logs: list[EncodedLog] = []
        """This message's log items, for write_history."""
        self._saved_retriever: tuple[str, dict[str, Any]] | None = None
        """The retriever of the snapshot the cube was loaded from (its config as JSON, its state), until retriever()
        restores it or, for another config, builds one from the records."""
        self.saved = False
        """A snapshot of the cube as it is now is stored: it was loaded from one, or one was written since, and its
        memories have not changed since (see memsched_grpc/snapshot.py)."""
        self._loaded: list[MemoryItem] | None = None
        """The memories as load() read them, while they are current and the message that loaded the cube runs: a
        cube's first query builds its retriever from them instead of reading and parsing every record again (0.13 s
        of a 10k cube's ~1.3 s first query after a restart)."""

    @classmethod
    def load(
        cls,
        tables: CubeTables,
        txn: lmdb.Transaction,
        user_id: str,
        mem_cube_id: str,
        capacities: MemoryCapacities,
        history_keep: int,
    ) -> Cube:
        """The cube as stored: from its snapshot when it has a valid one, else built from its memory records."""
        key = keys.cube_key(user_id, mem_cube_id)
        state = tables.load_state(txn, key) or CubeState(user_id=user_id, mem_cube_id=mem_cube_id)
        return cls._load(tables, txn, key, state, _valid_snapshot(tables, txn, key, state), capacities, history_keep)

    @classmethod
    def preload(
        cls, tables: CubeTables, txn: lmdb.Transaction, key: bytes, capacities: MemoryCapacities, history_keep: int
    ) -> Cube | None:
        """The cube stored under ``key`` as load() gives it, if it has a valid snapshot; None otherwise (its memory
        records are not read)."""
        state = tables.load_state(txn, key)
        saved = None if state is None else _valid_snapshot(tables, txn, key, state)
        if state is None or saved is None:
            return None
        return cls._load(tables, txn, key, state, saved, capacities, history_keep)

    @classmethod
    def _load(
        cls,
        tables: CubeTables,
        txn: lmdb.Transaction,
        key: bytes,
        state: CubeState,
        saved: snapshot.CubeSnapshot | None,
        capacities: MemoryCapacities,
        history_keep: int,
    ) -> Cube:
        cube = cls(tables, state, capacities, history_keep)
        stored = tables.load_usage(txn, key)
        tables.page_in_history(key)
        if saved is not None:
            cube._restore(saved, stored)
        else:
            items = [item for t in STORED_TYPES for item in tables.iter_memories(txn, key, t, stored)]
            for item in items:
                cube._remember(item)
            cube._loaded = items
        cube._usage = {chunk: np.frombuffer(raw, USAGE_DTYPE).copy() for chunk, raw in stored.items()}
        for entry in cube.entries.values():  # counts still in records join their array at its next write
            if entry.sequence:
                cube._set_usage(entry.sequence, entry.usage_count, changed=False)
        return cube

    def _restore(self, saved: snapshot.CubeSnapshot, stored: dict[int, bytes]) -> None:
        """Take the entries and indexes from a snapshot instead of building them from the records; use counts
        come from the usage arrays, as iter_memories gives them to a load from the records."""
        self.entries = saved.entries
        self.terms = saved.terms
        self.by_fingerprint = saved.by_fingerprint
        self.last_sequence = saved.last_sequence
        self._saved_retriever = saved.retriever
        for entry in self.entries.values():
            if entry.sequence:
                entry.usage_count = stored_count(stored, entry.sequence, entry.usage_count)
        self.saved = True

    def _memories_changed(self) -> None:
        """What was read or saved of the memories is stale now: the load's records, the stored snapshot and a saved
        retriever state not restored yet (retriever() builds from the records instead, and the next snapshot holds
        none)."""
        self._loaded = None
        self.saved = False
        self._saved_retriever = None

    def snapshot(self) -> bytes:
        """The cube's entries and indexes as a snapshot (memsched_grpc/snapshot.py), for the next load."""
        retriever = self._retriever
        state = self._saved_retriever
        if retriever is not None:
            state = (retriever.config.model_dump_json(), retriever.export_state())
        return snapshot.encode(
            snapshot.CubeSnapshot(self.entries, self.terms, self.by_fingerprint, self.last_sequence, state)
        )

    # reading
    def _tx(self) -> lmdb.Transaction:
        if self.txn is None:
            raise RuntimeError("cube used outside a transaction")
        return self.txn

    def get(self, memory_id: str) -> MemoryItem | None:
        entry = self.entries.get(memory_id)
        if entry is None:
            return None
        item = self.tables.memory_record(self._tx(), self.key, entry.memory_type, memory_id)
        if item is not None:
            item.usage_count = entry.usage_count
        return item

    def find_exact(self, text: str) -> str | None:
        return self.by_fingerprint.get(text_fingerprint(text))

    def tokens(self, memory_id: str) -> tuple[str, ...]:
        entry = self.entries.get(memory_id)
        return entry.tokens if entry else ()

    def retriever(self, config: RetrievalConfig) -> Retriever:
        """The cube's query-time index, built on first use from the stored memories.

        Built lazily because it depends on the retrieval configuration, which handlers carry and the worker's
        cube cache does not; from then on every put and archive keeps it current.
        """
        if self._retriever is None or (self._retriever.config is not config and self._retriever.config != config):
            saved, self._saved_retriever = self._saved_retriever, None
            if saved is not None and saved[0] == config.model_dump_json():
                self._retriever = Retriever.restore(config, components(config).embedder, saved[1])
                return self._retriever
            retriever = Retriever(config, components(config).embedder)
            items = self._loaded
            self._loaded = None
            if items is None:
                txn = self._tx()
                usage = self.tables.load_usage(txn, self.key)
                items = [item for t in STORED_TYPES for item in self.tables.iter_memories(txn, self.key, t, usage)]
            items.sort(key=lambda i: (i.sequence, i.created_at, i.id))
            entries = self.entries
            retriever.add_many(items, [entries[i.id].tokens if i.id in entries else None for i in items])
            self._retriever = retriever
        return self._retriever

    @property
    def unprojected(self) -> bool:
        """The retriever may hold memories not yet placed in its latent space (see Retriever.project_pending)."""
        return self._retriever is not None and self._retriever.unprojected

    def project_pending(self, limit: int) -> int:
        """Place up to ``limit`` memories in the retriever's latent space ahead of the queries that would (0 when
        there is no retriever yet or nothing is left): see Retriever.project_pending."""
        return self._retriever.project_pending(limit) if self._retriever is not None else 0

    @property
    def next_sequence(self) -> int:
        """The insertion sequence number put() gives the next new memory."""
        return self.last_sequence + 1

    def size(self, memory_type: MemoryType) -> int:
        return self.state.user_size if memory_type == MemoryType.USER else self.state.long_term_size

    def capacity(self, memory_type: MemoryType) -> int:
        caps = self.capacities
        return caps.user_memory_capacity if memory_type == MemoryType.USER else caps.long_term_memory_capacity

    # writing
    def put(self, item: MemoryItem, tokens: list[str] | None = None) -> MemoryItem:
        """Store a new or changed memory (its type must not change); returns it as stored (a new memory gets the
        next insertion sequence number). ``tokens``: the text's tokens when the caller has them already."""
        if item.memory_type not in STORED_TYPES:
            raise ValueError(f"memories are stored in LongTermMemory or UserMemory, not {item.memory_type}")
        old = self.entries.get(item.id)
        if old is None:
            self._resize(item.memory_type, +1)
            if item.sequence < self.next_sequence:
                item = item.model_copy(update={"sequence": self.next_sequence})
            self._clear_usage(item.sequence, item.usage_count)
        elif old.memory_type != item.memory_type:
            raise ValueError(f"memory {item.id} is in {old.memory_type}, not {item.memory_type}")
        else:
            self.by_fingerprint.pop(old.fingerprint, None)
        self.tables.put_memory(self._tx(), self.key, item)
        self._remember(item, tokens)
        return item

    def record_use(self, memory_id: str) -> MemoryItem | None:
        """Count one more use of a memory (a query brought it into working memory, an answer drew on it); returns
        it as stored, None when it is gone. Only the count changes, so nothing is re-indexed: on a query that
        brings in 20 newcomers this is most of what writing them back costs."""
        item = self.get(memory_id)
        if item is None:
            return None
        self._loaded = None
        entry = self.entries[memory_id]
        entry.usage_count = item.usage_count = entry.usage_count + 1
        if entry.sequence:
            self._set_usage(entry.sequence, entry.usage_count)  # written by save(), once per chunk and message
        else:
            self.saved = False
            self.tables.put_memory(self._tx(), self.key, item)  # stored before sequence numbers: counted in its record
        return item

    def _set_usage(self, sequence: int, count: int, changed: bool = True) -> None:
        chunk, index = divmod(sequence, USAGE_CHUNK)
        counts = self._usage.get(chunk)
        if counts is None or index >= len(counts):
            grown = np.zeros(index + 1, USAGE_DTYPE)
            if counts is not None:
                grown[: len(counts)] = counts
            counts = self._usage[chunk] = grown
        counts[index] = count
        if changed:
            self._usage_changed.add(chunk)

    def _clear_usage(self, sequence: int, count: int) -> None:
        """A new memory may take the sequence number of an archived one (the numbers continue from the highest live
        one after a reload); the count stored for that one must not become the new memory's."""
        chunk, index = divmod(sequence, USAGE_CHUNK)
        counts = self._usage.get(chunk)
        if counts is not None and index < len(counts) and counts[index] != count:
            self._set_usage(sequence, count)

    def archive(self, memory_id: str) -> MemoryItem | None:
        """Move a memory out of its partition into the archive (still readable there)."""
        item = self.get(memory_id)
        if item is None:
            return None
        self._memories_changed()
        entry = self.entries.pop(memory_id)
        self.by_fingerprint.pop(entry.fingerprint, None)
        self.terms.remove(memory_id, entry.tokens)
        if self._retriever is not None:
            self._retriever.remove(memory_id)
        txn = self._tx()
        self.tables.delete_memory(txn, self.key, item.memory_type, memory_id)
        self.tables.archive_memory(txn, self.key, item)
        self._resize(item.memory_type, -1)
        self.state.archived_size += 1
        self.state.working = [w for w in self.state.working if w.id != memory_id]
        return item

    def set_working(self, working: list[WorkingEntry]) -> None:
        self.state.working = working

    def save(self) -> None:
        """Write the state, and the use-count arrays the message changed."""
        txn = self._tx()
        self.tables.save_state(txn, self.key, self.state)
        for chunk in self._usage_changed:
            self.tables.put_usage(txn, self.key, chunk, self._usage[chunk])
        self._usage_changed.clear()

    def log(
        self,
        message: Message,
        label: str,
        from_type: MemoryType,
        to_type: MemoryType,
        content: str,
        memories: list[MemoryItem] | None = None,
        entries: list[LogEntry] | None = None,
        memories_as: MemoryType | None = None,
    ) -> EncodedLog:
        """Record a log item for the cube's history (stored by write_history); sizes are taken after the change. It
        is encoded here, once: the history keeps the bytes that go to the clients. ``memories_as``: the partition
        the memories are shown in when it is not the one they are stored in."""
        seq = self.state.next_log_seq
        self.state.next_log_seq = seq + 1
        proto = items_pb2.ScheduleLogForWebItem()
        proto.CopyFrom(self._log_frame(message))
        convert.fill_log(
            proto,
            item_id=f"{message.item_id}/{seq}",
            label=label,
            from_memory_type=from_type,
            to_memory_type=to_type,
            log_content=content,
            timestamp=utcnow(),
            memory_len=len(memories or ()) or len(entries or ()),
            memcube_log_content=entries or (),
            metadata=memories or (),
            sequence=seq,
            metadata_type=memories_as,
        )
        encoded = EncodedLog(message.user_id, message.mem_cube_id, label, seq, proto.SerializeToString())
        self._unwritten_logs.append(encoded)
        return encoded

    def message_done(self) -> None:
        """The message's handler returned: its log items go to the history (write_history), and the records the
        cube's load read are no longer kept (a cube whose first messages build no retriever would otherwise hold a
        second copy of its memories)."""
        self.write_history()
        self._loaded = None

    def write_history(self) -> None:
        """Store the log items logged since the last call in the history, as one entry (see
        CubeTables.append_logs), once a message's handler has returned (message_done)."""
        if self._unwritten_logs:
            self.tables.append_logs(self._tx(), self.key, self._unwritten_logs, self.history_keep)
            self._unwritten_logs = []

    def _log_frame(self, message: Message) -> items_pb2.ScheduleLogForWebItem:
        """What the message's log items share (convert.log_frame), built again for another message or when the
        cube's sizes changed: a query's ~20 newcomers share one frame."""
        state = self.state
        key = (message.item_id, tuple(size_fields(state).values()))
        cached = self._frame
        if cached is None or cached[0] != key:
            frame = convert.log_frame(
                user_id=message.user_id,
                mem_cube_id=message.mem_cube_id,
                task_id=message.task_id,
                status=TaskState.COMPLETED,
                memcube_name=message.mem_cube or message.mem_cube_id,
                source_item_id=message.item_id,
                current_memory_sizes=convert.state_sizes_to_proto(state),
                memory_capacities=self._capacities_proto,
            )
            cached = self._frame = (key, frame)
        return cached[1]

    def _remember(self, item: MemoryItem, known_tokens: list[str] | None = None) -> None:
        self._memories_changed()
        fingerprint = text_fingerprint(item.memory)
        old = self.entries.get(item.id)
        same_text = old is not None and old.fingerprint == fingerprint  # a usage count or metadata changed
        if old is not None and same_text:
            tokens = old.tokens
        else:
            tokens = tuple(tokenize(item.memory) if known_tokens is None else known_tokens)
        self.entries[item.id] = Entry(
            item.memory_type, fingerprint, item.usage_count, item.updated_at.timestamp(), tokens, item.sequence
        )
        self.by_fingerprint[fingerprint] = item.id
        if not same_text:
            if old is not None:
                self.terms.remove(item.id, old.tokens)
            self.terms.add(item.id, tokens)
        self.last_sequence = max(self.last_sequence, item.sequence)
        if self._retriever is not None:
            self._retriever.add(item, tokens)

    def _resize(self, memory_type: MemoryType, delta: int) -> None:
        if memory_type == MemoryType.USER:
            self.state.user_size += delta
        else:
            self.state.long_term_size += delta
