"""The OpenAPI description, completed with what quart-schema cannot infer.

quart-schema builds paths and schemas from the route decorators; this provider
adds the ``application/problem+json`` error responses each route can give, the
``X-Cache``/``X-Request-ID`` headers, and marks the public routes as needing no
token, so clients (and schemathesis) see the API as it really answers.
"""

from __future__ import annotations

from typing import Any

from quart_schema.openapi import OpenAPIProvider

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": ["string", "null"]},
        "request_id": {"type": ["string", "null"], "description": "also in X-Request-ID"},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
}
PUBLIC = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/token",
    "/v1/verify/public-key",
    "/openapi.json",
    "/docs",
    "/redocs",
}
_DESCRIPTIONS = {
    400: "Bad request: unknown or malformed parameter, invalid JSON or cursor",
    401: "Missing, invalid or expired bearer token",
    403: "The token lacks the scope or the tenant",
    404: "No such resource in the token's tenants",
    405: "Method not allowed",
    410: "The event was erased (it stays in the chain, its payload is gone)",
    413: "Too many events or too large a body",
    422: "Validation failed; `errors` lists field paths",
    503: "A dependency is unavailable; retry after Retry-After",
}
# 503: the token's account cannot be checked (query_api/auth.py), or a store is away.
_SECURED_ERRORS = (400, 401, 403, 405, 503)
_EXTRA: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/v1/events"): (413, 422, 503),
    ("get", "/v1/events/{event_id}"): (404, 410),
    ("get", "/v1/verify/public-key"): (404,),  # when no checkpoint key is configured
}
_CACHED = {("get", "/v1/events"), ("get", "/v1/events/{event_id}")}


def _problem(status: int) -> dict[str, Any]:
    return {
        "description": _DESCRIPTIONS.get(status, "Error"),
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }


_READY: dict[str, Any] = {
    "description": "status ok, degraded (Redis down) or unavailable, with per-service checks",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["status"],
                "properties": {
                    "status": {"type": "string"},
                    "checks": {"type": "object"},
                    "down": {"type": "array", "items": {"type": "string"}},
                },
            }
        }
    },
}


def _one_or_many(op: dict[str, Any], responses: dict[str, Any]) -> None:
    """The body is one event or ``{"events": [...]}``; ``?wait=true`` may answer 201."""
    body = op.get("requestBody", {}).get("content", {}).get("application/json")
    if body is not None:
        body["schema"] = {"anyOf": [{"$ref": "#/components/schemas/AuditEvent"}, body["schema"]]}
    if "202" in responses:
        responses.setdefault("201", {**responses["202"], "description": "stored (?wait=true)"})


class ProblemAwareOpenAPI(OpenAPIProvider):
    def schema(self) -> dict[str, Any]:
        schema = super().schema()
        schema["components"]["schemas"]["Problem"] = PROBLEM_SCHEMA
        for path, item in schema["paths"].items():
            for method, op in item.items():
                if not isinstance(op, dict):
                    continue
                responses = {str(k): v for k, v in op.get("responses", {}).items()}
                if not any(k.startswith("2") for k in responses):
                    responses["200"] = {"description": "OK"}
                op["responses"] = responses
                if path in PUBLIC:
                    op["security"] = []
                    if path == "/readyz":
                        responses["200"] = responses["503"] = _READY
                    for status in _EXTRA.get((method, path), ()):
                        responses.setdefault(str(status), _problem(status))
                    continue
                if (method, path) == ("post", "/v1/events"):
                    _one_or_many(op, responses)
                statuses = [*_SECURED_ERRORS, *_EXTRA.get((method, path), ())]
                if "{" in path:
                    statuses.append(404)
                if method in ("post", "put", "patch", "delete"):
                    statuses += [413, 422]
                for status in statuses:
                    responses.setdefault(str(status), _problem(status))
                if (method, path) in _CACHED:
                    ok = responses.get("200", {})
                    ok.setdefault("headers", {})["X-Cache"] = {
                        "description": "hit, miss or bypass (Redis unavailable)",
                        "schema": {"type": "string", "enum": ["hit", "miss", "bypass"]},
                    }
        return schema
