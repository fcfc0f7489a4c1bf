"""API-key check, as ASGI middleware: it runs before any body is read or validated."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Collection

from starlette.types import ASGIApp, Receive, Scope, Send

from gpt2serve.server.api.errors import error_body
from gpt2serve.server.api.sse import encode_json

# Liveness, scraping and the version never need a key (probes and Prometheus have none).
ALWAYS_OPEN_PATHS = frozenset({"/health", "/metrics", "/version"})
# The API's description: open by default (no data in it), behind the key with --no-open-docs.
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


def bearer_token(authorization: bytes) -> bytes | None:
    """The credentials of an `Authorization: Bearer <token>` header (scheme case-insensitive)."""
    scheme, _, token = authorization.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return token.strip()


class ApiKeyMiddleware:
    """401 (OpenAI envelope, `WWW-Authenticate: Bearer`) unless the request carries the key.

    As middleware, the check comes first: a malformed or oversized body from a client without
    the key is a 401, never a 400 or 413 that would tell it about the API.
    """

    def __init__(
        self,
        app: ASGIApp,
        api_key: str,
        open_paths: Collection[str],
        on_reject: Callable[[int], None] | None = None,
        read_only_paths: Collection[str] = (),
    ) -> None:
        """`read_only_paths` are open to GET and HEAD only (the playground's page is at `/`,
        where TGI's generation route takes POST)."""
        self.app = app
        self.expected = api_key.encode()
        self.open_paths = frozenset(open_paths)
        self.read_only_paths = frozenset(read_only_paths)
        self.on_reject = on_reject

    def _is_open(self, scope: Scope) -> bool:
        path = scope["path"]
        if path in self.open_paths:
            return True
        return path in self.read_only_paths and scope.get("method") in ("GET", "HEAD")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass through if open or authorized; answer 401 otherwise."""
        if scope["type"] != "http" or self._is_open(scope):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        token = bearer_token(headers.get(b"authorization", b""))
        if token is not None and hmac.compare_digest(token, self.expected):
            await self.app(scope, receive, send)
            return
        if self.on_reject is not None:
            self.on_reject(401)
        body = encode_json(error_body(401, "invalid or missing API key", code="invalid_api_key"))
        await send({
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b"Bearer"),
            ],
        })  # fmt: skip
        await send({"type": "http.response.body", "body": body})
