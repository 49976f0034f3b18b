"""Structural promises: workers never import grpc; configuration rejects unknown keys."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from memsched_grpc.config import load_settings
from memsched_grpc.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_worker_side_never_imports_grpc() -> None:
    code = (
        "import sys, memsched_grpc.worker, memsched_grpc.handlers, memsched_grpc.cube, memsched_grpc.convert;"
        "bad = sorted(m for m in sys.modules if m == 'grpc' or m.startswith('grpc.') or m.startswith('grpc_'));"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_workers_run_single_threaded_math(server_process: object) -> None:
    # One worker per core: BLAS threads inside each would fight over the same cores (bench.workers: 2 workers
    # handled 330-387 items/s with them, ~2k without).
    server = server_process(workers={"count": 2})  # type: ignore[operator]
    server.start()
    for pid in server.worker_pids():
        environ = dict(
            entry.split(b"=", 1) for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in entry
        )
        assert environ.get(b"OPENBLAS_NUM_THREADS") == b"1" and environ.get(b"OMP_NUM_THREADS") == b"1"
    assert server.terminate() == 0


def test_workers_run_nicer_than_the_server(server_process: object) -> None:
    # The server is the one stage every item passes through; workers that are behind must not starve it
    # (bench.ingest unbatched: 0.40 -> 0.60 of the echo with workers.nice 5).
    server = server_process(workers={"count": 2, "nice": 7})  # type: ignore[operator]
    server.start()
    pids = server.worker_pids()
    assert len(pids) == 2
    base = os.getpriority(os.PRIO_PROCESS, server.proc.pid)
    assert [os.getpriority(os.PRIO_PROCESS, pid) for pid in pids] == [min(base + 7, 19)] * 2
    assert server.terminate() == 0


def test_stemming_uses_the_c_snowball_build() -> None:
    # snowballstemmer silently falls back to its pure-Python stemmers when PyStemmer is missing: a word not
    # seen before then costs ~15 us to stem instead of ~1 us (same stems on all of LoCoMo's 10,323 words).
    from memsched_grpc.retrieval import tokenizer

    assert type(tokenizer._stemmer).__module__ == "Stemmer"


def test_embedded_defaults() -> None:
    s = load_settings()
    assert s.server.address == "127.0.0.1:50051"
    assert s.scheduler.capacities.working_memory_capacity == 20
    assert s.scheduler.capacities.long_term_memory_capacity == 10000
    assert s.limits.max_content_bytes == 1024 * 1024


def test_unknown_yaml_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("scheduler:\n  top_k: 5\n  context_windw_size: 3\n")
    with pytest.raises(ConfigError, match=r"scheduler\.context_windw_size: unknown key"):
        load_settings(path)
    path.write_text("scheduler:\n  top_k: 5\n")
    assert load_settings(path).scheduler.top_k == 5


def test_environment_overrides_file_and_unknown_variables_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("scheduler:\n  top_k: 5\n")
    monkeypatch.setenv("MEMSCHED_SCHEDULER__TOP_K", "7")
    assert load_settings(path).scheduler.top_k == 7
    monkeypatch.setenv("MEMSCHED_SCHEDULER__TOPK", "7")
    with pytest.raises(ConfigError, match="MEMSCHED_SCHEDULER__TOPK"):
        load_settings(path)


def test_public_address_needs_explicit_consent(tmp_path: Path) -> None:
    from memsched_grpc.server import SchedulerServer

    settings = load_settings(server={"address": "0.0.0.0:0"}, storage={"data_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="allow_public_without_auth"):
        SchedulerServer(settings)
