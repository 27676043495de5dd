"""RFC 9457 problem details (``application/problem+json``) for every error."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson
from pymongo.errors import ConnectionFailure, PyMongoError
from quart import Quart, Response, g, request
from werkzeug.exceptions import HTTPException

PROBLEM_JSON = "application/problem+json"
STORE_RETRY_AFTER = "5"


def is_store_outage(exc: BaseException) -> bool:
    """A MongoDB error that means "the store is away" (unreachable, frozen, timed out)."""
    return isinstance(exc, ConnectionFailure) or (
        isinstance(exc, PyMongoError) and bool(exc.timeout)
    )


class Problem(Exception):
    """Raise anywhere in a request to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


def problem_response(
    status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    body = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": request.path if request else None,
        "request_id": g.get("request_id") if g else None,
        **extra,
    }
    resp = Response(orjson.dumps(body), status=status, content_type=PROBLEM_JSON)
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    return resp


def register_problem_handlers(app: Quart) -> None:
    @app.errorhandler(Problem)
    async def _problem(exc: Problem) -> Response:
        return problem_response(exc.status, exc.detail, exc.headers, **exc.extra)

    @app.errorhandler(HTTPException)
    async def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        detail = exc.description or HTTPStatus(status).phrase
        if status == 413:
            detail = "request body too large"
        headers = {}
        if status == 405 and exc.get_headers():
            headers = {k: v for k, v in exc.get_headers() if k.lower() == "allow"}
        return problem_response(status, detail, headers)

    @app.errorhandler(PyMongoError)
    async def _store(exc: PyMongoError) -> Response:
        # Every store call is bounded by AUDITSTREAM_MONGO_TIMEOUT_MS; while the
        # store is away the answer is 503 + Retry-After, never 500 or a hang.
        if is_store_outage(exc):
            app.logger.warning("event store unavailable: %s", exc)
            return problem_response(
                503,
                "the event store is unavailable; retry the request later",
                {"Retry-After": STORE_RETRY_AFTER},
            )
        app.logger.exception("unhandled store error", exc_info=exc)
        return problem_response(500, "internal error; the request id is in X-Request-ID")

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> Response:
        app.logger.exception("unhandled error", exc_info=exc)
        return problem_response(500, "internal error; the request id is in X-Request-ID")
