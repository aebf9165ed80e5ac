"""Domain errors that carry their own gRPC status; the error interceptor maps them in one place.

Domain code raises these and never imports grpc status handling itself; the server interceptor turns them into
`context.abort(code, message)` and everything else into INTERNAL without leaking a stack trace.
"""

from __future__ import annotations

import grpc


class NextBestError(Exception):
    """Base of every error a client may see; `code` is the gRPC status it maps to."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(NextBestError):
    """A request field is malformed; the message names the field and the reason."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NotFound(NextBestError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(NextBestError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(NextBestError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(NextBestError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(NextBestError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(NextBestError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(NextBestError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
