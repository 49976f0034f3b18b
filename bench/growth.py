"""Benchmark 4: cost as a cube grows. Cubes of 1k, 10k and 100k long-term memories; for each: the first
query (which loads the cube into its worker), query latency (to completion, sequential) right after it and again
after a few hundred queries (warm: a large cube's first queries place the memories they read in its latent
space), add cost per item (500 adds, 100 per message, to completion), and the resident memory of server plus
workers once the cube is loaded. Then bytes on disk per 10k items added through the server (inbox, statuses,
memories, logs).

Growing a cube to 100k through ``add`` messages takes very long (each add's near-duplicate check scores
the whole index, so the cost of an add grows with the cube), so the three cubes are written straight into
a fresh data dir with the store's own code (the records ``add`` would write: MemoryItem JSON with its insertion
sequence number, and the cube state) before the server starts; the adds measured afterwards run through the server.

    python -m bench.growth [--sizes 1000 10000 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import (
    Corpus,
    Memsched,
    MemschedConfig,
    aio_channel,
    dir_bytes,
    drive,
    header,
    item,
    percentile,
    requests,
)
from bench.query_latency import QueryStream
from memsched_grpc.models import CubeState, MemoryItem, MemoryType, utcnow
from memsched_grpc.retrieval.tokenizer import keywords
from memsched_grpc.store import keys
from memsched_grpc.store.cubes import CubeTables

USER = "grow"
SHARDS = 8


def fill(data_dir: Path, cube: str, size: int, corpus: Corpus) -> None:
    """Write ``size`` long-term memories of ``cube`` as the add handler would store them."""
    shard = keys.shard_of(USER, cube, SHARDS)
    tables = CubeTables.open(data_dir, shard, 1 << 30, False)
    key = keys.cube_key(USER, cube)
    now = utcnow()
    step = 10_000
    for start in range(0, size, step):

        def write(txn, start=start) -> None:  # type: ignore[no-untyped-def]
            for n in range(start, min(start + step, size)):
                text = corpus.sentence()
                tables.put_memory(
                    txn,
                    key,
                    MemoryItem(
                        id=f"{cube}-{n}",
                        memory=text,
                        memory_type=MemoryType.LONG_TERM,
                        key=" ".join(text.split()[:8]),
                        tags=keywords(text, 5),
                        source_item_id=f"fill-{n}",
                        sequence=n + 1,
                        created_at=now,
                        updated_at=now,
                    ),
                )

        tables.env.write(write)
    tables.env.write(
        lambda txn: tables.save_state(txn, key, CubeState(user_id=USER, mem_cube_id=cube, long_term_size=size))
    )
    tables.env.sync()
    tables.env.close()


async def measure_cube(
    address: str, cube: str, corpus: Corpus, queries: int, adds: int, warm_after: int, pause: float = 0.0
) -> dict[str, float]:
    """The first query (it loads the cube), ``queries`` queries right after it, then ``queries`` more after
    ``warm_after`` unmeasured ones: past ``latent_project_limit`` memories a query places the memories it reads
    in the cube's latent space the first time it reads them, so a freshly loaded large cube's first queries
    cost more than its later ones. ``pause``: seconds of quiet after the first query, as between chat turns
    (an idle worker does that placing ahead of the queries)."""
    out: dict[str, float] = {}
    async with aio_channel(address) as channel:
        await channel.channel_ready()
        stream = QueryStream(channel)
        first = await stream.query(USER, cube, f"what about {corpus.word()} {corpus.word()}?", 600)
        out["first_query_s"] = first.to_completion if first else float("nan")
        await asyncio.sleep(pause)

        async def run(count: int) -> list[float]:
            latencies = []
            for _ in range(count):
                t = await stream.query(
                    USER, cube, f"What did I say about {corpus.word()} {corpus.word()} and {corpus.word()}?", 60
                )
                if t is not None:
                    latencies.append(t.to_completion * 1000)
            return latencies

        cold = await run(queries)
        await run(warm_after)
        warm = await run(queries)
        await stream.close()
        out["query_p50_ms"] = percentile(cold, 0.5)
        out["query_p95_ms"] = percentile(cold, 0.95)
        out["warm_p50_ms"] = percentile(warm, 0.5)
        out["warm_p95_ms"] = percentile(warm, 0.95)
        payloads = requests([item(USER, cube, "add", corpus.sentence()) for _ in range(adds)], 100)
        result = await drive(channel, payloads, 100, adds, 64, completions=True, timeout=600)
        out["add_ms_per_item"] = (result.last_completion - result.started) / max(result.completed, 1) * 1000
    return out


def disk_per_10k(corpus: Corpus) -> tuple[int, int]:
    """Bytes on disk of an empty server's data dir, and the growth after 10k adds through the server."""
    server = Memsched(MemschedConfig())
    try:
        empty = dir_bytes(server.data_dir)
        payloads = requests([item(USER, f"disk-{i % 10}", "add", corpus.sentence()) for i in range(10_000)], 100)

        async def go() -> None:
            async with aio_channel(server.address) as channel:
                await channel.channel_ready()
                await drive(channel, payloads, 100, 10_000, 64, completions=True, timeout=600)

        asyncio.run(go())
        return empty, dir_bytes(server.data_dir) - empty
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[1_000, 10_000, 100_000])
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--adds", type=int, default=500)
    parser.add_argument(
        "--warm-after", type=int, default=250, help="queries between the cold and the warm measurement (not timed)"
    )
    parser.add_argument("--pause", type=float, default=0.0, help="seconds of quiet after each cube's first query")
    args = parser.parse_args()
    header("growth: add and query cost as a cube grows")
    corpus = Corpus(seed=31)
    work = Path(tempfile.mkdtemp(prefix="memsched-growth-"))
    rows = []
    try:
        data = work / "data"
        t0 = time.perf_counter()
        for size in args.sizes:
            fill(data, f"g{size}", size, corpus)
        print(f"filled {sum(args.sizes):,} memories straight into LMDB in {time.perf_counter() - t0:.0f} s", flush=True)
        cfg = MemschedConfig(long_term_capacity=max(args.sizes) * 2, shards=SHARDS)
        server = Memsched(cfg, data_dir=data)
        try:
            base_rss = server.rss()
            for size in args.sizes:
                figures = asyncio.run(
                    measure_cube(
                        server.address, f"g{size}", corpus, args.queries, args.adds, args.warm_after, args.pause
                    )
                )
                figures["rss_mib"] = server.rss() / 2**20
                rows.append((size, figures))
                print(f"  {size:>7,}: {figures}", flush=True)
        finally:
            server.stop(timeout=120)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    empty, per_10k = disk_per_10k(corpus)
    print()
    print(f"server + 2 workers RSS before any cube was loaded: {base_rss / 2**20:,.0f} MiB")
    print(
        f"queries: {args.queries} {args.pause:g} s after the cube's first, then {args.queries} after "
        f"{args.warm_after} more"
    )
    print(
        "| cube size | first query (loads cube) s | query p50 ms | query p95 ms | warm p50 ms | warm p95 ms "
        "| add ms/item | RSS after load MiB |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for size, f in rows:
        print(
            f"| {size:,} | {f['first_query_s']:.2f} | {f['query_p50_ms']:.1f} | {f['query_p95_ms']:.1f} "
            f"| {f['warm_p50_ms']:.1f} | {f['warm_p95_ms']:.1f} | {f['add_ms_per_item']:.2f} | {f['rss_mib']:,.0f} |"
        )
    print(
        f"disk: empty data dir {empty / 2**20:.1f} MiB; "
        f"10k adds through the server grow it by {per_10k / 2**20:.1f} MiB"
    )


if __name__ == "__main__":
    main()
