"""The FastAPI app: routes, auth, body limit, error handlers, lifespan."""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from gpt2serve.server.api.body_size import BodySizeLimitMiddleware
from gpt2serve.server.api.chat_template import ChatTemplate
from gpt2serve.server.api.engine_stats import EngineStatsReporter
from gpt2serve.server.api.errors import APIError, install_error_handlers
from gpt2serve.server.api.metrics import Metrics
from gpt2serve.server.api.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from gpt2serve.server.api.serving import ServingContext, now
from gpt2serve.server.api.serving_chat import create_chat_completion, render_chat_prompt
from gpt2serve.server.api.serving_completions import create_completion
from gpt2serve.server.config import ServerSettings
from gpt2serve.server.core.request_limits import InvalidRequestError, check_token_ids
from gpt2serve.server.engine.async_engine import AsyncEngine
from gpt2serve.server.engine.engine import Engine

logger = logging.getLogger(__name__)


def package_version() -> str:
    """The installed gpt2serve version."""
    try:
        return version("gpt2serve")
    except PackageNotFoundError:
        return "0.0.0+local"


def create_app(settings: ServerSettings, engine: Engine | None = None) -> FastAPI:
    """Build the app; the engine is built at startup unless the caller brings its own."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        built = engine
        if built is None:
            # Lazily: building the engine loads torch and the model, which tests inject instead.
            from gpt2serve.server.engine.builder import build_engine

            built, _ = build_engine(settings)
        _attach_context(app, settings, built)
        app.state.ctx.engine.start()
        try:
            yield
        finally:
            app.state.ctx.engine.shutdown()

    app = FastAPI(title="gpt2serve", version=package_version(), lifespan=lifespan)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    install_error_handlers(app, on_error=lambda status: _count_error(app, status))
    _add_openai_routes(app, settings)
    _add_service_routes(app, settings)
    return app


def _attach_context(app: FastAPI, settings: ServerSettings, engine: Engine) -> None:
    metrics = Metrics(settings.model_name, engine.config.max_model_len)
    reporter = EngineStatsReporter(metrics, engine)
    template = (
        ChatTemplate.from_file(settings.chat_template) if settings.chat_template else ChatTemplate()
    )
    app.state.reporter = reporter
    app.state.ctx = ServingContext(
        engine=AsyncEngine(engine, on_step=reporter.on_step),
        tokenizer=engine.tokenizer,
        model_name=settings.model_name,
        request_limits=engine.request_limits,
        metrics=metrics,
        chat_template=template,
        max_waiting_requests=settings.max_waiting_requests,
    )


def _count_error(app: FastAPI, status: int) -> None:
    ctx = getattr(app.state, "ctx", None)
    if ctx is not None:
        ctx.count_error(status)


def _context(request: Request) -> ServingContext:
    return request.app.state.ctx


def _auth(settings: ServerSettings) -> Callable[[Request], Awaitable[None]]:
    expected = f"Bearer {settings.api_key}".encode() if settings.api_key else None

    async def check(request: Request) -> None:
        if expected is None:
            return
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise APIError(401, "invalid or missing API key", code="invalid_api_key")

    return check


def _add_openai_routes(app: FastAPI, settings: ServerSettings) -> None:
    """The OpenAI API: completions, chat, models."""
    auth = [Depends(_auth(settings))]

    @app.post("/v1/completions", dependencies=auth)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await create_completion(_context(request), body, request)

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await create_chat_completion(_context(request), body, request)

    @app.get("/v1/models", dependencies=auth)
    async def models(request: Request) -> dict:
        ctx = _context(request)
        card = {
            "id": ctx.model_name,
            "object": "model",
            "created": now(),
            "owned_by": "gpt2serve",
            "root": settings.model,
            "max_model_len": ctx.max_model_len,
        }
        return {"object": "list", "data": [card]}


def _add_service_routes(app: FastAPI, settings: ServerSettings) -> None:
    """Health, metrics, version (open to all), tokenize and detokenize (behind the key)."""
    auth = [Depends(_auth(settings))]

    @app.get("/health")
    async def health(request: Request) -> Response:
        ctx = _context(request)
        if ctx.engine.is_alive and not ctx.draining:
            return Response(status_code=200)
        return JSONResponse({"status": "unhealthy"}, status_code=503)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        request.app.state.reporter.refresh()
        body = _context(request).metrics.render()
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/version")
    async def get_version() -> dict:
        return {"version": package_version()}

    @app.post("/tokenize", dependencies=auth)
    async def tokenize(body: TokenizeRequest, request: Request) -> dict:
        ctx = _context(request)
        ctx.check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise APIError(400, "give exactly one of prompt or messages", "prompt")
        if body.prompt is not None:
            tokens = ctx.encode(body.prompt)
        else:
            tokens = render_chat_prompt(ctx, body.messages, body.add_generation_prompt)
        return {"tokens": tokens, "count": len(tokens), "max_model_len": ctx.max_model_len}

    @app.post("/detokenize", dependencies=auth)
    async def detokenize(body: DetokenizeRequest, request: Request) -> dict:
        ctx = _context(request)
        ctx.check_model(body.model)
        try:
            check_token_ids("tokens", body.tokens, ctx.tokenizer.vocab_size)
        except InvalidRequestError as exc:
            raise APIError(400, str(exc), exc.param) from exc
        return {"prompt": ctx.tokenizer.decode(body.tokens)}
