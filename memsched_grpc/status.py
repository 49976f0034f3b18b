"""The one place where domain exceptions become gRPC statuses, with google.rpc details a client can decode."""

from __future__ import annotations

from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from memsched_grpc.auth import PermissionDenied, Unauthenticated
from memsched_grpc.errors import InvalidItem, InvalidRequest, NotFound, Overloaded, ShuttingDown, StorageError
from memsched_grpc.scheduler import InvalidItems


def _status(code: int, message: str, detail: error_details_pb2.BadRequest | None = None) -> grpc.Status:
    status = status_pb2.Status(code=code, message=message)
    if detail is not None:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return rpc_status.to_status(status)


def _bad_request(errors: list[tuple[str, str]]) -> error_details_pb2.BadRequest:
    return error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in errors]
    )


def to_status(error: Exception) -> grpc.Status:
    if isinstance(error, InvalidItems):
        violations = [(f"items[{e.index}].{e.field}", e.rule) for e in error.errors]
        message = "; ".join(f"{f}: {d}" for f, d in violations[:5])
        if len(violations) > 5:
            message += f"; and {len(violations) - 5} more"
        return _status(code_pb2.INVALID_ARGUMENT, message, _bad_request(violations))
    if isinstance(error, InvalidItem | InvalidRequest):
        return _status(
            code_pb2.INVALID_ARGUMENT, f"{error.field}: {error.rule}", _bad_request([(error.field, error.rule)])
        )
    if isinstance(error, Unauthenticated):
        return _status(code_pb2.UNAUTHENTICATED, str(error))
    if isinstance(error, PermissionDenied):
        return _status(code_pb2.PERMISSION_DENIED, str(error))
    if isinstance(error, NotFound):
        return _status(code_pb2.NOT_FOUND, str(error))
    if isinstance(error, Overloaded):
        return _status(code_pb2.RESOURCE_EXHAUSTED, str(error))
    if isinstance(error, ShuttingDown):
        return _status(code_pb2.UNAVAILABLE, str(error))
    if isinstance(error, StorageError):
        return _status(code_pb2.UNAVAILABLE, f"storage: {error}")
    return _status(code_pb2.INTERNAL, f"internal error: {type(error).__name__}")


def abort(context: grpc.ServicerContext, error: Exception) -> NoReturn:
    context.abort_with_status(to_status(error))
    raise AssertionError("abort_with_status returned")  # grpc raises; this line is never reached
