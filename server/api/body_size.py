"""ASGI middleware answering 413 to request bodies over the configured size."""

from __future__ import annotations

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gpt2serve.server.api.errors import error_body
from gpt2serve.server.api.sse import encode_json


class BodyTooLargeError(HTTPException):
    """The request body is over the limit (raised while the route reads it)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body exceeds {max_bytes} bytes")


class BodySizeLimitMiddleware:
    """Reject bodies over `max_bytes`, by Content-Length up front or while streaming in.

    The rejection is raised from `receive` as an HTTPException: FastAPI re-raises those from
    body parsing (any other exception there becomes a generic 400), so the app's own error
    handlers answer the 413 envelope and count it in the error metric, for both cases.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass through, counting body bytes."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        too_large_declared = (
            declared is not None and declared.isdigit() and int(declared) > self.max_bytes
        )
        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            if too_large_declared:  # refuse before reading a byte of it
                raise BodyTooLargeError(self.max_bytes)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLargeError(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLargeError:
            # Only reached if the body was read outside a route's handlers (none today).
            if not response_started:
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        body = encode_json(error_body(413, f"request body exceeds {self.max_bytes} bytes"))
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
