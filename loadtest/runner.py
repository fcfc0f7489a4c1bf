"""Drive a workload: closed loop (fixed concurrency) or open loop (Poisson arrivals)."""

from __future__ import annotations

import asyncio
import random
import sys
import time
from urllib.parse import urlsplit, urlunsplit

import httpx

from gpt2serve.loadtest.client import RequestResult, RequestSpec, send_request
from gpt2serve.loadtest.stats import Summary, summarize
from gpt2serve.loadtest.workload import poisson_delays


def completions_url(base_url: str) -> str:
    """`<server>/v1/completions` from the server's URL given with or without `/v1`."""
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"--base-url must be an http:// or https:// URL, got {base_url!r}")
    path = parts.path.rstrip("/")
    for suffix in ("/v1/completions", "/v1"):
        if path.endswith(suffix):
            path = path[: -len(suffix)].rstrip("/")
            break
    return urlunsplit((parts.scheme, parts.netloc, f"{path}/v1/completions", parts.query, ""))


class Progress:
    """A one-line progress bar on stderr (silent when disabled)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.done = 0
        self.enabled = enabled
        self.started = time.perf_counter()

    def advance(self) -> None:
        """Count one finished request."""
        self.done += 1
        if self.enabled:
            elapsed = time.perf_counter() - self.started
            filled = int(30 * self.done / max(1, self.total))
            bar = "#" * filled + "." * (30 - filled)
            sys.stderr.write(f"\r[{bar}] {self.done}/{self.total} {elapsed:6.1f}s")
            if self.done == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


async def run_load(
    base_url: str,
    model: str,
    specs: list[RequestSpec],
    concurrency: int | None = None,
    request_rate: float = float("inf"),
    ignore_eos: bool = True,
    api_key: str | None = None,
    seed: int = 0,
    progress: bool = True,
    timeout: float = 600.0,
) -> tuple[Summary, list[RequestResult]]:
    """Send every request; concurrency caps in-flight requests, request_rate paces arrivals."""
    url = completions_url(base_url)
    limit = concurrency or len(specs)
    semaphore = asyncio.Semaphore(limit)
    bar = Progress(len(specs), progress)
    limits = httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:

        async def one(spec: RequestSpec) -> RequestResult:
            async with semaphore:
                result = await send_request(client, url, model, spec, ignore_eos, api_key)
            bar.advance()
            return result

        delays = poisson_delays(random.Random(seed), request_rate, len(specs))
        started = time.perf_counter()
        tasks = []
        for spec, delay in zip(specs, delays, strict=True):
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(spec)))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - started
    return summarize(list(results), duration), list(results)
