"""One settings object for the whole server: CLI flags and `GPT2SERVE_*` environment variables."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServerSettings(BaseSettings):
    """Every knob of gpt2serve; each field is also the env var `GPT2SERVE_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="GPT2SERVE_", extra="ignore")

    model: str = Field("gpt2", description="hub id, HF checkpoint directory, or random:<size>")
    served_model_name: str | None = Field(None, description="name reported by the API")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    seed: int = Field(0, description="seed for random:<size> weights")
    block_size: int = Field(16, ge=1, le=256)
    num_kv_blocks: int | None = Field(None, ge=2, description="KV blocks; overrides the sizing")
    kv_cache_gb: float = Field(2.0, gt=0, description="KV cache size on CPU, in GiB")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_num_seqs: int = Field(256, ge=1)
    max_num_batched_tokens: int | None = Field(
        None,
        ge=16,
        description="tokens per engine step, long prompts chunked to fit (default: 2048 on GPU; "
        "on CPU sized to the model so a long prompt stalls running streams well under 1 s)",
    )
    max_model_len: int | None = Field(None, ge=2, description="default: the model's n_positions")
    max_waiting_requests: int = Field(
        1024, ge=1, description="sequences admitted but not running; beyond it: 503 + Retry-After"
    )
    max_prompts_per_request: int = Field(256, ge=1, description="prompts in one completions list")
    max_sequences_per_request: int = Field(
        256, ge=1, description="prompts x n that one request may add; more is a 400"
    )
    default_max_tokens: int = Field(
        256, ge=1, description="max_tokens when a request leaves it null (chat: or omits it)"
    )
    max_tokens_limit: int | None = Field(
        None, ge=1, description="the largest max_tokens a request may ask for (default: context)"
    )
    enable_prefix_caching: bool = True
    enforce_eager: bool = Field(False, description="disable CUDA graphs")
    cpu_attention_kernel: bool = Field(
        True, description="CPU: decode attention in C++ (built once with a C++ compiler, cached)"
    )
    disable_triton: bool = Field(
        False, description="run the torch reference kernels on CUDA too (A/B checks, debugging)"
    )
    cpu_threads: int | None = Field(
        None, ge=1, description="torch threads on CPU; default: every core this process may use"
    )
    api_key: str | None = Field(None, description="require `Authorization: Bearer <key>`")
    open_docs: bool = Field(
        True, description="with --api-key, keep /docs, /redoc and /openapi.json open (no data)"
    )
    chat_template: str | None = Field(None, description="Jinja2 chat template file")
    chat_template_stop: str | None = Field(
        None,
        description='stop strings that end a chat turn, as a JSON list (default: ["\\nUser:"] '
        "with the built-in template, none with --chat-template)",
    )
    max_request_bytes: int = Field(2 * 1024 * 1024, ge=1024)
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, description="request line + headers; beyond it: 431"
    )
    max_headers: int = Field(100, ge=1, description="headers per request; beyond it: 431")
    header_timeout: float = Field(
        10.0, gt=0, description="seconds for a request's headers to arrive; then 408"
    )
    body_timeout: float = Field(
        60.0, gt=0, description="seconds for a request's body to arrive; then 408 / hang up"
    )
    shutdown_timeout: float = Field(30.0, ge=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("chat_template_stop")
    @classmethod
    def _check_chat_template_stop(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                stops = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"must be a JSON list of strings: {exc}") from exc
            if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
                raise ValueError("must be a JSON list of non-empty strings")
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if value not in ("auto", "cpu") and not value.startswith("cuda"):
            raise ValueError(f"device must be auto, cpu or cuda[:N], got {value!r}")
        return value

    @property
    def model_name(self) -> str:
        """The name clients use in the `model` field."""
        return self.served_model_name or self.model
