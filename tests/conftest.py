"""Fixtures: a real memsched server on a free loopback port with real worker processes and a temporary
LMDB data directory, in-process (fast) or as a `memsched serve` subprocess (for kill and restart tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from memsched.v1 import items_pb2, scheduler_pb2, scheduler_pb2_grpc
from memsched_grpc.config import load_settings
from memsched_grpc.cube import Cube
from memsched_grpc.models import MemoryCapacities
from memsched_grpc.server import SchedulerServer
from memsched_grpc.store.cubes import CubeTables

ROOT = Path(__file__).resolve().parent.parent
TEST_HANDLERS = {
    "record": "tests.handlers:record",
    "slow": "tests.handlers:slow",
    "poison": "tests.handlers:poison",
    "flaky": "tests.handlers:flaky",
    "tally": "tests.handlers:tally",
}


def item(
    user: str = "u1", cube: str = "c1", label: str = "add", content: str = "a memory", **kw: Any
) -> items_pb2.ScheduleMessageItem:
    return items_pb2.ScheduleMessageItem(
        item_id=kw.pop("item_id", str(uuid.uuid4())), user_id=user, mem_cube_id=cube, label=label, content=content, **kw
    )


def settings_dict(data_dir: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    base: dict[str, Any] = {
        "server": {"address": "127.0.0.1:0", "grace_seconds": 2},
        "storage": {"data_dir": str(data_dir), "map_size_mb": 16, "shards": 4},
        "workers": {"count": 2, "retry_backoff_seconds": 0.05},
        "handlers": dict(TEST_HANDLERS),
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return base


class Client:
    """Raw generated stubs plus the few helpers tests share."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = grpc.insecure_channel(address)
        grpc.channel_ready_future(self.channel).result(timeout=20)
        self.stub = scheduler_pb2_grpc.SchedulerStub(self.channel)

    def session(
        self, *batches: list[items_pb2.ScheduleMessageItem], timeout: float = 60
    ) -> list[scheduler_pb2.SessionResponse]:
        """Send the batches on one stream, close it, and collect every response until the server ends it."""
        requests = iter([scheduler_pb2.SessionRequest(items=b) for b in batches])
        return list(self.stub.Session(requests, timeout=timeout))

    def wait_idle(self, user: str = "u1", cube: str = "", seconds: float = 30) -> scheduler_pb2.WaitIdleResponse:
        req = scheduler_pb2.WaitIdleRequest(user_id=user, mem_cube_id=cube)
        req.timeout.FromSeconds(int(seconds))
        return self.stub.WaitIdle(req, timeout=seconds + 5)

    def memory(self, user: str = "u1", cube: str = "c1", *types: int) -> scheduler_pb2.GetMemoryResponse:
        return self.stub.GetMemory(
            scheduler_pb2.GetMemoryRequest(user_id=user, mem_cube_id=cube, memory_types=list(types))
        )

    def working_texts(self, user: str = "u1", cube: str = "c1") -> list[str]:
        part = self.memory(user, cube, items_pb2.MEMORY_TYPE_WORKING_MEMORY).partitions[0]
        return [m.memory for m in part.items]

    def tallies(self, user: str = "u1", cube: str = "c1") -> list[tuple[str, int]]:
        """(item_id, times applied) of the items the ``tally`` handler committed, in order of first application."""
        part = self.memory(user, cube, items_pb2.MEMORY_TYPE_LONG_TERM_MEMORY).partitions[0]
        rows = sorted((int(m.metadata["position"]), m.id, int(m.metadata["applied"])) for m in part.items)
        return [(item_id, applied) for _, item_id, applied in rows]

    def status(self, item_id: str) -> scheduler_pb2.GetStatusResponse:
        return self.stub.GetStatus(scheduler_pb2.GetStatusRequest(item_id=item_id))

    def close(self) -> None:
        self.channel.close()


