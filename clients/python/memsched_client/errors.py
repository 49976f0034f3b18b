"""Client-side errors: a failed RPC becomes a named exception carrying the status code, the message and the
``google.rpc.BadRequest`` field violations the server attached, so callers need not decode trailers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from memsched_client.models import Rejection

_STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    """One broken rule: the field (``items[3].user_id``) and the rule in words."""

    field: str
    description: str


class MemschedError(Exception):
    """Base class of everything this client raises."""


class RpcError(MemschedError):
    """An RPC failed. ``code`` is the gRPC status code; ``violations`` lists bad fields (INVALID_ARGUMENT)."""

    def __init__(self, code: grpc.StatusCode, message: str, violations: list[FieldViolation] | None = None) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.violations = violations or []


class InvalidArgument(RpcError):
    """The request breaks a rule; ``violations`` says which."""


class NotFound(RpcError):
    """No such item, task or cube."""


class PermissionDenied(RpcError):
    """The token may not act for this user."""


class Unauthenticated(RpcError):
    """No token, or an unknown one."""


class ResourceExhausted(RpcError):
    """The server's backlog is full; resend later with the same item_ids."""


class Unavailable(RpcError):
    """The server is down or shutting down; resend with the same item_ids."""


class DeadlineExceeded(RpcError):
    """The call's deadline passed."""


class Cancelled(RpcError):
    """The call was cancelled (by this side, or the server went away)."""


class ItemsRejected(MemschedError):
    """Items sent on a session were refused in-band; the others were accepted."""

    def __init__(self, rejections: list[Rejection]) -> None:
        super().__init__("; ".join(str(r) for r in rejections[:5]) + ("; ..." if len(rejections) > 5 else ""))
        self.rejections = rejections


_BY_CODE: dict[grpc.StatusCode, type[RpcError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
}


def _violations(trailers: Any) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    for key, value in trailers or ():
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                out.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
    return out


def from_grpc(error: grpc.RpcError) -> RpcError:
    """Translate a grpc (sync or asyncio) error; works on both because both are calls with trailers."""
    code_fn = getattr(error, "code", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details_fn = getattr(error, "details", None)
    message = (details_fn() if callable(details_fn) else None) or str(error)
    trailers_fn = getattr(error, "trailing_metadata", None)
    trailers = trailers_fn() if callable(trailers_fn) else None
    cls = _BY_CODE.get(code, RpcError)
    return cls(code, message, _violations(trailers))
