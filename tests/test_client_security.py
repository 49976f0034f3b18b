"""The Python client and the CLI with bearer tokens and mutual TLS, against real servers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from memsched_client import (
    MemschedClient,
    PermissionDenied,
    RemoteMemScheduler,
    ScheduleMessageItem,
    TlsOptions,
    Unauthenticated,
)

from memsched_grpc.cli import main
from tests.test_security import ALICE, TOKENS, _cert, _write


def msg(user: str, content: str) -> ScheduleMessageItem:
    return ScheduleMessageItem(user_id=user, mem_cube_id="c1", label="add", content=content)


def test_token_on_every_call(make_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server, _ = make_server(auth=TOKENS)
    with MemschedClient(server.address, token=ALICE) as alice:
        assert alice.submit(msg("alice", "alice likes tea"))
        assert alice.wait_idle("alice").idle
        assert [c.user_id for c in alice.list_cubes("alice")] == ["alice"]
        with pytest.raises(PermissionDenied):
            alice.submit(msg("bob", "written by alice"))
        with pytest.raises(PermissionDenied):
            alice.get_memory("bob", "c1")
    with MemschedClient(server.address) as anonymous, pytest.raises(Unauthenticated):
        anonymous.get_memory("alice", "c1")

    adapter = RemoteMemScheduler(server.address, token=ALICE)
    adapter.start()
    try:
        adapter.submit_messages(msg("alice", "alice likes green tea with honey"))
        assert adapter.wait_until_handled(timeout=30)
        assert [x["label"] for x in adapter.get_web_log_messages()] == ["addMemory"]
    finally:
        adapter.stop()

    token_file = tmp_path / "token"
    token_file.write_text(ALICE + "\n")
    args = ["memory", "--address", server.address, "--user", "alice", "--cube", "c1", "--type", "long_term"]
    assert main([*args, "--token-file", str(token_file)]) == 0
    assert "alice likes tea" in capsys.readouterr().out
    assert main(args) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err


def test_mutual_tls(make_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = _cert("memsched test CA", None, ca=True)
    ca_path, _ = _write(tmp_path / "ca", *ca)
    server_cert, server_key = _write(tmp_path / "server", *_cert("localhost", ca))
    client_cert, client_key = _write(tmp_path / "client", *_cert("client", ca))
    server, _ = make_server(
        tls={"cert_file": str(server_cert), "key_file": str(server_key), "client_ca_file": str(ca_path)}
    )
    address = f"localhost:{server.port}"
    tls = TlsOptions.from_files(ca_path, client_cert, client_key)
    with MemschedClient(address, tls=tls) as client:
        assert client.submit(msg("u1", "over mutual TLS"))
        assert "query" in client.get_info().labels

    files = ["--ca-file", str(ca_path), "--cert-file", str(client_cert), "--key-file", str(client_key)]
    assert main(["health", "--address", address, *files]) == 0
    assert capsys.readouterr().out == "SERVING\n"
    # without a client certificate the handshake fails: the server is unreachable for this client
    assert main(["health", "--address", address, "--ca-file", str(ca_path), "--timeout", "2"]) == 3
