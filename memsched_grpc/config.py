"""Configuration: embedded defaults, then a YAML file, then MEMSCHED_* environment variables (highest).

An unknown key anywhere (file or environment) is an error that names it: MemOS silently ignored
configuration keys its documentation promised, and users only learnt it from the behaviour.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from memsched_grpc.errors import ConfigError
from memsched_grpc.models import MemoryCapacities
from memsched_grpc.retrieval.settings import RetrievalConfig

ENV_PREFIX = "MEMSCHED_"
_yaml_file: ContextVar[Path | None] = ContextVar("memsched_yaml_file", default=None)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(Section):
    address: str = "127.0.0.1:50051"
    """host:port to listen on; port 0 picks a free port."""
    max_stream_threads: int = Field(default=64, ge=2)
    """Threads serving RPCs; one is held per live stream (sync gRPC)."""
    max_concurrent_rpcs: int = Field(default=256, ge=1)
    """RPCs beyond this get RESOURCE_EXHAUSTED instead of queueing silently."""
    max_receive_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    grace_seconds: float = Field(default=10.0, ge=0)
    """How long in-flight RPCs may finish on shutdown."""
    allow_public_without_auth: bool = False
    """Explicit consent to listen on a non-loopback address with no tokens configured."""


class TlsConfig(Section):
    """Server TLS; with ``client_ca_file`` set, clients must present a certificate it signed (mutual TLS)."""

    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None

    @model_validator(mode="after")
    def _complete(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be set together")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("client_ca_file (mutual TLS) needs cert_file and key_file")
        return self


class TokenConfig(Section):
    """A bearer token and the user ids it may act for ("*": every user)."""

    token: SecretStr = Field(min_length=16)
    users: list[str] = Field(min_length=1)
    name: str = ""
    """Shown in logs instead of the token."""


class AuthConfig(Section):
    """Token authentication through the ``authorization: Bearer <token>`` call metadata; off when empty."""

    tokens: list[TokenConfig] = Field(default_factory=list)

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)


class StorageConfig(Section):
    data_dir: Path = Path("memsched-data")
    map_size_mb: int = Field(default=256, ge=1)
    """Initial LMDB map size per environment; it grows by itself when full."""
    shards: int = Field(default=8, ge=1, le=256)
    """Cube partitions are spread over this many LMDB environments; fixed when the data dir is created."""
    history_per_cube: int = Field(default=1000, ge=1)
    """Log items kept per cube for replay."""
    sync: bool = True
    """fsync every commit; turning it off risks losing the latest acknowledged items on power loss."""
    inbox_writemap: bool = False
    """The inbox writes through LMDB's shared mapping: about a fifth of the bytes written to disk per acknowledged
    item (on Linux 6.x with ext4), for ~50 µs more CPU per commit in page faults, and its whole map allocated on
    disk up front (``map_size_mb``, then each growth). For disks that are busy or wear; see Environment."""
    status_retention_hours: float = Field(default=168.0, gt=0)
    """Finished items' status records are kept this long (default a week), and so is the memory of their
    item_ids: a duplicate resent within it is recognised; dead letters stay until re-driven."""


class WorkerConfig(Section):
    count: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=256)
    max_attempts: int = Field(default=3, ge=1)
    """A failing message is tried this many times, then reported failed (never completed)."""
    retry_backoff_seconds: float = Field(default=0.2, ge=0)
    retry_backoff_max_seconds: float = Field(default=10.0, ge=0)
    batch_size: int = Field(default=512, ge=1)
    """Messages per hand-off to a worker and per worker transaction."""
    held_batches: int = Field(default=2, ge=1)
    """A worker holds at most this many batches of unfinished items; the rest wait in the server, per cube,
    where a cube with a waiting query is handed out first. Larger: more throughput per worker round, but a
    query can wait behind more of other cubes' work. Cubes with a waiting query may use one batch more, so
    a query is handed out at once even when the worker's credit is spent."""
    round_seconds: float = Field(default=0.025, gt=0)
    """A worker's round (one transaction per shard) ends after this long, so that a query that arrived
    meanwhile, which goes first in the next round, waits for at most this much of other cubes' work. Longer:
    fewer commits per item under load, slower queries."""
    nice: int = Field(default=5, ge=0, le=19)
    """Workers run this much nicer than the server. The server process is the one stage every item passes through
    (accept, acknowledge, dispatch, results and completions to the clients) and its GIL keeps it to one core; when
    the workers are behind, they take every core they are given, and a starved server slows all of that. Niced,
    the workers still get every cycle the server leaves: unbatched ingest went from 0.40 to 0.60 of the echo at 5,
    and neither handled throughput nor query latency fell (bench/RESULTS.md). 0: the kernel's fair share."""
    boot_timeout_seconds: float = Field(default=60.0, gt=0)
    max_cached_cubes: int = Field(default=512, ge=1)
    """Cubes a worker keeps loaded (state and index); the least recently used is dropped beyond it."""
    snapshot_seconds: float = Field(default=10.0, ge=0)
    """At a graceful stop, a worker saves the indexes of its loaded cubes (most recently used first, those not saved
    as they are) for up to this long, so that their next load reads them instead of rebuilding them from every
    memory (memsched_grpc/snapshot.py): ~0.1 s against ~1 s for a 10k-memory cube. A snapshot takes ~1.5 KB a memory
    on disk (a 10k cube ~15 MB, in the shard's ``snapshots`` directory) and takes ~0.1 s to store. 0: no snapshots.
    The server waits this much longer for its workers to stop."""
    preload_snapshots: bool = True
    """After a start, a worker loads the cubes of its shards that have a valid snapshot while it is idle, one at a time
    (a 10k-memory cube: ~0.1 s, which a message arriving meanwhile waits for at most), up to ``max_cached_cubes``: the
    cubes held before a graceful stop are loaded before their first query asks."""


