"""Why the gateway refuses a request: one exception per OTLP status, with both protocols' codes.

The HTTP and gRPC front ends translate these; the core never knows which protocol it serves.
"""

from __future__ import annotations

import grpc

__all__ = [
    "IngestError",
    "InvalidArgument",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "Throttled",
    "Unauthenticated",
    "Unavailable",
    "UnsupportedMediaType",
]


class IngestError(Exception):
    """A refusal with a message for the client. ``retry_after_s`` is set when retrying can succeed."""

    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL
    reason = "internal"

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class InvalidArgument(IngestError):
    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "invalid_argument"


class Unauthenticated(IngestError):
    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    reason = "unauthenticated"


class PermissionDenied(IngestError):
    http_status = 403
    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    reason = "permission_denied"


class NotFound(IngestError):
    http_status = 404
    grpc_code = grpc.StatusCode.UNIMPLEMENTED
    reason = "not_found"


class PayloadTooLarge(IngestError):
    http_status = 413
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "too_large"


class UnsupportedMediaType(IngestError):
    http_status = 415
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "unsupported_media_type"


class Throttled(IngestError):
    http_status = 429
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "throttled"


class Unavailable(IngestError):
    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    reason = "unavailable"
