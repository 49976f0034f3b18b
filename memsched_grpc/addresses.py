"""host:port parsing and the loopback test shared by every listener (gRPC, metrics, dashboard): each one
refuses or warns about a public address the same way."""

from __future__ import annotations

import ipaddress

from memsched_grpc.errors import ConfigError


def split_address(address: str, setting: str) -> tuple[str, int]:
    """("host", port) of ``host:port`` (IPv6 hosts in brackets); an empty host means 127.0.0.1."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{setting} {address!r} must be host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


def is_loopback_host(host: str) -> bool:
    """True for localhost and loopback IPs; any other name counts as public."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback(address: str) -> bool:
    return is_loopback_host(address.rpartition(":")[0].strip("[]") or "127.0.0.1")
