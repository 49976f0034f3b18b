"""The query handler in-process: a ``Worker`` (no server, no gRPC) over a copy of bench.query_latency's cached data
dir, ``--cubes`` of its cubes, ``--queries`` of its queries one at a time, each committed with fsync.

The service bench's run-to-run noise (a few ms at p50) hides handler changes of 5-10 %; here the handler's own time
shows, and with ``--parts`` the time of its parts (wrappers around the ranking, the log items, counting uses and the
shard transaction, ~1 µs a call each). Every query names a probe token of its cube, as in bench.query_latency, so
each one brings ~20 newcomers into working memory. Needs the cached data dir (``python -m bench.query_latency
--build-only`` makes it); the copy is dropped from the page cache first (common.copy_cold). Compare checkouts by
running this from each in turn, alternating: the machine's speed drifts between runs by as much as a change gains.
The pages the queries read from disk (major page faults) are counted: the cubes' pages come from disk as after a
restart, and a query that waits for one pays ~0.1-0.4 ms (the history trimming did ~4 a query before d81f0ee).

    python -m bench.handler [--cubes 10] [--queries 300] [--parts]
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import queue
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import Corpus, copy_cold, disk_written, header, item, percentile
from bench.query_latency import BUILD_SEED, FORMAT, PROBES, cube_name, probe_token, query_text
from memsched_grpc.config import Settings, StorageConfig
from memsched_grpc.worker import ResultTuple, Worker

WARM_QUERIES = 3
"""Untimed queries per cube first: the first loads the cube, the next ones read its common postings a first time."""


class Results:
    def __init__(self) -> None:
        self.items: list[ResultTuple] = []

    def put(self, obj: list[ResultTuple]) -> None:
        self.items.extend(obj)


def time_parts(spent: collections.defaultdict[str, float]) -> None:
    """Wrap the handler's parts so that ``spent`` sums their seconds."""
    from memsched_grpc.cube import Cube
    from memsched_grpc.handlers.base import HandlerContext
    from memsched_grpc.retrieval.retriever import Retriever
    from memsched_grpc.store.environment import Environment

    def wrap(owner: Any, name: str, part: str) -> None:
        fn: Callable[..., Any] = getattr(owner, name)

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[part] += time.perf_counter() - started

        setattr(owner, name, timed)

    wrap(Retriever, "evidence_rank", "ranking")
    wrap(HandlerContext, "log", "log items")
    wrap(Cube, "record_use", "counting uses")
    wrap(Worker, "_handle_cube", "handlers")
    wrap(Environment, "write", "shard transaction")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cubes", type=int, default=10, help="cubes queried (the first N of the data dir)")
    parser.add_argument("--queries", type=int, default=300, help="timed queries, spread over the cubes in turn")
    parser.add_argument("--parts", action="store_true", help="time the handler's parts too (wrappers, ~1 µs a call)")
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(tempfile.gettempdir()) / "memsched-bench-cache" / f"query-100x10000-f{FORMAT}" / "data",
        help="a data dir built by bench.query_latency",
    )
    args = parser.parse_args()
    if -(-args.queries // args.cubes) + WARM_QUERIES > PROBES:
        parser.error(f"at most {PROBES - WARM_QUERIES} timed queries per cube")
    if not args.data.is_dir():
        parser.error(f"no data dir at {args.data}: run python -m bench.query_latency --build-only first")
    header(f"query handler in-process, {args.cubes} cubes of {args.data}")
    spent: collections.defaultdict[str, float] = collections.defaultdict(float)
    if args.parts:
        time_parts(spent)
    work = Path(tempfile.mkdtemp(prefix="memsched-handler-"))
    try:
        copy_cold(args.data, work / "data")
        tasks: queue.Queue[Any] = queue.Queue()
        results = Results()
        worker = Worker(Settings(storage=StorageConfig(data_dir=work / "data")), tasks, results)
        corpus = Corpus(seed=BUILD_SEED, draws=23)
        probes = [0] * args.cubes
        seq = 0

        def one(cube: int) -> tuple[float, float]:
            nonlocal seq
            seq += 1
            user, cube_id = cube_name(cube)
            text = query_text(corpus, probe_token(cube, probes[cube]))
            probes[cube] += 1
            seen = len(results.items)
            tasks.put((0, [(seq, 0, item(user, cube_id, "query", text).SerializeToString())]))
            wall, cpu = time.perf_counter(), time.process_time()
            while len(results.items) == seen:
                worker.run_once(0.01)
            took = time.perf_counter() - wall, time.process_time() - cpu
            worker.run_once(0.001)  # idle between queries, as in service: the worker collects garbage then
            return took

        started = time.perf_counter()
        for _ in range(WARM_QUERIES):
            for cube in range(args.cubes):
                one(cube)
        while worker.run_once(0.001) and any(c.unprojected for c in worker.cubes.values()):
            pass  # an idle worker places the cubes' memories in their latent spaces: let it finish first
        print(f"loaded and warmed {args.cubes} cubes in {time.perf_counter() - started:.0f} s", flush=True)
        spent.clear()
        first_result = len(results.items)
        before = disk_written(os.getpid())
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_majflt
        walls, cpus = [], []
        for n in range(args.queries):
            wall, cpu = one(n % args.cubes)
            walls.append(wall * 1000)
            cpus.append(cpu * 1000)
        written = (disk_written(os.getpid()) - before) / args.queries
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_majflt - faults) / args.queries
        timed = results.items[first_result:]
        failed = sum(1 for r in timed if r[1] != "ok")
        logs = sum(len(r[4]) for r in timed) / len(timed)
        worker.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("| ms a query | p50 | p95 | p99 | mean |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, values in (("wall (handler, commit with fsync, results)", walls), ("CPU", cpus)):
        print(
            f"| {name} | {percentile(values, 0.5):.2f} | {percentile(values, 0.95):.2f} "
            f"| {percentile(values, 0.99):.2f} | {sum(values) / len(values):.2f} |"
        )
    print(
        f"written to disk per query: {written / 1024:.0f} KB; pages read from disk (major faults) per query: "
        f"{faults:.2f}; log items per query: {logs:.1f}; failed: {failed}"
    )
    if args.parts:
        handlers, transaction = spent.pop("handlers"), spent.pop("shard transaction")
        print("parts, ms a query (mean): " + ", ".join(f"{k} {v / args.queries * 1000:.2f}" for k, v in spent.items()))
        print(
            f"  the whole handler {handlers / args.queries * 1000:.2f}, the commit (transaction - handler) "
            f"{(transaction - handlers) / args.queries * 1000:.2f}"
        )


if __name__ == "__main__":
    if os.environ.get("OPENBLAS_NUM_THREADS") != "1":  # as the pool sets for its workers; numpy reads it at import
        os.execve(
            sys.executable,
            [sys.executable, "-m", "bench.handler", *sys.argv[1:]],
            {**os.environ, "OPENBLAS_NUM_THREADS": "1"},
        )
    main()
