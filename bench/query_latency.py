"""Benchmark 3: latency from sending a ``query`` to receiving the ``scheduleMemory`` log item it causes, with
``--cubes`` cubes of ``--items`` long-term memories each (default 100 x 10,000 = 1M memories), idle and
while another process ingests at full speed into other cubes.

Every timed query brings a newcomer into working memory, so it really logs ``scheduleMemory``: each cube
holds ``PROBES`` memories carrying a token of their own (``zqp<cube>x<j>``), and timed query j of a cube
names probe j beside ordinary words (so its BM25 scoring walks long postings as a real query does). Probe j
ranks first and has never been in working memory. The time to the query's completion event is reported
beside it. Queries are sent one at a time on one Session stream.

Each latency is also split at the moment the worker built the query's first ``scheduleMemory`` log item (its
timestamp; client, server and workers share the machine's wall clock): before it lie the request's inbox commit,
the hand-off to a worker and the handler's ranking; after it the rest of the handler, the shard commit and the way
back to the client. The parts' percentiles do not add up to the whole's; they show which side a tail is on.

Loading 1M memories takes many minutes, so the data dir is built once (through Submit and WaitIdle, the
fastest way in) and cached under ``--cache`` (default /tmp/memsched-bench-cache); each run copies it to a
temporary dir, so runs do not see each other's changes, and drops the copy from the page cache (common.copy_cold:
the server meets its pages as after a restart). ``--rebuild`` builds it again.

At the end the server stops gracefully (its workers store snapshots of the cubes they hold, memsched_grpc/snapshot.py;
the stop is timed), the data dir is dropped from the page cache, and a server started on it is warmed up again: the
warm-up after a graceful restart, against the first one's from the records. Then once more, after ``--restart-pause``
seconds of quiet, in which idle workers load their snapshotted cubes ahead of the queries (workers.preload_snapshots).

    python -m bench.query_latency [--cubes 100] [--items 10000] [--queries 300]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio

from bench.common import (
    ROOT,
    Corpus,
    Memsched,
    MemschedConfig,
    aio_channel,
    copy_cold,
    drop_from_cache,
    header,
    item,
    percentile,
    session_call,
)
from memsched.v1 import scheduler_pb2, scheduler_pb2_grpc

PROBES = 50
PER_ADD = 100  # memories per add message (a JSON list of chat messages)
SUBMIT_ITEMS = 100  # add messages per Submit call
FORMAT = 2
"""Bump when the data layout or corpus changes. 2: a message's log items are one history entry (the data dir then
holds what the code that reads it writes; a dir of format 1 still works, one entry per item)."""
BUILD_SEED = 11
"""The cubes' corpus. Queries draw their words from its vocabulary: until 2026-12-07 they drew from another seed's,
so 91 % of their words were unknown to the cubes and a query found memories mostly through its probe token."""


def cube_name(i: int) -> tuple[str, str]:
    return f"qu{i % 10}", f"qc{i}"


def probe_token(cube: int, j: int) -> str:
    return f"zqp{cube}x{j}"


def build(data_dir: Path, cubes: int, per_cube: int, workers: int) -> None:
    """Fill ``data_dir`` with ``cubes`` cubes of ``per_cube`` memories, PROBES of which carry probe tokens."""
    corpus = Corpus(seed=BUILD_SEED)
    # no snapshots in the cache: the first warm-up of a run loads every cube from its records
    cfg = MemschedConfig(workers=workers, max_backlog=100_000, extra={"workers": {"snapshot_seconds": 0}})
    server = Memsched(cfg, data_dir=data_dir)
    started = time.perf_counter()
    try:
        channel = grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 64 << 20)])
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        probe_at = {k * (per_cube // PROBES): k for k in range(PROBES)}
        pending: list = []
        sent = 0

        def flush() -> None:
            nonlocal pending
            while True:
                try:
                    stub.Submit(scheduler_pb2.SubmitRequest(items=pending), timeout=300)
                    break
                except grpc.RpcError as e:
                    if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        raise
                    time.sleep(0.5)
            pending = []

        for c in range(cubes):
            user, cube = cube_name(c)
            for start in range(0, per_cube, PER_ADD):
                chat = []
                for n in range(start, min(start + PER_ADD, per_cube)):
                    text = corpus.sentence()
                    if n in probe_at:
                        text = f"{text[:-1]} {probe_token(c, probe_at[n])}."
                    chat.append({"content": text})
                pending.append(item(user, cube, "add", json.dumps(chat)))
                sent += 1
                if len(pending) >= SUBMIT_ITEMS:
                    flush()
            print(f"  build: {c + 1}/{cubes} cubes submitted ({time.perf_counter() - started:.0f} s)", flush=True)
        if pending:
            flush()
        for u in sorted({cube_name(c)[0] for c in range(cubes)}):
            while True:
                req = scheduler_pb2.WaitIdleRequest(user_id=u)
                req.timeout.FromSeconds(600)
                if stub.WaitIdle(req, timeout=700).idle:
                    break
        channel.close()
    finally:
        server.stop(timeout=120)
    print(f"  build: {cubes * per_cube:,} memories in {time.perf_counter() - started:.0f} s", flush=True)


@dataclass
class Timing:
    to_log: float
    to_completion: float
    to_first_log: float = float("nan")
    """Send -> the worker built the query's first scheduleMemory log item (its timestamp; the same machine's wall
    clock): the request's inbox commit, the hand-off to the worker and the handler up to its logging step."""
    after_first_log: float = float("nan")
    """That log item's creation -> the client has it: the rest of the handler, the shard commit and the way back."""


