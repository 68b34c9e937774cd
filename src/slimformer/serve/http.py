"""The HTTP error contract and the request-field checks every route shares.

Every error is `{"error": {"message", "type", "param"}}` (OpenAI's shape): the message says what was
wrong, the limit or the valid values; `param` names the field. 422 a bad field, 413 too large, 429
queue full (with `Retry-After`), 503 not ready / worker lost, 500 the model raised.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse

TYPES = {400: "invalid_request_error", 404: "not_found_error", 405: "invalid_request_error",
         413: "request_too_large", 422: "invalid_request_error", 429: "queue_full", 500: "server_error",
         503: "unavailable"}


class FastJSON(JSONResponse):
    """A JSON answer rendered by orjson, which writes numpy float arrays directly (shortest float32
    text): an embedding of 384 floats costs ~0.9 ms through `json.dumps(list)`, a sizable share of a
    request on a small model."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class HTTPError(Exception):
    """An answer with an error status and the contract's JSON body."""

    def __init__(self, status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers or {}

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": TYPES.get(self.status, "error"), "param": self.param}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


async def json_body(request: Request, max_bytes: int) -> dict[str, Any]:
    """The request's JSON object; 413 past `max_bytes` (read no further), 422 when it is not a JSON object."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise HTTPError(413, f"request body is {int(declared)} bytes; at most {max_bytes}", "body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise HTTPError(413, f"request body exceeds {max_bytes} bytes", "body")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError; nesting too deep
        raise HTTPError(422, f"request body is not valid JSON: {e}", "body") from None
    if not isinstance(body, dict):
        raise HTTPError(422, f"request body must be a JSON object, got {type(body).__name__}", "body")
    return body


def field(body: dict[str, Any], name: str, types: type | tuple[type, ...], default: Any = None,
          choices: tuple | None = None) -> Any:
    """`body[name]` if of `types` (bools are not numbers) and, with `choices`, one of them; else 422."""
    if name not in body or body[name] is None:
        return default
    value = body[name]
    types = types if isinstance(types, tuple) else (types,)
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        wanted = " or ".join(t.__name__ for t in types)
        raise HTTPError(422, f"{name!r} must be {wanted}, got {type(value).__name__} {short(value)}", name)
    if choices is not None and value not in choices:
        raise HTTPError(422, f"{name!r} must be one of {', '.join(map(repr, choices))}, got {short(value)}", name)
    return value


def short(value: Any, limit: int = 60) -> str:
    """A value as JSON, cut to `limit` characters (an error message must not echo a megabyte back)."""
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
