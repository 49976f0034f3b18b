"""Observability: the Prometheus endpoint scraped over HTTP from a real server, and JSON log lines."""

from __future__ import annotations

import io
import json
import logging
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from memsched.v1 import scheduler_pb2
from memsched_grpc.logging_setup import JsonFormatter
from tests.conftest import item


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_endpoint_reports_queue_items_latency_and_partitions(make_server: Any) -> None:
    server, client = make_server(metrics={"enabled": True, "address": "127.0.0.1:0", "per_cube": True})
    assert server.metrics is not None and server.metrics.port > 0
    before = scrape(server.metrics.port)
    assert before[("memsched_queue_depth", ())] == 0
    assert before[("memsched_workers", ())] == 2
    assert before[("memsched_worker_restarts_total", ())] == 0

    chat = [{"role": "user", "content": "I am allergic to nuts."}, {"role": "assistant", "content": "Noted."}]
    client.session(
        [item(content=json.dumps(chat)), item(label="query", content="allergy?"), item(label="poison", cube="c2")]
    )
    client.stub.Submit(scheduler_pb2.SubmitRequest(items=[item(label="slow", content="0.05", cube="c3")]))
    assert client.wait_idle().idle

    m = scrape(server.metrics.port)
    assert m[("memsched_items_finished_total", (("label", "add"), ("status", "completed")))] == 1
    assert m[("memsched_items_finished_total", (("label", "query"), ("status", "completed")))] == 1
    assert m[("memsched_items_finished_total", (("label", "poison"), ("status", "failed")))] == 1
    assert m[("memsched_handler_seconds_count", (("label", "slow"),))] == 1
    assert m[("memsched_handler_seconds_sum", (("label", "slow"),))] >= 0.05
    assert m[("memsched_handler_seconds_bucket", (("label", "slow"), ("le", "0.025")))] == 0
    assert m[("memsched_log_items_total", (("label", "addMemory"),))] == 2
    assert m[("memsched_items", (("status", "in_progress"),))] == 0
    assert m[("memsched_partition_items", (("memory_type", "UserMemory"),))] == 1
    assert m[("memsched_partition_items", (("memory_type", "LongTermMemory"),))] == 1
    assert m[("memsched_partition_items", (("memory_type", "WorkingMemory"),))] == 2
    per_cube = (("mem_cube_id", "c1"), ("memory_type", "WorkingMemory"), ("user_id", "u1"))
    assert m[("memsched_cube_partition_items", per_cube)] == 2
    assert m[("memsched_cubes", ())] >= 1


def test_metrics_are_off_by_default(make_server: Any) -> None:
    server, _ = make_server()
    assert server.metrics is None


def test_json_formatter_carries_ids_and_tracebacks() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("memsched.test.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("item %s failed", "i1", extra={"item_id": "i1", "user_id": "u1", "mem_cube_id": "c1"})
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("handler crashed")
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "item i1 failed" and first["level"] == "WARNING"
    assert (first["item_id"], first["user_id"], first["mem_cube_id"]) == ("i1", "u1", "c1")
    assert "ValueError: boom" in second["exception"]


def test_serve_writes_json_log_lines(server_process: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMSCHED_LOG_FORMAT", "json")
    proc = server_process()
    proc.start().close()
    assert proc.terminate() == 0
    records = []
    for line in (proc.tmp_path / "server.log").read_text().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    messages = [r["message"] for r in records if r["logger"] == "memsched_grpc.server"]
    assert any("listening on" in m for m in messages) and "memsched stopped" in messages
