"""Benchmark 2: many clients. 1, 8 and 64 concurrent Session streams, each of a different user, each on its
own channel (as separate clients would be), all sending ``add`` items for ``--seconds``: total items
acknowledged per second, and the slowest stream's share (its acks over the mean per stream: 1.0 is
perfectly fair, near 0 is a starved stream). The raw grpcio echo runs the same load in the same run.

    python -m bench.clients [--streams 1 8 64] [--per-message 1 100] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
import uuid
from collections.abc import Iterable

import grpc.aio

from bench.common import (
    Corpus,
    Echo,
    Memsched,
    MemschedConfig,
    aio_channel,
    fmt_rate,
    header,
    item,
    requests,
    session_call,
)

# total items prebuilt per case (split over the streams): more than any server here acknowledges in 5 s
PREBUILT = {1: 60_000, 100: 400_000}


async def timed_stream(
    channel: grpc.aio.Channel,
    payloads: Iterable[bytes],
    per_message: int,
    window: int,
    start: asyncio.Event,
    until: list[float],
) -> tuple[int, bool]:
    """Send until the shared deadline; returns the items acknowledged by then and whether payloads ran out."""
    call = session_call(channel)
    acked = 0
    room = asyncio.Event()
    exhausted = False

    async def write() -> None:
        nonlocal exhausted
        sent = 0
        for payload in payloads:
            while sent - acked >= window * per_message:
                room.clear()
                await room.wait()
            if time.perf_counter() >= until[0]:
                return
            await call.write(payload)
            sent += per_message
        exhausted = True

    async def read() -> None:
        nonlocal acked
        async for response in call:
            if time.perf_counter() >= until[0]:
                return
            acked += len(response.acks)
            room.set()

    await start.wait()
    writer = asyncio.ensure_future(write())
    try:
        await asyncio.wait_for(read(), until[0] - time.perf_counter() + 1)
    except (TimeoutError, grpc.aio.AioRpcError):
        pass
    finally:
        writer.cancel()
        call.cancel()
    return acked, exhausted


async def run(
    address: str, streams: list[list[bytes]], per_message: int, window: int, seconds: float, cycle: bool
) -> list[int]:
    channels = [aio_channel(address) for _ in streams]
    for channel in channels:
        await channel.channel_ready()
    start = asyncio.Event()
    until = [0.0]
    tasks = [
        asyncio.ensure_future(timed_stream(ch, itertools.cycle(p) if cycle else p, per_message, window, start, until))
        for ch, p in zip(channels, streams, strict=True)
    ]
    await asyncio.sleep(0.2)
    until[0] = time.perf_counter() + seconds
    start.set()
    results = await asyncio.gather(*tasks)
    for channel in channels:
        await channel.close()
    if any(exhausted for _, exhausted in results):
        print("  ! a stream ran out of prebuilt items: raise PREBUILT")
    return [acked for acked, _ in results]


def build(n_streams: int, per_message: int, corpus: Corpus) -> list[list[bytes]]:
    per_stream = max(PREBUILT.get(per_message, 400_000) // n_streams, per_message * 200)
    out = []
    for s in range(n_streams):
        user = f"client-{s}-{uuid.uuid4().hex[:6]}"
        items = [item(user, f"cube-{i % 4}", "add", corpus.sentence()) for i in range(per_stream)]
        out.append(requests(items, per_message))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, nargs="*", default=[1, 8, 64])
    parser.add_argument("--per-message", type=int, nargs="*", default=[1, 100])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--window", type=int, default=16, help="messages in flight per stream")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    header("many clients: concurrent Session streams of different users")
    corpus = Corpus()
    rows = []
    for per_message in args.per_message:
        for n in args.streams:
            streams = build(n, per_message, corpus)
            figures = {}
            for name in ("echo", "memsched"):
                server = Echo() if name == "echo" else Memsched(MemschedConfig(workers=args.workers))
                try:
                    # the echo stores nothing, so it may see the same items again: it would outrun any prebuilt set
                    acked = asyncio.run(
                        run(server.address, streams, per_message, args.window, args.seconds, name == "echo")
                    )
                finally:
                    server.stop()
                total = sum(acked) / args.seconds
                share = min(acked) / (sum(acked) / n) if sum(acked) else 0.0
                figures[name] = (total, share)
                print(
                    f"  {name:8s} {n:3d} streams x {per_message:4d}/msg: {fmt_rate(total):>9s} items/s, "
                    f"slowest stream's share {share:.2f}",
                    flush=True,
                )
            rows.append((per_message, n, figures))
    print()
    print(
        "| items/message | streams | memsched items/s | slowest share | echo items/s | echo slowest | memsched/echo |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for per_message, n, f in rows:
        (m, ms), (e, es) = f["memsched"], f["echo"]
        print(f"| {per_message} | {n} | {fmt_rate(m)} | {ms:.2f} | {fmt_rate(e)} | {es:.2f} | {m / e:.2f} |")


if __name__ == "__main__":
    main()
