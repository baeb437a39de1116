"""Pure ASGI middleware for request bodies, before any parsing: a body larger than ``max_body_bytes`` gets 413,
and a body sent to a JSON route is read as JSON whatever content type it declares.

``curl -d '{...}'`` declares ``application/x-www-form-urlencoded``; FastAPI would then refuse the JSON with a 422
that says nothing useful. These routes take only JSON, so the declared type is not what decides.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from starlette.responses import JSONResponse

JSON = b"application/json"


class RequestBody:
    def __init__(self, app, settings: Callable[[], Mapping[str, Any]], json_routes: tuple[str, ...]):
        """``settings()["max_body_bytes"]`` is read per request (the replica sets it from its config)."""
        self.app, self.settings, self.json_routes = app, settings, json_routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.settings()["max_body_bytes"]
        headers = list(scope.get("headers") or [])
        declared = dict(headers).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await self._refuse(send, limit)
        if scope.get("path") in self.json_routes:
            kept = [(k, v) for k, v in headers if k != b"content-type"]
            scope = {**scope, "headers": [*kept, (b"content-type", JSON)]}
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > limit:
                return await self._refuse(send, limit)
            if not message.get("more_body", False):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        return await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(send, limit: int) -> None:
        body = JSONResponse({"error": "payload too large", "detail": f"request bodies are limited to {limit} bytes"},
                            status_code=413)
        await send({"type": "http.response.start", "status": 413, "headers": body.raw_headers})
        await send({"type": "http.response.body", "body": body.body})