class LimitsConfig(Section):
    max_content_bytes: int = Field(default=1024 * 1024, ge=1)
    max_id_bytes: int = Field(default=256, ge=1)
    max_backlog: int = Field(default=100_000, ge=1)
    """Accepted but unfinished items; beyond it streams stop being read and Submit gets RESOURCE_EXHAUSTED."""
    timestamp_skew_days: int = Field(default=3650, ge=0)
    """Timestamps further than this from the server's clock are refused."""


class ScoreWeights(Section):
    """importance = relevance·w + keyword·w + usage·w (MemOS: 0.9 / 0.05 / 0.05)."""

    relevance: float = Field(default=0.9, ge=0)
    keyword: float = Field(default=0.05, ge=0)
    usage: float = Field(default=0.05, ge=0)


class SchedulerConfig(Section):
    capacities: MemoryCapacities = Field(default_factory=MemoryCapacities)
    top_k: int = Field(default=20, ge=1)
    """Candidates retrieved per query from LongTermMemory and UserMemory together."""
    context_window_size: int = Field(default=5, ge=1)
    """Recent queries whose keywords feed the keyword score."""
    weights: ScoreWeights = Field(default_factory=ScoreWeights)
    usage_cap: int = Field(default=10, ge=1)
    """Usage counts are capped at this before scoring."""
    enable_activation_memory: bool = False
    act_mem_update_interval: float = Field(default=300.0, ge=0)
    """Seconds between activation memory rebuilds."""
    activation_top_n: int = Field(default=10, ge=1)
    dedup_threshold: float = Field(default=0.9, gt=0, le=1)
    """An added memory whose token cosine with a stored one reaches this updates it instead."""
    working_dedup_threshold: float = Field(default=0.75, gt=0, le=1)
    """Working-memory candidates this similar to a better one are dropped (MemOS: TF-IDF cosine 0.75)."""
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    """How queries find memories: lexical and conversational signals, optional embedder, LLM steps, reranker."""


class MetricsConfig(Section):
    """The Prometheus endpoint (memsched_grpc/metrics.py): queue depth, items by status, handler latency,
    partition sizes, worker restarts."""

    enabled: bool = False
    address: str = "127.0.0.1:9464"
    """host:port serving /metrics; port 0 picks a free port."""
    per_cube: bool = False
    """Also export each cube's partition sizes (one series per cube and partition: mind the cardinality)."""


class WebConfig(Section):
    """The live dashboard: a read-only web page of what the scheduler does (memsched_grpc/web)."""

    enabled: bool = False
    address: str = "127.0.0.1:8080"
    """host:port for the page; port 0 picks a free port. Off loopback it needs auth tokens or
    server.allow_public_without_auth, like the gRPC address."""
    replay: int = Field(default=200, ge=0, le=1000)
    """Recent log items of a cube shown at once when the page opens it."""
    max_streams: int = Field(default=16, ge=1)
    """Pages watching live at once (each holds a thread and a feed subscription); more get 503."""


class Settings(BaseSettings):
    """All of memsched's configuration."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid")

    server: ServerConfig = Field(default_factory=ServerConfig)
    tls: TlsConfig = Field(default_factory=TlsConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    workers: WorkerConfig = Field(default_factory=WorkerConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    web: WebConfig = Field(default_factory=WebConfig)
    handlers: dict[str, str] = Field(default_factory=dict)
    """Extra handlers, label -> "package.module:function"; imported by every worker."""
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    """text: readable lines; json: one JSON object per line (time, level, logger, message, ids, traceback)."""
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return value.upper()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls))


class _YamlSource(PydanticBaseSettingsSource):
    """Reads the file named by load_settings; a missing or malformed file is an error, not an empty config."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _yaml_file.get()
        if path is None:
            return {}
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        return data


def _check_environment() -> None:
    """Refuse MEMSCHED_* variables that name no setting (pydantic-settings would ignore them)."""
    for name in os.environ:
        if not name.startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        model: type[BaseModel] = Settings
        for i, part in enumerate(parts):
            field = model.model_fields.get(part)
            if field is None:
                raise ConfigError(f"unknown setting in environment variable {name}: {part!r} is not a key")
            annotation = field.annotation
            if i < len(parts) - 1 and isinstance(annotation, type) and issubclass(annotation, BaseModel):
                model = annotation
            else:
                break


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Build Settings from defaults, ``path`` (YAML), the environment and ``overrides`` (highest)."""
    _check_environment()
    token = _yaml_file.set(path)
    try:
        return Settings(**overrides)
    except ValidationError as e:
        raise ConfigError(_describe(e)) from e
    finally:
        _yaml_file.reset(token)


def _describe(error: ValidationError) -> str:
    lines = []
    for detail in error.errors():
        where = ".".join(str(p) for p in detail["loc"])
        rule = "unknown key" if detail["type"] == "extra_forbidden" else detail["msg"]
        lines.append(f"{where}: {rule}")
    return "invalid configuration: " + "; ".join(lines)
