"""Benchmark 1: ingest over one bidirectional Session stream, against the raw grpcio ceiling.

For 1, 100 and 1000 items per stream message: items acknowledged per second by memsched (an ack means the
item is committed to the LMDB inbox with fsync) and by bench/echo_server.py (same protos, same message
sizes and batching, same server options, no storage), each in a fresh server process, interleaved and
repeated; prints memsched / ceiling from the medians. The client sends pre-serialized requests with at most
``--window`` messages unacknowledged. Items are ``add`` messages of ~100-character chat turns spread over
16 cubes, so the workers really handle them while ingest runs (they share the 2 cores).

A third server per repeat runs with its workers stopped (SIGSTOP; the items wait in the inbox's backlog):
the ingest path alone (validate, commit with fsync, ack, queue for a worker), so the table separates what
accepting costs from what handling the items on the same cores costs. Each run also prints the bytes the
server and its workers wrote to disk per acknowledged item (``write_bytes`` of ``/proc/<pid>/io``, counted when
a page-cache folio is dirtied, so a large folio counts whole).

    python -m bench.ingest [--repeats 3] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from pathlib import Path

from bench.common import (
    Corpus,
    Echo,
    Memsched,
    MemschedConfig,
    StreamResult,
    aio_channel,
    drive,
    fmt_rate,
    header,
    item,
    median,
    requests,
)

CASES = {1: 12_000, 100: 150_000, 1000: 300_000}  # items per message -> items per run (scaled by --scale)
ECHO_CYCLES = {1: 1, 100: 4, 1000: 10}  # the echo is much faster: it sends the same requests this many times
TARGETS = {1: 0.8, 100: 0.5, 1000: 0.5}


def build(count: int, per_message: int, corpus: Corpus, label: str = "add", cubes: int = 16) -> list[bytes]:
    user = f"ingest-{uuid.uuid4().hex[:6]}"
    items = [item(user, f"cube-{i % cubes}", label, corpus.sentence()) for i in range(count)]
    return requests(items, per_message)


async def one_stream(address: str, payloads: list[bytes], per_message: int, count: int, window: int) -> StreamResult:
    async with aio_channel(address) as channel:
        await channel.channel_ready()
        return await drive(channel, payloads, per_message, count, window, timeout=180)


def run_case(
    server: Memsched | Echo, payloads: list[bytes], per_message: int, count: int, window: int, name: str
) -> float:
    cpu0, t0 = server.cpu(), time.perf_counter()
    disk0 = server.disk_written()
    result = asyncio.run(one_stream(server.address, payloads, per_message, count, window))
    disk1 = server.disk_written()
    disk = [(after - before) / max(result.acked, 1) / 1000 for before, after in zip(disk0, disk1, strict=True)]
    if result.acked + result.rejected < count:
        print(f"  ! only {result.acked} of {count} items acknowledged before the timeout")
    if result.rejected:
        print(f"  ! {result.rejected} items rejected")
    busy = (server.cpu() - cpu0) / (time.perf_counter() - t0)
    print(
        f"  {name:8s} {per_message:5d}/msg: {fmt_rate(result.ack_rate):>9s} items/s "
        f"({result.acked} acks in {result.last_ack - result.started:.2f} s; server CPU {busy:.2f} cores; "
        f"written to disk per ack: server {disk[0]:.1f} KB, workers {disk[1]:.1f} KB)"
    )
    return result.ack_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the item counts")
    parser.add_argument("--window", type=int, default=64, help="messages in flight before waiting for acks")
    parser.add_argument("--batches", type=int, nargs="*", default=list(CASES))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--label", default="add", help="label of the items (mem_read: a handler that only logs)")
    parser.add_argument("--baseline", type=Path, help="also run this checkout (a git worktree) for before/after")
    args = parser.parse_args()
    header("ingest over one Session stream: memsched vs raw grpcio echo")
    corpus = Corpus()
    summary = []
    for per_message in args.batches:
        count = int(CASES.get(per_message, 100_000) * args.scale)
        payloads = build(count, per_message, corpus, args.label)
        mem_rates, echo_rates, base_rates, accept_rates = [], [], [], []
        for _ in range(args.repeats):
            echo = Echo()
            cycles = ECHO_CYCLES.get(per_message, 1)
            try:
                echo_rates.append(run_case(echo, payloads * cycles, per_message, count * cycles, args.window, "echo"))
            finally:
                echo.stop()
            if args.baseline:
                base = Memsched(MemschedConfig(workers=args.workers), root=args.baseline)
                try:
                    base_rates.append(run_case(base, payloads, per_message, count, args.window, "baseline"))
                finally:
                    base.stop()
            mem = Memsched(MemschedConfig(workers=args.workers))
            try:
                mem_rates.append(run_case(mem, payloads, per_message, count, args.window, "memsched"))
            finally:
                mem.stop()
            accept = Memsched(MemschedConfig(workers=args.workers))
            try:
                accept.pause_workers()
                accept_rates.append(run_case(accept, payloads, per_message, count, args.window, "paused"))
            finally:
                accept.stop()
        echo_rate = median(echo_rates)
        summary.append((per_message, median(mem_rates), echo_rate, median(accept_rates), median(base_rates or [0.0])))
    print()
    base = " baseline items/s | memsched/baseline |" if args.baseline else ""
    print(
        "| items/message | memsched items/s | ceiling items/s | memsched/ceiling | target "
        f"| workers paused items/s | paused/ceiling |{base}"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: | ---: |" if args.baseline else ""))
    for per_message, mem_rate, echo_rate, accept_rate, base_rate in summary:
        target = TARGETS.get(per_message, 0.5)
        ratio = mem_rate / echo_rate
        mark = "met" if ratio >= target else "MISSED"
        extra = f" {fmt_rate(base_rate)} | {mem_rate / base_rate:.2f} |" if args.baseline else ""
        cells = f"{fmt_rate(mem_rate)} | {fmt_rate(echo_rate)} | {ratio:.2f} | >= {target} {mark}"
        print(f"| {per_message} | {cells} | {fmt_rate(accept_rate)} | {accept_rate / echo_rate:.2f} |{extra}")


if __name__ == "__main__":
    main()
