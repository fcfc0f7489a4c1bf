"""Limits uvicorn's HTTP parser lacks: header size and count, and slow-client timeouts.

uvicorn's httptools protocol accepts headers of any size (a 256 MB header held a core for a
minute, GHSA-rxc4-3w6r-4v47 in vLLM) and waits forever for a client that trickles its headers
or body in. This subclass counts header bytes as they arrive, refusing with 431 before the
parser buffers more than the limit, and closes connections that take too long to send their
headers (408) or body. Without httptools, uvicorn's h11 protocol is used with its own
incomplete-event size limit.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from gpt2serve.server.api.errors import error_body
from gpt2serve.server.api.sse import encode_json
from gpt2serve.server.config import ServerSettings

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}
# After refusing, the server half-closes and discards what the client still sends for this
# long: closing a socket with unread bytes makes the kernel send a reset, which can destroy
# the 431 in the client's receive buffer before it reads it (nginx's "lingering close").
LINGER_SECONDS = 2.0


@dataclass(frozen=True)
class HttpLimits:
    """What one HTTP request's head and body may cost the server."""

    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0  # seconds from a request's first byte to its last header
    body_timeout: float = 60.0  # seconds from the last header to the end of the body


class _LimitExceededError(Exception):
    """Raised from a parser callback; the protocol answers it instead of a plain 400."""


def uvicorn_http_options(settings: ServerSettings) -> dict[str, Any]:
    """`uvicorn.Config` keyword arguments that enforce the settings' HTTP limits."""
    limits = HttpLimits(settings.max_header_bytes, settings.max_headers, settings.header_timeout,
                        settings.body_timeout)  # fmt: skip
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # no httptools: h11 bounds a request head by itself
        return {"http": "h11", "h11_max_incomplete_event_size": limits.max_header_bytes}
    return {"http": _limited_protocol(HttpToolsProtocol, limits)}


def _limited_protocol(base: type, limits: HttpLimits) -> type:
    """`base` (uvicorn's httptools protocol) with the limits enforced."""

    class LimitedHttpToolsProtocol(base):  # type: ignore[misc, valid-type]
        """One connection; a request's head is counted and timed until it is complete."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._in_head = False  # between a request's first byte and its last header
            self._head_bytes = 0
            self._num_headers = 0
            self._limit_error: tuple[int, str] | None = None
            self._timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._begin_head()  # a connection that never sends a byte is timed out too

        def data_received(self, data: bytes) -> None:
            if self._limit_error is not None or self.transport.is_closing():
                return
            if self._response_done():  # keep-alive: the next request's head starts
                self._begin_head()
            if self._in_head:
                self._head_bytes += len(data)
            super().data_received(data)
            # Checked after the chunk is parsed: a chunk may end the head and carry body bytes
            # (those are not head bytes). The parser holds at most one chunk past the limit.
            over = self._in_head and self._head_bytes > limits.max_header_bytes
            if over and self._limit_error is None and not self.transport.is_closing():
                self._refuse(431, f"request headers exceed {limits.max_header_bytes} bytes")

        def _response_done(self) -> bool:
            return not self._in_head and self.cycle is not None and self.cycle.response_complete

        def _begin_head(self) -> None:
            self._in_head, self._head_bytes, self._num_headers = True, 0, 0
            self._arm(limits.header_timeout, 408, "request headers were not received in time")

        def on_header(self, name: bytes, value: bytes) -> None:
            self._num_headers += 1
            if self._num_headers > limits.max_headers:
                self._limit_error = (
                    431,
                    f"a request may carry at most {limits.max_headers} headers",
                )
                raise _LimitExceededError
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._arm(limits.body_timeout, 408, "request body was not received in time")
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._cancel_timer()
            super().on_message_complete()

        def send_400_response(self, msg: str) -> None:
            if self._limit_error is not None:  # a callback raised: answer its status, not 400
                self._write_error(*self._limit_error)
                return
            super().send_400_response(msg)

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_timer()
            super().connection_lost(exc)

        def _arm(self, seconds: float, status: int, message: str) -> None:
            self._cancel_timer()
            self._timer = self.loop.call_later(seconds, self._on_timeout, status, message)

        def _cancel_timer(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _on_timeout(self, status: int, message: str) -> None:
            self._timer = None
            if self.transport.is_closing():
                return
            if self.cycle is not None and self.cycle.response_started:
                self.transport.close()  # mid-body with an answer under way: just hang up
                return
            self._refuse(status, message)

        def _refuse(self, status: int, message: str) -> None:
            self._limit_error = (status, message)
            if self.cycle is not None:
                self.cycle.disconnected = True  # the app's receive() sees a disconnect
                self.cycle.message_event.set()
            self._write_error(status, message)

        def _write_error(self, status: int, message: str) -> None:
            self._cancel_timer()
            body = encode_json(error_body(status, message))
            head = (
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n"
                % (status, _REASONS[status], len(body))
            )
            if self.transport.is_closing():
                return
            self.transport.write(head + body)
            if not self.transport.can_write_eof():
                self.transport.close()
                return
            # data_received drops everything from now on; the client's EOF or the timer closes.
            self.transport.write_eof()
            self._timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)

    return LimitedHttpToolsProtocol
