"""Per-item costs of the ingest path's pieces, in-process, one request of 1000 items: what a memsched item
costs in the server process beside what the raw echo spends on it. The budget that bench/RESULTS.md
reasons with ("where the gap to the ceiling goes") comes from here.

    python -m bench.micro
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from bench.common import Corpus, header, item
from memsched.v1 import items_pb2, scheduler_pb2
from memsched_grpc import convert
from memsched_grpc.config import load_settings
from memsched_grpc.encoded_log import EncodedLog
from memsched_grpc.handlers import registered_labels
from memsched_grpc.inbox import Inbox, Incoming, Record
from memsched_grpc.models import LogItem, MemoryCapacities, MemoryItem, MemorySizes, MemoryType, TaskState
from memsched_grpc.scheduler import MemScheduler
from memsched_grpc.servicer import _session_response
from memsched_grpc.session import Ack, Session
from memsched_grpc.validation import ItemValidator

N_ITEMS = 1000
REPEATS = 30


def per_item(name: str, fn: Callable[[], object], items: int = N_ITEMS, note: str = "") -> float:
    fn()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(REPEATS):
            fn()
        best = min(best, (time.perf_counter() - t0) / REPEATS / items * 1e6)
    print(f"| {name} | {best:.2f} | {note} |")
    return best


def main() -> None:
    header("per-item costs of the ingest path (best of 5, 1000-item requests)")
    corpus = Corpus()
    work = Path(tempfile.mkdtemp(prefix="memsched-micro-"))
    try:
        settings = load_settings(storage={"data_dir": str(work / "data")})
        request = scheduler_pb2.SessionRequest(
            items=[item("u1", f"c{i % 16}", "add", corpus.sentence()) for i in range(N_ITEMS)]
        )
        raw = request.SerializeToString()
        print("| step | µs per item | note |")
        print("| --- | ---: | --- |")

        def echo() -> bytes:
            req = scheduler_pb2.SessionRequest.FromString(raw)
            response = scheduler_pb2.SessionResponse()
            for it in req.items:
                response.acks.add(item_id=it.item_id)
            return response.SerializeToString()

        per_item("echo: parse request, ack every item, serialize", echo, note="the ceiling's own per-item work")
        validator = ItemValidator(settings.limits, registered_labels({}))
        parsed = scheduler_pb2.SessionRequest.FromString(raw)
        per_item("validate", lambda: [validator.check(x, i) for i, x in enumerate(parsed.items)])
        now = divmod(time.time_ns(), 1_000_000_000)
        per_item(
            "prepare (timestamp, encode for the inbox)",
            lambda: [MemScheduler._prepare(None, x, now) for x in parsed.items],  # type: ignore[arg-type]
        )
        inbox = Inbox(settings.storage)
        batches = [
            [Incoming(uuid.uuid4().hex, "u1", f"c{i % 16}", "add", "", b"x" * 150) for i in range(N_ITEMS)]
            for _ in range(5 * REPEATS + 1)
        ]
        it = iter(batches)
        accepted: list[list[Record]] = []

        def accept() -> None:
            accepted.append([r for r in inbox.accept(next(it)) if r is not None])

        per_item("inbox accept (one fsync'd transaction)", accept, note="fresh ids each time")
        finishing = iter(accepted)
        per_item(
            "inbox finish (one fsync'd transaction)",
            lambda: inbox.finish([(r, TaskState.COMPLETED) for r in next(finishing)]),
            note="final status, off the pending table",
        )
        inbox.close()
        ids = [x.item_id for x in parsed.items]

        def acks() -> bytes:
            session = Session()
            session.emit([Ack(i) for i in ids])
            events = session.next_events(0.1) or []
            return _session_response(events).SerializeToString()

        per_item("acks: emit, drain, build and serialize the response", acks)
        memory = MemoryItem(id="m-0", memory=corpus.sentence(), key="k", tags=["a", "b", "c", "d", "e"])
        log = LogItem(
            item_id="x/1",
            user_id="u1",
            mem_cube_id="c1",
            label="addMemory",
            from_memory_type=MemoryType.USER_INPUT,
            to_memory_type=MemoryType.LONG_TERM,
            log_content=f"[LongTermMemory] k: {memory.memory}",
            current_memory_sizes=MemorySizes(),
            memory_capacities=MemoryCapacities(),
            metadata=[memory],
            source_item_id="x",
            sequence=1,
        )
        as_json = log.model_dump_json().encode()
        as_proto = convert.log_to_proto(log).SerializeToString()
        print("| **a log item (one per add)** | | |")
        fields = dict(log)
        parts = {
            **fields,
            "current_memory_sizes": convert.sizes_to_proto(log.current_memory_sizes),
            "memory_capacities": convert.capacities_to_proto(log.memory_capacities),
        }
        per_item(
            "worker: its protobuf bytes from the parts (convert.log_proto)",
            lambda: convert.log_proto(**parts).SerializeToString(),
            items=1,
            note="since d765d14",
        )
        per_item(
            "before d765d14, worker: build the LogItem, then its bytes (EncodedLog.of)",
            lambda: EncodedLog.of(LogItem(**fields)),
            items=1,
        )
        target = scheduler_pb2.SessionResponse()
        per_item(
            "server: the bytes into the response",
            lambda: target.logs.add().MergeFromString(as_proto),
            items=1,
            note="all the server does per log item since commit e3d1696",
        )
        per_item("before e3d1696, server: JSON to LogItem", lambda: LogItem.model_validate_json(as_json), items=1)
        per_item("before e3d1696, server: LogItem to protobuf", lambda: convert.log_to_proto(log), items=1)
        del target.logs[:]
        per_item("parse a ScheduleLogForWebItem", lambda: items_pb2.ScheduleLogForWebItem.FromString(as_proto), items=1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
