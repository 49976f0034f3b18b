"""Background ingest at full speed, for the latency benchmarks: one Session stream that keeps sending
``add`` items (batched) to its own cubes until ``--seconds`` pass, then prints the items acknowledged per
second. Runs in its own process so that its client work does not disturb the process that times.

    python -m bench.load --address 127.0.0.1:PORT --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from bench.common import Corpus, aio_channel, item, session_call
from memsched.v1 import scheduler_pb2


async def run(address: str, seconds: float, per_message: int, window: int, cubes: int) -> tuple[int, float]:
    corpus = Corpus(seed=99)
    pool = [corpus.sentence() for _ in range(5000)]
    user = f"load-{uuid.uuid4().hex[:6]}"
    acked = 0
    room = asyncio.Event()
    async with aio_channel(address) as channel:
        await channel.channel_ready()
        call = session_call(channel)
        start = time.perf_counter()
        deadline = start + seconds

        async def write() -> None:
            sent, n = 0, 0
            while time.perf_counter() < deadline:
                while sent - acked >= window * per_message:
                    room.clear()
                    await room.wait()
                batch = []
                for _ in range(per_message):
                    # a unique suffix keeps every memory new (no duplicate merging)
                    batch.append(item(user, f"cube-{n % cubes}", "add", f"{pool[n % len(pool)]} n{n}"))
                    n += 1
                await call.write(scheduler_pb2.SessionRequest(items=batch).SerializeToString())
                sent += per_message
            call.cancel()

        async def read() -> None:
            nonlocal acked
            async for response in call:
                acked += len(response.acks) + len(response.rejections)
                room.set()

        writer = asyncio.ensure_future(write())
        try:
            await read()
        except asyncio.CancelledError:
            pass
        except Exception as e:  # the cancel at the deadline ends the read with an RpcError
            if "CANCELLED" not in str(e):
                raise
        await writer
        return acked, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--per-message", type=int, default=100)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--cubes", type=int, default=16)
    args = parser.parse_args()
    acked, elapsed = asyncio.run(run(args.address, args.seconds, args.per_message, args.window, args.cubes))
    print(f"load: {acked} items acknowledged in {elapsed:.1f} s = {acked / elapsed:,.0f} items/s", flush=True)


if __name__ == "__main__":
    main()
