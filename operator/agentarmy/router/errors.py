"""Errors the router reports to callers: an HTTP status, a CamelCase code and a clear message."""

from __future__ import annotations

from pydantic import ValidationError

from agentarmy.api.wire import ErrorDetail, ErrorResponse


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers: list[tuple[bytes, bytes]] = []
        """Extra response headers, e.g. Retry-After on a 429."""
        self.policy: str | None = None
        self.rule: str | None = None
        self.retry_after: int | None = None

    def body(self) -> ErrorResponse:
        return ErrorResponse(
            error=ErrorDetail(
                status=self.status,
                code=self.code,
                message=self.message,
                field=self.field,
                policy=self.policy,
                rule=self.rule,
                retryAfterSeconds=self.retry_after,
            )
        )


def bad_request(message: str, field: str | None = None) -> ApiError:
    return ApiError(400, "BadRequest", message, field)


def unauthorized(message: str = "missing or invalid bearer token") -> ApiError:
    return ApiError(401, "Unauthorized", message)


def forbidden(message: str) -> ApiError:
    return ApiError(403, "Forbidden", message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "NotFound", message)


def stale_lease(message: str) -> ApiError:
    return ApiError(409, "StaleLease", message)


def from_validation(error: ValidationError, where: str = "body") -> ApiError:
    """The first problem pydantic found, naming the field as a dotted path."""
    first = error.errors(include_url=False)[0]
    path = ".".join(str(part) for part in first["loc"])
    if first["type"] == "json_invalid":
        return bad_request(f"{where} is not valid JSON: {first['msg']}")
    field = path or None
    message = f"{where}: {path}: {first['msg']}" if path else f"{where}: {first['msg']}"
    extra = len(error.errors()) - 1
    if extra:
        message += f" (and {extra} more problem{'s' if extra > 1 else ''})"
    return bad_request(message, field)
