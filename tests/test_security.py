"""Token authentication per user, TLS and mutual TLS, against real servers."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from memsched.v1 import scheduler_pb2, scheduler_pb2_grpc
from tests.conftest import collect, item

ALICE = "alice-token-0123456789"
ADMIN = "admin-token-0123456789"
TOKENS = {"tokens": [{"token": ALICE, "users": ["alice"], "name": "alice"}, {"token": ADMIN, "users": ["*"]}]}


def _stub(address: str, token: str | None) -> tuple[grpc.Channel, Any]:
    channel = grpc.insecure_channel(address)
    if token:
        channel = grpc.intercept_channel(channel, _Bearer(token))
    return channel, scheduler_pb2_grpc.SchedulerStub(channel)


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self.metadata = [("authorization", f"Bearer {token}")]

    def _details(self, details: Any) -> Any:
        return details._replace(metadata=[*(details.metadata or []), *self.metadata])

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


def _code(fn: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        result = fn()
        if hasattr(result, "__next__"):
            next(result)
    return err.value.code()  # type: ignore[no-any-return]


def test_a_token_acts_only_for_its_users(make_server: Any) -> None:
    server, _ = make_server(auth=TOKENS)
    _, alice = _stub(server.address, ALICE)
    _, admin = _stub(server.address, ADMIN)
    _, anonymous = _stub(server.address, None)
    _, forged = _stub(server.address, "not-a-known-token-at-all")

    mine = item(user="alice", content="alice likes tea")
    theirs = item(user="bob", content="bob likes coffee")
    assert admin.Submit(scheduler_pb2.SubmitRequest(items=[theirs])).acks
    assert alice.Submit(scheduler_pb2.SubmitRequest(items=[mine])).acks

    # submitting for another user: refused whole (unary) or in-band (stream), nothing of bob's is stored
    intruder = item(user="bob", content="written by alice")
    assert (
        _code(lambda: alice.Submit(scheduler_pb2.SubmitRequest(items=[intruder]))) == grpc.StatusCode.PERMISSION_DENIED
    )
    streamed = collect(
        list(alice.Session(iter([scheduler_pb2.SessionRequest(items=[intruder, item(user="alice", content="mine")])])))
    )
    assert [(r.item_id, r.code, r.field) for r in streamed["rejections"]] == [(intruder.item_id, 7, "user_id")]
    assert len(streamed["acks"]) == 1

    # reading, watching and inspecting another user's cubes
    denied = grpc.StatusCode.PERMISSION_DENIED
    assert _code(lambda: alice.GetMemory(scheduler_pb2.GetMemoryRequest(user_id="bob", mem_cube_id="c1"))) == denied
    assert _code(lambda: alice.WatchLogs(scheduler_pb2.WatchLogsRequest(user_id="bob", replay=5))) == denied
    assert _code(lambda: alice.GetStatus(scheduler_pb2.GetStatusRequest(item_id=theirs.item_id))) == denied
    assert _code(lambda: alice.WaitIdle(scheduler_pb2.WaitIdleRequest(user_id="bob"))) == denied
    assert (
        _code(lambda: alice.GetCubeState(scheduler_pb2.GetCubeStateRequest(user_id="bob", mem_cube_id="c1"))) == denied
    )
    assert _code(lambda: alice.ListCubes(scheduler_pb2.ListCubesRequest(user_id="bob"))) == denied
    assert (
        _code(lambda: alice.RedriveDeadLetters(scheduler_pb2.RedriveDeadLettersRequest(item_ids=[theirs.item_id])))
        == denied
    )

    assert admin.WaitIdle(scheduler_pb2.WaitIdleRequest(user_id="bob")).idle
    assert alice.WaitIdle(scheduler_pb2.WaitIdleRequest(user_id="alice")).idle
    assert {c.user_id for c in alice.ListCubes(scheduler_pb2.ListCubesRequest()).cubes} == {"alice"}
    assert {c.user_id for c in admin.ListCubes(scheduler_pb2.ListCubesRequest()).cubes} == {"alice", "bob"}
    bob_memory = admin.GetMemory(scheduler_pb2.GetMemoryRequest(user_id="bob", mem_cube_id="c1"))
    assert bob_memory.sizes.long_term_memory_size == 1

    unauthenticated = grpc.StatusCode.UNAUTHENTICATED
    assert _code(lambda: anonymous.GetInfo(scheduler_pb2.GetInfoRequest())) == unauthenticated
    assert _code(lambda: forged.Submit(scheduler_pb2.SubmitRequest(items=[item(user="alice")]))) == unauthenticated
    assert (
        _code(lambda: anonymous.Session(iter([scheduler_pb2.SessionRequest(items=[item(user="alice")])])))
        == unauthenticated
    )


def _cert(
    name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None, ca: bool = False
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256()), key


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    cert_path, key_path = path.with_suffix(".crt"), path.with_suffix(".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def _tls_stub(port: int, ca: Path, client: tuple[Path, Path] | None = None) -> Any:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=client[1].read_bytes() if client else None,
        certificate_chain=client[0].read_bytes() if client else None,
    )
    channel = grpc.secure_channel(f"localhost:{port}", credentials)
    return scheduler_pb2_grpc.SchedulerStub(channel)


def test_tls_and_mutual_tls(make_server: Any, tmp_path: Path) -> None:
    ca = _cert("memsched test CA", None, ca=True)
    ca_path, _ = _write(tmp_path / "ca", *ca)
    server_cert, server_key = _write(tmp_path / "server", *_cert("localhost", ca))
    client_files = _write(tmp_path / "client", *_cert("client", ca))

    tls_server, _ = make_server(tmp_path / "tls-data", tls={"cert_file": str(server_cert), "key_file": str(server_key)})
    stub = _tls_stub(tls_server.port, ca_path)
    assert stub.Submit(scheduler_pb2.SubmitRequest(items=[item(content="over tls")])).acks
    plain = scheduler_pb2_grpc.SchedulerStub(grpc.insecure_channel(f"127.0.0.1:{tls_server.port}"))
    assert _code(lambda: plain.GetInfo(scheduler_pb2.GetInfoRequest(), timeout=5)) == grpc.StatusCode.UNAVAILABLE

    mtls_server, _ = make_server(
        tmp_path / "mtls-data",
        tls={"cert_file": str(server_cert), "key_file": str(server_key), "client_ca_file": str(ca_path)},
    )
    with_cert = _tls_stub(mtls_server.port, ca_path, client_files)
    info = with_cert.GetInfo(scheduler_pb2.GetInfoRequest())
    assert "query" in info.labels
    without_cert = _tls_stub(mtls_server.port, ca_path)
    assert _code(lambda: without_cert.GetInfo(scheduler_pb2.GetInfoRequest(), timeout=5)) == grpc.StatusCode.UNAVAILABLE
