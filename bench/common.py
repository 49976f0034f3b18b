"""What every benchmark shares: the machine's description, servers in subprocesses (memsched and a bare
grpcio echo), a synthetic chat corpus, stream drivers and percentile helpers.

Servers always run in their own process: a client in the server's process would share its GIL and make
both look slower (or, worse, make the client the bottleneck and every ratio 1.0).
"""

from __future__ import annotations

import asyncio
import bisect
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import yaml

from memsched.v1 import items_pb2, scheduler_pb2

ROOT = Path(__file__).resolve().parent.parent
SESSION_METHOD = "/memsched.v1.Scheduler/Session"


# the machine
def machine() -> str:
    """One line naming what the figures were measured on."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("grpcio", "protobuf", "lmdb"))
    return f"nproc {os.cpu_count()}, {cpu}, Python {platform.python_version()}, {versions}"


def header(title: str) -> None:
    print(f"# {title}")
    print(f"# machine: {machine()}")
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    argv = ["-m", spec.name, *sys.argv[1:]] if spec is not None else sys.argv
    print(f"# command: {' '.join(['python', *argv])}")


# processes
def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return out


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User+system CPU time of one process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def disk_written(pid: int) -> int:
    """Bytes one process has caused to be written to the storage layer so far (``write_bytes``: the page-cache
    folios it dirtied, whole, not what it passed to ``write``)."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def dir_bytes(path: Path) -> int:
    """Bytes the files under ``path`` occupy on disk (LMDB files are sparse: st_blocks, not st_size)."""
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def copy_cold(source: Path, target: Path) -> None:
    """Copy a cached data dir and drop the copy from the page cache, so that the server meets it as after a restart.

    A copy leaves its pages cached in large folios (it writes whole files), and a folio is written back whole once
    any page of it is dirty: a query's shard commit on such a copy wrote ~920 KB to disk, against ~130 KB once the
    pages came back through the server's own memory map, a page at a time (in-process, 10 cubes of the 100 x 10k
    data dir, 300 queries; bench/RESULTS.md). A server that wrote its own data dir does not meet it in that state (one
    restored from a copy would, until the copy's pages leave the cache)."""
    shutil.copytree(source, target)
    drop_from_cache(target)


def drop_from_cache(directory: Path) -> None:
    """Write back and drop every file under ``directory`` from the page cache: read next as after a reboot."""
    for path in directory.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fdatasync(fd)  # dirty pages would stay cached
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


