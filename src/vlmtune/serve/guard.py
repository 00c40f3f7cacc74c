"""The outermost ASGI layer, in front of everything that parses a request.

In this order, for every HTTP request:

1. the query string is dropped from the request (no route takes one), so a secret sent as
   ``?api_key=...`` never reaches uvicorn's access log, which prints the request line from it;
2. the request and, later, its response status are counted (``/v1/stats``);
3. ``/v1/`` routes (and ``/update_weights_from_disk``, which changes the served weights) need
   ``Authorization: Bearer KEY`` when a key is set (compared in constant time, never logged or
   echoed), checked before any byte of the body is read;
4. the body is read here, its bytes counted as they arrive, whether a ``Content-Length`` was
   sent or the body is chunked: past ``max_body_bytes`` the request gets 413 at once and the
   rest is never read. The app then reads the buffered body as usual.
"""

from __future__ import annotations

import hmac
import json
from collections import deque
from typing import Any

from vlmtune.serve.errors import error_body
from vlmtune.serve.stats import Stats


KEYED_OUTSIDE_V1 = ("/update_weights_from_disk",)  # SGLang's path for it, kept

# An early reply leaves the body unread: close the connection rather than read the rest.
_UNREAD = [(b"connection", b"close")]


class BodyTooLarge(Exception):
    """``declared``: the Content-Length sent; None when the bytes were counted as they came."""

    def __init__(self, declared: int | None = None):
        super().__init__(declared)
        self.declared = declared


class Guard:
    def __init__(self, app: Any, stats: Stats, api_key: str | None, max_body_bytes: int):
        self.app, self.stats, self.max_body_bytes = app, stats, max_body_bytes
        self._key = api_key.encode() if api_key else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        had_query = bool(scope.get("query_string"))
        scope["query_string"] = b""  # in place: uvicorn's access log formats this very dict
        path = scope.get("path", "")
        is_chat = path.rstrip("/") == "/v1/chat/completions"
        self.stats.request(path, is_chat)

        async def counting_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                self.stats.response(message["status"], is_chat)
            await send(message)

        headers = dict(scope.get("headers") or [])
        if path.startswith("/v1/") or path == "/v1" or path.rstrip("/") in KEYED_OUTSIDE_V1:
            problem = self._unauthorized(headers, had_query)
            if problem is not None:
                await _reply(counting_send, 401, error_body(problem, "authentication_error", code="invalid_api_key"),
                             [(b"www-authenticate", b"Bearer"), *_UNREAD])
                return
        try:
            length = headers.get(b"content-length", b"")
            if length.isdigit() and int(length) > self.max_body_bytes:
                raise BodyTooLarge(int(length))
            body = await self._read_body(receive)
        except BodyTooLarge as exc:
            size = f"of {exc.declared} bytes " if exc.declared is not None else ""
            await _reply(counting_send, 413, error_body(
                f"request body {size}exceeds the limit of {self.max_body_bytes} bytes", "invalid_request_error",
                code="request_too_large"), _UNREAD)
            return
        if body is None:  # the client left while sending: nobody to answer
            return
        await self.app(scope, _replay(body, receive), counting_send)

    def _unauthorized(self, headers: dict[bytes, bytes], had_query: bool) -> str | None:
        """None when allowed, else the 401 message (which never contains what was sent)."""
        if self._key is None:
            return None
        auth = headers.get(b"authorization", b"")
        scheme, _, token = auth.partition(b" ")
        if not auth or scheme.lower() != b"bearer" or not token.strip():
            hint = " (keys in the URL are not accepted)" if had_query else ""
            return f"missing API key: send the header 'Authorization: Bearer <key>'{hint}"
        if not hmac.compare_digest(token.strip(), self._key):
            return "invalid API key"
        return None

    async def _read_body(self, receive: Any) -> list[dict] | None:
        """The body's messages, counted as they arrive; None if the client disconnected."""
        messages, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                raise BodyTooLarge()
            messages.append(message)
            if not message.get("more_body", False):
                return messages


def _replay(messages: list[dict], receive: Any) -> Any:
    """An ASGI ``receive`` that hands out the buffered body, then the real one (disconnects)."""
    pending = deque(messages)

    async def replay() -> dict:
        return pending.popleft() if pending else await receive()

    return replay


async def _reply(send: Any, status: int, body: dict, headers: list | None = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": data})
