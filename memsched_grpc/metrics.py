"""Prometheus metrics of a running server, served over HTTP at ``/metrics`` when ``metrics.enabled``.

Counters and the latency histogram are fed by the scheduler's finish observer (one call per batch of
finished items, on the dispatcher's finishing thread, so it only increments). Gauges (queue depth,
items in flight, partition sizes, worker restarts) are read when Prometheus scrapes, so an idle server
costs nothing. Each server has its own registry: two servers in one process (tests) never share series.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_wsgi_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from memsched_grpc.addresses import is_loopback_host, split_address
from memsched_grpc.config import MetricsConfig
from memsched_grpc.dispatcher import Finished
from memsched_grpc.errors import ConfigError
from memsched_grpc.scheduler import MemScheduler

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Handlers run from sub-millisecond (answer) to seconds (a large add or an LLM step)."""
PARTITIONS = (
    ("WorkingMemory", "working_memory_size"),
    ("LongTermMemory", "long_term_memory_size"),
    ("UserMemory", "user_memory_size"),
    ("ActivationMemory", "transformed_act_memory_size"),
)


class _StateCollector(Collector):
    """Gauges read from the scheduler at scrape time."""

    def __init__(self, scheduler: MemScheduler, per_cube: bool) -> None:
        self.scheduler = scheduler
        self.per_cube = per_cube

    def collect(self) -> Iterable[Metric]:
        s = self.scheduler
        backlog = s.dispatcher.backlog
        pending = s.dispatcher.pending_by_cube()
        in_flight = sum(pending.values())
        yield GaugeMetricFamily(
            "memsched_queue_depth", "Accepted items not finished yet (waiting or in progress).", value=backlog
        )
        items = GaugeMetricFamily("memsched_items", "Unfinished items by status.", labels=["status"])
        items.add_metric(["waiting"], max(0, backlog - in_flight))
        items.add_metric(["in_progress"], in_flight)
        yield items
        yield GaugeMetricFamily("memsched_workers", "Worker processes.", value=s.dispatcher.pool.size)
        yield CounterMetricFamily(
            "memsched_worker_restarts", "Worker processes replaced after dying.", value=s.dispatcher.pool.restarts()
        )
        yield GaugeMetricFamily("memsched_start_time_seconds", "When the server started (unix time).", s.started_at)
        info = GaugeMetricFamily("memsched_build_info", "The server's version.", labels=["version"])
        info.add_metric([s.version], 1)
        yield info

        cubes = s.list_cubes("")
        yield GaugeMetricFamily("memsched_cubes", "Cubes the server holds.", value=len(cubes))
        totals = GaugeMetricFamily(
            "memsched_partition_items", "Memories per partition, summed over cubes.", labels=["memory_type"]
        )
        per_cube = GaugeMetricFamily(
            "memsched_cube_partition_items",
            "Memories per partition of each cube.",
            labels=["user_id", "mem_cube_id", "memory_type"],
        )
        sums = dict.fromkeys((name for name, _ in PARTITIONS), 0)
        for cube in cubes:
            st = cube.state
            sizes = {
                "WorkingMemory": len(st.working),
                "LongTermMemory": st.long_term_size,
                "UserMemory": st.user_size,
                "ActivationMemory": st.activation_size,
            }
            for name, value in sizes.items():
                sums[name] += value
                if self.per_cube:
                    per_cube.add_metric([st.user_id, st.mem_cube_id, name], value)
        for name, value in sums.items():
            totals.add_metric([name], value)
        yield totals
        if self.per_cube:
            yield per_cube


class Metrics:
    """The metrics of one server. Create it before items flow (it observes finishes), ``start`` to serve."""

    def __init__(self, scheduler: MemScheduler, config: MetricsConfig) -> None:
        self.config = config
        self.registry = CollectorRegistry()
        self.finished = Counter(
            "memsched_items_finished",
            "Items that left the scheduler, by label and final status (completed, failed).",
            ["label", "status"],
            registry=self.registry,
        )
        self.handler_seconds = Histogram(
            "memsched_handler_seconds",
            "Handler time per item, by label (the last attempt).",
            ["label"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.log_items = Counter(
            "memsched_log_items",
            "Log items (web-log entries) produced, by web-log label.",
            ["label"],
            registry=self.registry,
        )
        self.registry.register(_StateCollector(scheduler, config.per_cube))
        scheduler.add_finish_observer(self.observe)
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def observe(self, finished: list[Finished]) -> None:
        for f in finished:
            label = f.record.label
            self.finished.labels(label, f.state.value).inc()
            if f.handler_seconds > 0:
                self.handler_seconds.labels(label).observe(f.handler_seconds)
            for item in f.logs:
                self.log_items.labels(item.label).inc()

    def start(self) -> int:
        """Serve /metrics on ``config.address``; returns the bound port."""
        host, port = split_address(self.config.address, "metrics.address")
        if not is_loopback_host(host):
            log.warning("metrics endpoint on non-loopback address %s: anyone who reaches it can read it", host)
        try:
            self._httpd, self._thread = start_wsgi_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise ConfigError(f"metrics.address: cannot bind {self.config.address}: {e}") from e
        self.port = self._httpd.server_port
        log.info("metrics on http://%s:%d/metrics", host, self.port)
        return self.port

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(5)
