"""What the sync and asyncio clients share: connection options, credentials, item coercion."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from memsched.v1 import items_pb2
from memsched_client.models import ItemLike, ScheduleMessageItem, to_proto_item

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 30.0
WAIT_SLACK_SECONDS = 10.0
"""WaitIdle's deadline is its server-side wait plus this, so a slow answer is not mistaken for a hang."""


@dataclass(frozen=True)
class TlsOptions:
    """TLS for the channel. Without ``root_certificates`` the system's roots are used; with ``private_key`` and
    ``certificate_chain`` the client presents a certificate (mutual TLS)."""

    root_certificates: bytes | None = None
    private_key: bytes | None = None
    certificate_chain: bytes | None = None
    server_name: str | None = None
    """Override the name checked against the server certificate (tests, IP addresses)."""

    @classmethod
    def from_files(
        cls,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        server_name: str | None = None,
    ) -> TlsOptions:
        def read(path: str | Path | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        if (cert_file is None) != (key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS)")
        return cls(read(ca_file), read(key_file), read(cert_file), server_name)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.root_certificates, self.private_key, self.certificate_chain)

    def options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def channel_options(tls: TlsOptions | None, extra: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    base: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ]
    return [*base, *(tls.options() if tls else []), *extra]


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The bearer token travels as call metadata on every call: call credentials would need TLS, and a
    loopback server without TLS may still require tokens."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def as_items(items: ItemLike | Iterable[ItemLike]) -> list[items_pb2.ScheduleMessageItem]:
    """One item (model, protobuf or dict) or an iterable of them, as protobuf messages."""
    if isinstance(items, ScheduleMessageItem | items_pb2.ScheduleMessageItem | dict):
        return [to_proto_item(items)]
    return [to_proto_item(i) for i in items]


HEALTH_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
