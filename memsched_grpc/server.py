"""Build, start and stop the service: workers first (before any grpc object), then the gRPC server with
health and reflection. Shutdown order: health NOT_SERVING -> server.stop(grace) -> drain -> workers -> LMDB."""

from __future__ import annotations

import logging
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from memsched.v1 import scheduler_pb2, scheduler_pb2_grpc
from memsched_grpc.addresses import is_loopback
from memsched_grpc.auth import Authenticator
from memsched_grpc.config import Settings
from memsched_grpc.errors import ConfigError
from memsched_grpc.metrics import Metrics
from memsched_grpc.scheduler import MemScheduler
from memsched_grpc.servicer import SchedulerServicer
from memsched_grpc.web import DashboardServer, authorize_with

log = logging.getLogger(__name__)
SERVICE_NAME = scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name


class SchedulerServer:
    """A running memsched: the scheduler core plus its gRPC face."""

    def __init__(self, settings: Settings) -> None:
        public = not is_loopback(settings.server.address)
        if public and not settings.auth.enabled and not settings.server.allow_public_without_auth:
            raise ConfigError(
                f"server.address {settings.server.address!r} is not loopback and auth.tokens is empty; "
                "configure tokens, or set server.allow_public_without_auth: true to listen there anyway"
            )
        self.settings = settings
        self.scheduler = MemScheduler(settings)
        self.port = 0
        self._server: grpc.Server | None = None
        self._health = health.HealthServicer()
        self.metrics = Metrics(self.scheduler, settings.metrics) if settings.metrics.enabled else None
        self.web: DashboardServer | None = None

    def start(self) -> int:
        """Start everything; returns the bound port."""
        self.scheduler.start()  # spawns workers: must come before the first grpc object
        cfg = self.settings.server
        if not is_loopback(cfg.address) and not self.settings.auth.enabled:
            log.warning("listening on non-loopback address %s WITHOUT authentication", cfg.address)
        options = [
            ("grpc.max_receive_message_length", cfg.max_receive_message_bytes),
            ("grpc.max_send_message_length", cfg.max_receive_message_bytes),
        ]
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=cfg.max_stream_threads, thread_name_prefix="rpc"),
            options=options,
            maximum_concurrent_rpcs=cfg.max_concurrent_rpcs,
        )
        servicer = SchedulerServicer(self.scheduler, Authenticator(self.settings.auth))
        scheduler_pb2_grpc.add_SchedulerServicer_to_server(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
        )
        try:
            self.port = self._bind(server)
            if self.port == 0:
                raise ConfigError(f"server.address: cannot bind {cfg.address}")
        except ConfigError:
            self.scheduler.stop(0)
            raise
        server.start()
        self._server = server
        for name in ("", SERVICE_NAME):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.metrics is not None:
            self._start_metrics()
        if self.settings.web.enabled:
            self._start_web()
        log.info(
            "memsched %s listening on %s (port %d), %d workers, data in %s",
            self.scheduler.version,
            cfg.address,
            self.port,
            self.settings.workers.count,
            self.settings.storage.data_dir,
        )
        return self.port

    def _bind(self, server: grpc.Server) -> int:
        tls = self.settings.tls
        if not tls.enabled:
            return server.add_insecure_port(self.settings.server.address)
        assert tls.cert_file is not None and tls.key_file is not None
        try:
            key, cert = tls.key_file.read_bytes(), tls.cert_file.read_bytes()
            client_ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
        except OSError as e:
            raise ConfigError(f"tls: cannot read a certificate or key file: {e}") from e
        credentials = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )
        return server.add_secure_port(self.settings.server.address, credentials)

    def _start_web(self) -> None:
        """The dashboard takes the gRPC API's tokens; if it cannot start, nothing stays running."""
        auth = self.settings.auth
        try:
            self.web = DashboardServer(
                self.scheduler,
                self.settings.web,
                authorize_with(Authenticator(auth)) if auth.enabled else None,
                self.settings.server.allow_public_without_auth,
            )
            self.web.start()
        except ConfigError:
            self.web = None
            self.stop()
            raise

    def _start_metrics(self) -> None:
        """If the metrics endpoint cannot start, nothing stays running."""
        assert self.metrics is not None
        try:
            self.metrics.start()
        except ConfigError:
            self.stop()
            raise

    @property
    def address(self) -> str:
        host = self.settings.server.address.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    def stop(self) -> None:
        grace = self.settings.server.grace_seconds
        if self.metrics is not None:
            self.metrics.stop()  # first: scrapes read the scheduler's LMDB, which stop() closes
        if self.web is not None:
            self.web.stop()  # first: its pages read the scheduler's LMDB, which stop() closes
        self._health.enter_graceful_shutdown()
        if self._server is not None:
            self.scheduler.refuse_new()
            # grpc sets this event once every call is gone; a call wedged inside grpc itself (seen after
            # streams whose requests failed to decode) would hold it forever, so the wait is bounded.
            if not self._server.stop(grace).wait(grace + 5):
                log.warning("gRPC server did not report shutdown %.0fs after the grace period; going on", 5.0)
        self.scheduler.stop(drain_seconds=grace)
        log.info("memsched stopped")

    def wait(self) -> None:
        if self._server is not None:
            self._server.wait_for_termination()
