"""TGI routes' errors: `{"error", "error_type"}` for bad bodies and handler errors, and the key.

A route class, so that only the TGI routes answer in TGI's shape: the app's error handlers keep
the OpenAI envelope for every other route.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request as HTTPRequest

from gpt2serve.server.api.errors import APIError
from gpt2serve.server.api.tgi_protocol import tgi_error_body

# The `error_type` the Hugging Face clients turn into GenerationError, OverloadedError, ...
_ERROR_TYPES_503 = {"engine_dead": "generation", "incomplete_generation": "incomplete_generation"}


def error_type(error: APIError) -> str:
    """TGI's `error_type` for an error answered with `error.status_code`."""
    if error.status_code == 503:
        return _ERROR_TYPES_503.get(str(error.code), "overloaded")
    return "validation" if error.status_code < 500 else "generation"


def _validation_error(exc: RequestValidationError) -> APIError:
    """The first problem of a body that does not fit the schema, naming its field."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return APIError(400, "request body is not valid JSON")
    param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
    message = first.get("msg", "invalid request body")
    return APIError(400, f"{param}: {message}" if param else message, param)


class TGIRoute(APIRoute):
    """A route that answers its errors as TGI does: `{"error": ..., "error_type": ...}`."""

    def get_route_handler(self) -> Callable[[HTTPRequest], Coroutine[Any, Any, Response]]:
        """The route's handler, with body and handler errors in TGI's shape."""
        handler = super().get_route_handler()

        async def tgi_handler(request: HTTPRequest) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                error = _validation_error(exc)
            except StarletteHTTPException as exc:
                if exc.status_code != 400:  # 413 and the like: the app's own answer
                    raise
                error = APIError(400, "request body could not be parsed as JSON")
            except APIError as exc:
                error = exc
            request.app.state.ctx.count_error(error.status_code)
            return JSONResponse(
                tgi_error_body(error.message, error_type(error)),
                status_code=error.status_code,
                headers=error.headers,
            )

        return tgi_handler
