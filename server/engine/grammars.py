"""Grammar compilation off the engine's step path: one worker thread, a bounded cache of results.

The HTTP side submits a request's spec and awaits it before admitting the request, so a slow or
invalid grammar delays (or refuses) that request only; the batch never waits. Offline callers
that hand the engine an uncompiled spec get it compiled on the spot.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from gpt2serve.model.tokenizer import Tokenizer
from gpt2serve.server.core.request import Request, RequestStatus
from gpt2serve.server.core.scheduler import Scheduler
from gpt2serve.server.core.structured_output import GrammarError, StructuredOutput
from gpt2serve.server.worker.grammar import GrammarBackend

DEFAULT_CACHE_SIZE = 256  # compiled grammars kept (JSON schemas are ~100 KB-1 MB each)
DEFAULT_TIMEOUT = 30.0  # seconds a compile may take before its request fails


class GrammarService:
    """Compiles `StructuredOutput` specs on its own thread; caches by spec, least recent out."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        cache_size: int = DEFAULT_CACHE_SIZE,
        timeout: float = DEFAULT_TIMEOUT,
        backend_factory: Callable[[Tokenizer], GrammarBackend] = GrammarBackend,
    ) -> None:
        self.tokenizer = tokenizer
        self.cache_size = cache_size
        self.timeout = timeout
        self._backend_factory = backend_factory
        self._backend: GrammarBackend | None = None  # built on the first compile (seconds)
        self._executor: ThreadPoolExecutor | None = None  # started on the first compile
        self._cache: OrderedDict[tuple[str, str], Future] = OrderedDict()
        self._lock = threading.Lock()

    def submit(self, spec: StructuredOutput) -> Future:
        """A future of the compiled grammar (a cache hit is already done); GrammarError inside
        if the spec is invalid."""
        with self._lock:
            future = self._cache.get(spec.key)
            if future is not None and not future.cancelled():
                self._cache.move_to_end(spec.key)
                return future
            if self._executor is None:  # first use, or the engine was restarted
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="grammar-compile")
            future = self._executor.submit(self._compile, spec)
            self._cache[spec.key] = future
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return future

    def compile_now(self, spec: StructuredOutput) -> object:
        """The compiled grammar, waiting for it (GrammarError if invalid or too slow)."""
        try:
            return self.submit(spec).result(timeout=self.timeout)
        except FutureTimeout as exc:
            raise too_slow(spec, self.timeout) from exc

    def _compile(self, spec: StructuredOutput) -> object:
        if self._backend is None:
            self._backend = self._backend_factory(self.tokenizer)
        return self._backend.compile(spec)

    def too_slow(self, spec: StructuredOutput) -> GrammarError:
        """The error of a compile that did not finish within the timeout."""
        return too_slow(spec, self.timeout)

    def shutdown(self) -> None:
        """Stop the worker thread (pending compiles are cancelled); a later submit restarts it."""
        with self._lock:
            executor, self._executor = self._executor, None
            for key in [k for k, f in self._cache.items() if not f.done()]:
                del self._cache[key]  # cancelled below: never hand one out again
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


def too_slow(spec: StructuredOutput, timeout: float) -> GrammarError:
    """The error of a compile that did not finish within `timeout` seconds."""
    return GrammarError(
        f"{spec.param} took longer than {timeout:g}s to compile; simplify it", spec.param
    )


def advance_matchers(updated: list[Request], scheduler: Scheduler) -> None:
    """Each constrained sequence's matcher takes its new token; a grammar that is complete
    (it accepted the end token) ends the sequence, even with ignore_eos."""
    for request in updated:
        matcher = request.grammar
        if matcher is None or not request.output_token_ids:
            continue
        accepted = matcher.accept_token(request.output_token_ids[-1])  # type: ignore[attr-defined]
        done = not accepted or matcher.is_terminated()  # type: ignore[attr-defined]
        if done and not request.is_finished:
            scheduler.finish_request(request.request_id, RequestStatus.FINISHED_STOPPED)