def collect(responses: list[scheduler_pb2.SessionResponse]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {"acks": [], "rejections": [], "completions": [], "logs": []}
    for r in responses:
        out["acks"].extend(r.acks)
        out["rejections"].extend(r.rejections)
        out["completions"].extend(r.completions)
        out["logs"].extend(r.logs)
    return out


def completed_logs(client: Client, *batches: list[items_pb2.ScheduleMessageItem]) -> list[Any]:
    """Send the batches on one stream; every item must complete. Returns the log items the stream received."""
    got = collect(client.session(*batches))
    assert all(c.status == items_pb2.TASK_STATUS_COMPLETED for c in got["completions"]), got["completions"]
    return got["logs"]


@pytest.fixture
def record_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "records"
    path.mkdir()
    monkeypatch.setenv("TEST_MEMSCHED_RECORD_DIR", str(path))
    return path


@pytest.fixture
def make_server(tmp_path: Path, record_dir: Path) -> Iterator[Any]:
    """Start in-process servers with settings overrides; all are stopped at teardown."""
    started: list[SchedulerServer] = []

    def make(data_dir: Path | None = None, **sections: dict[str, Any]) -> tuple[SchedulerServer, Client | None]:
        """The Client is plain-text and token-less: None when the server wants TLS or tokens."""
        settings = load_settings(**settings_dict(data_dir or tmp_path / "data", **sections))
        server = SchedulerServer(settings)
        server.start()
        started.append(server)
        plain = not settings.tls.enabled and not settings.auth.enabled
        return server, Client(server.address) if plain else None

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def client(make_server: Any) -> Client:
    return make_server()[1]


class ServerProcess:
    """`memsched serve` in a subprocess, for tests that kill or signal it."""

    def __init__(self, tmp_path: Path, data_dir: Path, config: dict[str, Any]) -> None:
        self.tmp_path = tmp_path
        self.config_path = tmp_path / f"config-{uuid.uuid4().hex[:6]}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""

    def start(self) -> Client:
        port_file = self.tmp_path / f"port-{uuid.uuid4().hex[:6]}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.log = (self.tmp_path / "server.log").open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "memsched_grpc.cli",
                "serve",
                "--config",
                str(self.config_path),
                "--port-file",
                str(port_file),
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode}: {(self.tmp_path / 'server.log').read_text()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError("server did not start")
            time.sleep(0.05)
        self.address = f"127.0.0.1:{port_file.read_text()}"
        return Client(self.address)

    def kill(self) -> None:
        """SIGKILL the server and its workers, as a crash would."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
        pids = []
        for pid in out:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except FileNotFoundError:  # exited (a killed worker reaped) between pgrep and this read
                continue
            if b"multiprocessing" in cmdline and b"resource_tracker" not in cmdline:
                pids.append(int(pid))
        return pids


@pytest.fixture
def server_process(tmp_path: Path, record_dir: Path) -> Iterator[Any]:
    procs: list[ServerProcess] = []

    def make(data_dir: Path | None = None, **sections: dict[str, Any]) -> ServerProcess:
        data = data_dir or tmp_path / "data"
        proc = ServerProcess(tmp_path, data, settings_dict(data, **sections))
        procs.append(proc)
        return proc

    yield make
    for p in procs:
        if p.proc is not None and p.proc.poll() is None:
            os.killpg(p.proc.pid, signal.SIGKILL)
            p.proc.wait(10)


@pytest.fixture
def tables(tmp_path: Path) -> Iterator[CubeTables]:
    """One shard's tables over a real LMDB dir, for tests that drive a Cube without a worker."""
    tables = CubeTables.open(tmp_path, 0, 64 << 20, True)
    yield tables
    tables.env.close()


def in_cube(tables: CubeTables, fn: Any) -> Any:
    """``fn(cube)`` on cube u1/c1 as a worker's first message sees it: loaded in this transaction, saved after."""

    def write(txn: Any) -> Any:
        cube = Cube.load(tables, txn, "u1", "c1", MemoryCapacities(), 100)
        cube.txn = txn
        out = fn(cube)
        cube.save()
        return out

    return tables.env.write(write)
