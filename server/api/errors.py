"""OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` with the right status."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    503: "service_unavailable",
}


# nginx's "client closed request": never sent (the client is gone), and not a server error.
CLIENT_CLOSED_REQUEST = 499
INTERNAL_ERROR_MESSAGE = "internal server error"
_FASTAPI_BODY_ERROR = "There was an error parsing the body"


class ClientDisconnectedError(Exception):
    """The client went away before the response was ready."""


class APIError(Exception):
    """An error answered to the client as an OpenAI error envelope."""

    def __init__(
        self,
        status_code: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers


def error_body(status_code: int, message: str, param: str | None = None, code: Any = None) -> dict:
    """The OpenAI error envelope."""
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(
                status_code,
                "internal_server_error" if status_code >= 500 else "invalid_request_error",
            ),
            "param": param,
            "code": code if code is not None else status_code,
        }
    }


def error_response(error: APIError) -> JSONResponse:
    """A JSON response for an `APIError`."""
    return JSONResponse(
        error_body(error.status_code, error.message, error.param, error.code),
        status_code=error.status_code,
        headers=error.headers,
    )


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request body", None
    first = errors[0]
    location = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(location) or None
    if first.get("type") == "json_invalid":
        return "request body is not valid JSON", None
    message = first.get("msg", "invalid value")
    value = first.get("input")
    if isinstance(value, float) and not math.isfinite(value):
        # pydantic reports NaN against the bound it failed ("less than or equal to 2").
        message = f"must be a finite number, got {value}"
    return (f"{param}: {message}" if param else message), param


def _body_parse_message(cause: BaseException | None) -> str:
    """Why FastAPI could not parse a body, from the exception it chained."""
    if isinstance(cause, RecursionError):
        return "request body could not be parsed: its JSON is nested too deeply"
    if isinstance(cause, UnicodeDecodeError):
        return "request body could not be parsed: it must be UTF-8 encoded JSON"
    return "request body could not be parsed as JSON"


def install_error_handlers(app: FastAPI, on_error: Any = None) -> None:
    """Map every failure onto the envelope; FastAPI's 422 becomes 400; no traceback leaks."""

    def note(status: int) -> None:
        if on_error is not None:
            on_error(status)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        note(exc.status_code)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        note(400)
        return JSONResponse(error_body(400, message, param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        note(exc.status_code)
        message = str(exc.detail)
        if message == _FASTAPI_BODY_ERROR:
            message = _body_parse_message(exc.__cause__)
        return JSONResponse(
            error_body(exc.status_code, message),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(ClientDisconnectedError)
    async def _client_gone(request: Request, _: ClientDisconnectedError) -> Response:
        # The request was already aborted; nobody reads this answer and it is no server error.
        logger.debug("client disconnected before the response to %s", request.url.path)
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(Exception)
    async def _internal_error(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error while serving a request")
        note(500)
        return JSONResponse(error_body(500, INTERNAL_ERROR_MESSAGE), status_code=500)
