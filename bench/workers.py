"""Benchmark 5: end-to-end throughput (items handled per second, to their completion events) with 1 and 2
worker processes, and where the CPU goes: CPU seconds per item in the server process (one GIL: the serial
part) and in the workers (the part that scales with workers). The workload is chat turns of 64 cubes: for
each turn an ``add`` of the user's message, a ``query`` and an ``answer``, 100 items per stream message.
The 16-core projection in bench/RESULTS.md is computed from these per-item CPU costs.

    python -m bench.workers [--workers 1 2] [--turns 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bench.common import (
    Corpus,
    Memsched,
    MemschedConfig,
    aio_channel,
    cpu_seconds,
    drive,
    fmt_rate,
    header,
    item,
    requests,
)


def build(turns: int, corpus: Corpus, cubes: int = 64) -> list[bytes]:
    items = []
    for t in range(turns):
        user, cube = f"w{t % cubes}", "chat"
        items.append(item(user, cube, "add", corpus.sentence()))
        items.append(item(user, cube, "query", f"What about {corpus.word()} and {corpus.word()}?"))
        items.append(item(user, cube, "answer", corpus.sentence()))
    return requests(items, 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--turns", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    header("workers: end-to-end throughput and CPU per item")
    corpus = Corpus(seed=41)
    payloads = build(args.turns, corpus)
    total = args.turns * 3
    rows = []
    for _ in range(args.repeats):
        for workers in args.workers:
            server = Memsched(MemschedConfig(workers=workers))
            try:
                main_pid = server.proc.pid
                pids = server.pids
                cpu0 = {p: cpu_seconds(p) for p in pids}
                t0 = time.perf_counter()

                async def go(address: str = server.address) -> int:
                    async with aio_channel(address) as channel:
                        await channel.channel_ready()
                        result = await drive(channel, payloads, 100, total, 64, completions=True, timeout=900)
                        return result.completed

                completed = asyncio.run(go())
                elapsed = time.perf_counter() - t0
                main_cpu = cpu_seconds(main_pid) - cpu0[main_pid]
                worker_cpu = sum(cpu_seconds(p) - cpu0[p] for p in pids if p != main_pid)
            finally:
                server.stop()
            rate = completed / elapsed
            row = (workers, rate, main_cpu / completed * 1e6, worker_cpu / completed * 1e6, completed)
            rows.append(row)
            print(
                f"  {workers} workers: {fmt_rate(rate)} items/s handled ({completed} in {elapsed:.1f} s); "
                f"CPU per item: server {row[2]:.0f} µs, workers {row[3]:.0f} µs",
                flush=True,
            )
    print()
    print("| workers | items handled/s | server CPU µs/item | workers CPU µs/item |")
    print("| ---: | ---: | ---: | ---: |")
    for workers, rate, main_us, worker_us, _ in rows:
        print(f"| {workers} | {fmt_rate(rate)} | {main_us:.0f} | {worker_us:.0f} |")


if __name__ == "__main__":
    main()