class QueryStream:
    """One Session; queries are sent one at a time and their scheduleMemory log and completion awaited."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call = session_call(channel)
        self.logs: dict[str, asyncio.Future[tuple[float, float, float]]] = {}
        self.done: dict[str, asyncio.Future[float]] = {}
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for response in self.call:
            now, wall = time.perf_counter(), time.time()
            for log in response.logs:
                waiter = self.logs.get(log.source_item_id)
                if waiter is not None and log.label == "scheduleMemory" and not waiter.done():
                    waiter.set_result((now, wall, log.timestamp.seconds + log.timestamp.nanos / 1e9))
            for completion in response.completions:
                finished = self.done.pop(completion.item_id, None)
                if finished is not None and not finished.done():
                    finished.set_result(now)

    async def query(self, user: str, cube: str, text: str, timeout: float) -> Timing | None:
        item_id = uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        self.logs[item_id], self.done[item_id] = loop.create_future(), loop.create_future()
        payload = scheduler_pb2.SessionRequest(items=[item(user, cube, "query", text, item_id)]).SerializeToString()
        sent, sent_wall = time.perf_counter(), time.time()
        await self.call.write(payload)
        try:
            done = await asyncio.wait_for(self.done[item_id], timeout)
        except TimeoutError:
            return None
        finally:
            self.done.pop(item_id, None)
        log_future = self.logs.pop(item_id)
        if not log_future.done():
            return Timing(float("nan"), done - sent)
        received, received_wall, built = log_future.result()
        return Timing(received - sent, done - sent, built - sent_wall, received_wall - built)

    async def close(self) -> None:
        self.call.cancel()
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.RpcError):
            await self.reader


def query_text(corpus: Corpus, token: str) -> str:
    return f"What did we say about {corpus.word()} {corpus.word()} and {corpus.word()} {token}?"


async def timed_queries(
    address: str, cubes: int, count: int, probe_offset: int, timeout: float
) -> tuple[list[Timing], int]:
    corpus = Corpus(seed=BUILD_SEED, draws=23 + probe_offset)  # the words the cubes hold
    out: list[Timing] = []
    missed = 0
    async with aio_channel(address) as channel:
        await channel.channel_ready()
        stream = QueryStream(channel)
        for n in range(count):
            c = n % cubes
            j = probe_offset + n // cubes
            user, cube = cube_name(c)
            timing = await stream.query(user, cube, query_text(corpus, probe_token(c, j)), timeout)
            if timing is None or timing.to_log != timing.to_log:
                missed += 1
            if timing is not None:
                out.append(timing)
        await stream.close()
    return out, missed


async def warm(address: str, cubes: int) -> float:
    """One query per cube, so every cube is loaded in its worker before timing; returns the slowest."""
    corpus = Corpus(seed=BUILD_SEED, draws=5)
    slowest = 0.0
    async with aio_channel(address) as channel:
        await channel.channel_ready()
        stream = QueryStream(channel)
        for c in range(cubes):
            user, cube = cube_name(c)
            timing = await stream.query(user, cube, query_text(corpus, "warmup"), 600)
            slowest = max(slowest, timing.to_completion if timing else float("inf"))
        await stream.close()
    return slowest


def warm_up(server: Memsched, cubes: int, what: str) -> None:
    t0 = time.perf_counter()
    slowest = asyncio.run(warm(server.address, cubes))
    print(
        f"{what}: {time.perf_counter() - t0:.1f} s for {cubes} cubes, slowest {slowest * 1000:.0f} ms; "
        f"server+workers RSS {server.rss() / 2**20:,.0f} MiB",
        flush=True,
    )


def report(name: str, timings: list[Timing], missed: int) -> None:
    rows = (
        ("to scheduleMemory log", [t.to_log for t in timings], str(missed)),
        ("to completion", [t.to_completion for t in timings], ""),
        ("of it: to the first log's creation", [t.to_first_log for t in timings], ""),
        ("of it: from there to the client", [t.after_first_log for t in timings], ""),
    )
    for latency, seconds, missed_cell in rows:
        ms = [v * 1000 for v in seconds if v == v]  # a query whose log never came is NaN
        print(
            f"| {name} | {latency} | {len(ms)} | {percentile(ms, 0.5):.1f} | {percentile(ms, 0.95):.1f} "
            f"| {percentile(ms, 0.99):.1f} | {max(ms, default=float('nan')):.1f} | {missed_cell} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cubes", type=int, default=100)
    parser.add_argument("--items", type=int, default=10_000, help="long-term memories per cube")
    parser.add_argument("--queries", type=int, default=300, help="timed queries per phase")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--load-seconds", type=float, default=0, help="length of the loaded phase's ingest")
    parser.add_argument("--timeout", type=float, default=20.0, help="per timed query")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "memsched-bench-cache")
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--build-only", action="store_true", help="build (or find) the cached data dir and stop")
    parser.add_argument(
        "--restart-pause", type=float, default=30.0, help="seconds between the second restart and its warm-up"
    )
    args = parser.parse_args()
    if args.queries // args.cubes * 2 + 2 > PROBES:
        parser.error(f"at most {PROBES // 2 - 1} timed queries per cube and phase")
    header(f"query -> scheduleMemory latency, {args.cubes} cubes x {args.items} memories")
    cached = args.cache / f"query-{args.cubes}x{args.items}-f{FORMAT}"
    if args.rebuild or not (cached / "complete").exists():
        shutil.rmtree(cached, ignore_errors=True)
        print(f"building the data dir in {cached} (once; later runs reuse it)", flush=True)
        build(cached / "data", args.cubes, args.items, args.workers)
        (cached / "complete").write_text(time.ctime())
    if args.build_only:
        return
    work = Path(tempfile.mkdtemp(prefix="memsched-query-"))
    try:
        copy_cold(cached / "data", work / "data")
        server = Memsched(MemschedConfig(workers=args.workers, max_backlog=100_000), data_dir=work / "data")
        try:
            warm_up(server, args.cubes, "warm-up: first query of each cube (loads it into its worker)")
            idle, idle_missed = asyncio.run(timed_queries(server.address, args.cubes, args.queries, 1, args.timeout))
            load_seconds = args.load_seconds or max(30.0, args.queries * 0.1 + 10)
            load = subprocess.Popen(
                [sys.executable, "-m", "bench.load", "--address", server.address, "--seconds", str(load_seconds)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
            )
            time.sleep(3)  # let the load reach full speed
            offset = 1 + args.queries // args.cubes + 1
            loaded, loaded_missed = asyncio.run(
                timed_queries(server.address, args.cubes, args.queries, offset, args.timeout)
            )
            load_out, _ = load.communicate(timeout=load_seconds + 120)
        finally:
            t0 = time.perf_counter()
            server.stop(timeout=120)
        snapshots = len(list((work / "data").glob("shards/*/snapshots/*.snap")))
        print(f"graceful stop: {time.perf_counter() - t0:.1f} s; {snapshots} cube snapshot files", flush=True)
        for pause in (0.0, args.restart_pause):
            drop_from_cache(work / "data")
            server = Memsched(MemschedConfig(workers=args.workers, max_backlog=100_000), data_dir=work / "data")
            try:
                time.sleep(pause)
                warm_up(
                    server,
                    args.cubes,
                    f"warm-up after a graceful restart and {pause:.0f} s of quiet (from the snapshots; page cache "
                    "dropped; idle workers preload)",
                )
            finally:
                server.stop(timeout=120)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print("| phase | latency | queries | p50 ms | p95 ms | p99 ms | max ms | missed |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    report("idle", idle, idle_missed)
    report("during full-speed ingest", loaded, loaded_missed)
    print(f"ingest during the loaded phase: {load_out.strip()}")
    print("target: p99 <= 20 ms idle (to the scheduleMemory log)")


if __name__ == "__main__":
    main()