class Process:
    """A server in a subprocess that writes its port to a file; stopped with SIGTERM, killed if it hangs."""

    def __init__(self, argv: list[str], port_file: Path, log_path: Path, root: Path = ROOT) -> None:
        self.port_file = port_file
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            argv, cwd=root, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(root)}
        )
        deadline = time.monotonic() + 120
        while not port_file.exists() or not port_file.read_text():
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise TimeoutError(f"server did not start: {log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        self.address = f"127.0.0.1:{port_file.read_text().strip()}"

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid, *_children(self.proc.pid)]

    @property
    def worker_pids(self) -> list[int]:
        """The spawned worker processes (not the multiprocessing resource tracker)."""
        out = []
        for pid in _children(self.proc.pid):
            try:
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    out.append(pid)
            except OSError:
                continue
        return out

    def pause_workers(self) -> None:
        """SIGSTOP the workers: the server goes on accepting and storing (its backlog grows) but nothing is
        handled, which isolates the ingest path's own cost from the handlers' on shared cores."""
        for pid in self.worker_pids:
            os.kill(pid, signal.SIGSTOP)

    def resume_workers(self) -> None:
        for pid in self.worker_pids:
            os.kill(pid, signal.SIGCONT)

    def rss(self) -> int:
        """Resident memory of the server and its worker processes (the multiprocessing resource tracker too)."""
        return sum(rss_bytes(p) for p in self.pids)

    def cpu(self) -> float:
        return sum(cpu_seconds(p) for p in self.pids)

    def disk_written(self) -> tuple[int, int]:
        """Bytes written to disk so far by the server process, and by its workers together."""
        return disk_written(self.proc.pid), sum(disk_written(p) for p in self.worker_pids)

    def stop(self, timeout: float = 60) -> None:
        if self.proc.poll() is None:
            self.resume_workers()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                for pid in reversed(self.pids):
                    os.kill(pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


@dataclass
class MemschedConfig:
    workers: int = 2
    shards: int = 8
    max_backlog: int = 1_000_000
    long_term_capacity: int = 10_000
    batch_size: int = 512
    sync: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


class Memsched(Process):
    """``memsched serve`` on a free loopback port over ``data_dir`` (a fresh temporary one by default).
    ``root`` runs another checkout's code (a baseline ``git worktree``) for before/after in one run."""

    def __init__(self, cfg: MemschedConfig | None = None, data_dir: Path | None = None, root: Path = ROOT) -> None:
        cfg = cfg or MemschedConfig()
        self.tmp = Path(tempfile.mkdtemp(prefix="memsched-bench-"))
        self.own_data = data_dir is None
        self.data_dir = data_dir or self.tmp / "data"
        settings: dict[str, Any] = {
            "server": {"address": "127.0.0.1:0", "grace_seconds": 5},
            "storage": {"data_dir": str(self.data_dir), "shards": cfg.shards, "sync": cfg.sync, "map_size_mb": 1024},
            "workers": {"count": cfg.workers, "batch_size": cfg.batch_size},
            "limits": {"max_backlog": cfg.max_backlog},
            "scheduler": {
                "capacities": {"long_term_memory_capacity": cfg.long_term_capacity},
            },
            "log_level": "WARNING",
        }
        for section, values in cfg.extra.items():
            settings.setdefault(section, {}).update(values)
        config = self.tmp / "config.yaml"
        config.write_text(yaml.safe_dump(settings))
        port_file = self.tmp / "port"
        argv = [
            sys.executable,
            "-m",
            "memsched_grpc.cli",
            "serve",
            "--config",
            str(config),
            "--port-file",
            str(port_file),
        ]
        super().__init__(argv, port_file, self.tmp / "server.log", root)

    def stop(self, timeout: float = 60) -> None:
        super().stop(timeout)
        shutil.rmtree(self.tmp, ignore_errors=True)


class Echo(Process):
    """The raw ceiling: bench/echo_server.py, a grpcio servicer that acknowledges every item and stores nothing."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="memsched-echo-"))
        port_file = self.tmp / "port"
        argv = [sys.executable, "-m", "bench.echo_server", "--port-file", str(port_file)]
        super().__init__(argv, port_file, self.tmp / "server.log")

    def stop(self, timeout: float = 60) -> None:
        super().stop(timeout)
        shutil.rmtree(self.tmp, ignore_errors=True)


# the corpus
_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
_FILLERS = ("i", "the", "and", "my", "it", "was", "to", "a", "we", "of", "so", "that", "with", "for")


class Corpus:
    """Synthetic chat turns shaped like LoCoMo's: ~11 content words and ~120 characters a turn, words drawn
    Zipf-Mandelbrot (s=1, q=5) from 20,000 made-up words, which gives the commonest word a document
    frequency near 20 % as in real chat (measured on LoCoMo with memsched's tokenizer: 'great', 0.20).
    Deterministic for a seed, so a data dir built once can be reused. ``draws`` seeds the word draws apart from the
    vocabulary: queries about memories built from ``Corpus(seed)`` use the same seed and other draws (another seed
    makes other words: 9 % of them in the first corpus's vocabulary)."""

    def __init__(self, seed: int = 7, vocabulary: int = 20_000, draws: int | None = None) -> None:
        rng = random.Random(seed)
        words: list[str] = []
        seen: set[str] = set()
        while len(words) < vocabulary:
            w = "".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((2, 3, 3, 4))))
            if w not in seen:
                seen.add(w)
                words.append(w)
        self.words = words
        cumulative, total = [], 0.0
        for rank in range(vocabulary):
            total += 1.0 / (rank + 1 + 5)
            cumulative.append(total)
        self._cum = cumulative
        self._total = total
        self.rng = random.Random(seed + 1 if draws is None else draws)

    def word(self) -> str:
        return self.words[bisect.bisect_left(self._cum, self.rng.random() * self._total)]

    def sentence(self, content_words: int = 11) -> str:
        out = []
        for _ in range(content_words):
            if self.rng.random() < 0.5:
                out.append(self.rng.choice(_FILLERS))
            out.append(self.word())
        return " ".join(out).capitalize() + "."


def item(user: str, cube: str, label: str, content: str, item_id: str | None = None) -> items_pb2.ScheduleMessageItem:
    return items_pb2.ScheduleMessageItem(
        item_id=item_id or uuid.uuid4().hex, user_id=user, mem_cube_id=cube, label=label, content=content
    )


def requests(items: Sequence[items_pb2.ScheduleMessageItem], per_message: int) -> list[bytes]:
    """Serialized SessionRequests of ``per_message`` items each, built before any clock starts."""
    return [
        scheduler_pb2.SessionRequest(items=items[i : i + per_message]).SerializeToString()
        for i in range(0, len(items), per_message)
    ]


# stream driving
@dataclass
class StreamResult:
    items: int
    acked: int = 0
    rejected: int = 0
    completed: int = 0
    started: float = 0.0
    first_ack: float = 0.0
    last_ack: float = 0.0
    last_completion: float = 0.0
    logs: int = 0

    @property
    def ack_rate(self) -> float:
        span = self.last_ack - self.started
        return self.acked / span if span > 0 else 0.0


def session_call(channel: grpc.aio.Channel) -> Any:
    """A Session stream that sends pre-serialized requests (the client's encoding is paid before timing)."""
    return channel.stream_stream(
        SESSION_METHOD, request_serializer=None, response_deserializer=scheduler_pb2.SessionResponse.FromString
    )()


async def drive(
    channel: grpc.aio.Channel,
    payloads: Sequence[bytes],
    per_message: int,
    total_items: int,
    window_messages: int,
    completions: bool = False,
    timeout: float = 120.0,
    start: asyncio.Event | None = None,
) -> StreamResult:
    """Send ``payloads`` on one Session with at most ``window_messages`` messages unacknowledged, and count
    acks (and completions when ``completions``) until all arrived or ``timeout`` passed."""
    result = StreamResult(total_items)
    window = window_messages * per_message
    room = asyncio.Event()
    call = session_call(channel)
    if start is not None:
        await start.wait()
    result.started = time.perf_counter()

    async def write() -> None:
        sent = 0
        for payload in payloads:
            while sent - (result.acked + result.rejected) >= window:
                room.clear()
                await room.wait()
            await call.write(payload)
            sent += per_message
        await call.done_writing()

    async def read() -> None:
        async for response in call:
            now = time.perf_counter()
            if response.acks or response.rejections:
                if not result.first_ack:
                    result.first_ack = now
                result.acked += len(response.acks)
                result.rejected += len(response.rejections)
                result.last_ack = now
                room.set()
            if response.completions:
                result.completed += len(response.completions)
                result.last_completion = now
            result.logs += len(response.logs)
            done = result.acked + result.rejected >= total_items
            if done and (not completions or result.completed >= result.acked):
                return

    writer = asyncio.ensure_future(write())
    try:
        await asyncio.wait_for(read(), timeout)
    except TimeoutError:
        pass
    finally:
        writer.cancel()
        call.cancel()
    return result


def aio_channel(address: str) -> grpc.aio.Channel:
    limit = 256 * 1024 * 1024
    return grpc.aio.insecure_channel(
        address, options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
    )


# statistics
def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 0.5)


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}"
