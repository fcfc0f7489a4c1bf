"""The FastAPI app: routes, auth, body limit, error handlers, lifespan."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response

from gpt2serve.server.api.auth import ALWAYS_OPEN_PATHS, DOCS_PATHS, ApiKeyMiddleware
from gpt2serve.server.api.body_size import BodySizeLimitMiddleware
from gpt2serve.server.api.chat_template import DEFAULT_CHAT_TEMPLATE, ChatTemplate
from gpt2serve.server.api.engine_stats import EngineStatsReporter
from gpt2serve.server.api.errors import APIError, install_error_handlers
from gpt2serve.server.api.metrics import Metrics
from gpt2serve.server.api.openapi import install_openapi
from gpt2serve.server.api.playground import PLAYGROUND_PATHS, install_playground
from gpt2serve.server.api.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from gpt2serve.server.api.serving import ServingContext, ServingLimits, now
from gpt2serve.server.api.serving_chat import create_chat_completion, render_chat_prompt
from gpt2serve.server.api.serving_completions import create_completion
from gpt2serve.server.api.serving_tgi import generate
from gpt2serve.server.api.tgi_protocol import TGIRequest
from gpt2serve.server.api.tgi_route import TGIRoute
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

    # FastAPI's /docs and /redoc load their scripts from a CDN: the playground serves offline ones.
    app = FastAPI(title="gpt2serve", version=package_version(), lifespan=lifespan,
                  docs_url=None, redoc_url=None)  # fmt: skip
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    if settings.api_key:  # added last: it runs first, before any body is read
        open_paths = ALWAYS_OPEN_PATHS | (DOCS_PATHS if settings.open_docs else frozenset())
        # The playground's page asks for the key itself: open to GET, never to TGI's POST /.
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key, open_paths=open_paths,
                           on_reject=lambda status: _count_error(app, status),
                           read_only_paths=PLAYGROUND_PATHS)  # fmt: skip
    install_error_handlers(app, on_error=lambda status: _count_error(app, status))
    _add_openai_routes(app, settings)
    _add_tgi_routes(app, settings)
    _add_service_routes(app, settings)
    install_openapi(app, settings)
    install_playground(app, settings)
    return app


def _attach_context(app: FastAPI, settings: ServerSettings, engine: Engine) -> None:
    metrics = Metrics(settings.model_name, engine.config.max_model_len)
    reporter = EngineStatsReporter(metrics, engine)
    stop = json.loads(settings.chat_template_stop) if settings.chat_template_stop else None
    template = (
        ChatTemplate.from_file(settings.chat_template, stop)
        if settings.chat_template
        else ChatTemplate(stop=stop)
    )
    app.state.reporter = reporter
    app.state.ctx = ServingContext(
        engine=AsyncEngine(engine, on_step=reporter.on_step),
        tokenizer=engine.tokenizer,
        model_name=settings.model_name,
        request_limits=engine.request_limits,
        metrics=metrics,
        chat_template=template,
        limits=ServingLimits(
            max_waiting_requests=settings.max_waiting_requests,
            max_prompts_per_request=settings.max_prompts_per_request,
            max_sequences_per_request=settings.max_sequences_per_request,
            default_max_tokens=settings.default_max_tokens,
            max_tokens_limit=settings.max_tokens_limit,
        ),
    )


def _count_error(app: FastAPI, status: int) -> None:
    ctx = getattr(app.state, "ctx", None)
    if ctx is not None:
        ctx.count_error(status)


def _context(request: Request) -> ServingContext:
    return request.app.state.ctx


def _add_openai_routes(app: FastAPI, settings: ServerSettings) -> None:
    """The OpenAI API: completions, chat, models."""

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await create_completion(_context(request), body, request)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await create_chat_completion(_context(request), body, request)

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        return {"object": "list", "data": [_model_card(_context(request), settings)]}

    # `:path`: a served name may hold a slash ("openai-community/gpt2").
    model_id_param = PathParam(examples=[settings.model_name])

    @app.get("/v1/models/{model_id:path}")
    async def retrieve_model(request: Request, model_id: str = model_id_param) -> dict:
        ctx = _context(request)
        ctx.check_model(model_id)  # 404 model_not_found for any other id
        return _model_card(ctx, settings)


def _add_tgi_routes(app: FastAPI, settings: ServerSettings) -> None:
    """Hugging Face TGI's native API; `POST /` is where `InferenceClient(base_url=...)` posts."""
    router = APIRouter(route_class=TGIRoute)

    @router.post("/generate")
    async def tgi_generate(body: TGIRequest, request: Request) -> Response:
        return await generate(_context(request), body, request, stream=False)

    @router.post("/generate_stream")
    async def tgi_generate_stream(body: TGIRequest, request: Request) -> Response:
        return await generate(_context(request), body, request, stream=True)

    @router.post("/")
    async def tgi_compat_generate(body: TGIRequest, request: Request) -> Response:
        return await generate(_context(request), body, request, body.stream, compat=True)

    app.include_router(router)


def _model_card(ctx: ServingContext, settings: ServerSettings) -> dict:
    """The served model, as `/v1/models` lists it and `/v1/models/{id}` answers it."""
    return {
        "id": ctx.model_name,
        "object": "model",
        "created": now(),
        "owned_by": "gpt2serve",
        "root": settings.model,
        "max_model_len": ctx.max_model_len,
    }


def _add_service_routes(app: FastAPI, settings: ServerSettings) -> None:
    """Health, metrics, version (open to all); tokenize, detokenize, tokenizer_info (keyed)."""

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

    @app.post("/tokenize")
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

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest, request: Request) -> dict:
        ctx = _context(request)
        ctx.check_model(body.model)
        try:
            check_token_ids("tokens", body.tokens, ctx.tokenizer.vocab_size)
        except InvalidRequestError as exc:
            raise APIError(400, str(exc), exc.param) from exc
        return {"prompt": ctx.tokenizer.decode(body.tokens)}

    @app.get("/tokenizer_info")
    async def tokenizer_info(request: Request) -> dict:
        state = request.app.state
        if getattr(state, "tokenizer_info", None) is None:
            state.tokenizer_info = _tokenizer_info(_context(request), settings)
        return state.tokenizer_info


def _tokenizer_info(ctx: ServingContext, settings: ServerSettings) -> dict:
    """GPT-2's HF tokenizer config as vLLM's `/tokenizer_info` answers it (lm-eval reads it)."""
    eos_id = ctx.tokenizer.eos_token_id
    eos = ctx.tokenizer.decode([eos_id])
    template = DEFAULT_CHAT_TEMPLATE
    if settings.chat_template:  # the file loaded at startup: ChatTemplate keeps no source
        template = Path(settings.chat_template).read_text()
    return {
        "tokenizer_class": "GPT2TokenizerFast",
        "bos_token": eos,
        "eos_token": eos,
        "unk_token": eos,
        "pad_token": None,  # GPT-2 has none
        "add_bos_token": False,
        "add_prefix_space": False,
        "model_max_length": ctx.max_model_len,
        "chat_template": template,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "vocab_size": ctx.tokenizer.vocab_size,
    }
