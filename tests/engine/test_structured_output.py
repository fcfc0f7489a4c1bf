"""Structured output in the engine: every kind of constraint holds, with seeds, n, preemption,
beams and unconstrained neighbours; grammar compilation stays off the step path."""

from __future__ import annotations

import json
import re
import threading
import time

import jsonschema
import pytest

from gpt2serve.benchmarks.engine_runs import random_prompt, run_to_completion
from gpt2serve.server.core.request_limits import InvalidRequestError
from gpt2serve.server.core.sampling_params import SamplingParams
from gpt2serve.server.core.structured_output import GrammarError, StructuredOutput
from gpt2serve.server.engine.engine import Engine, EngineConfig
from gpt2serve.server.engine.grammars import GrammarService
from support.structured_cases import CHOICES, REGEXES, SCHEMAS

pytest.importorskip("xgrammar")


@pytest.fixture
def engine(random_tiny_model, tokenizer):
    """`random:tiny` (GPT-2's init, no structure of its own): only the grammar makes it valid."""

    def make(**config) -> Engine:
        return Engine(random_tiny_model, tokenizer, EngineConfig(**{"num_blocks": 512, **config}))

    return make


def texts(outputs) -> dict[int, str]:
    by_index: dict[int, str] = {}
    for output in outputs:
        by_index[output.index] = by_index.get(output.index, "") + output.text
    return by_index


def constrained(spec: StructuredOutput, **params) -> SamplingParams:
    return SamplingParams(**{"max_tokens": 200, "temperature": 1.0, **params},
                          structured_output=spec)  # fmt: skip


def check(spec: StructuredOutput, text: str) -> None:
    if spec.kind == "json_schema":
        jsonschema.validate(json.loads(text, strict=False), json.loads(spec.spec))
    elif spec.kind == "regex":
        assert re.fullmatch(spec.spec, text), text
    elif spec.kind == "choice":
        assert text in spec.choices, text


ALL_SPECS = [
    *(StructuredOutput.json_schema(s, "guided_json") for s in SCHEMAS),
    *(StructuredOutput("regex", r, "guided_regex") for r in REGEXES),
    *(StructuredOutput.choice(c, "guided_choice") for c in CHOICES),
]


def test_every_schema_regex_and_choice_holds_for_every_choice(engine) -> None:
    requests = {f"r{i}": (random_prompt(5 + i, i), constrained(spec, n=3, seed=i))
                for i, spec in enumerate(ALL_SPECS)}  # fmt: skip
    outputs = run_to_completion(engine(), requests)
    for i, spec in enumerate(ALL_SPECS):
        finished = [o for o in outputs[f"r{i}"] if o.finished]
        assert {o.finish_reason for o in finished} == {"stop"}, spec
        for text in texts(outputs[f"r{i}"]).values():
            check(spec, text)


def test_same_seed_same_constrained_output_alone_or_batched(engine) -> None:
    spec = StructuredOutput.json_schema(SCHEMAS[0], "guided_json")
    request = (random_prompt(7, 1), constrained(spec, seed=42))
    alone = texts(run_to_completion(engine(), {"a": request})["a"])
    crowd = {f"o{i}": (random_prompt(9, 50 + i), constrained(ALL_SPECS[i], seed=i)) for i in
             range(6)}  # fmt: skip
    crowd.update({f"u{i}": (random_prompt(9, 70 + i), SamplingParams(max_tokens=30, seed=i))
                  for i in range(4)})  # fmt: skip
    batched = texts(run_to_completion(engine(), {**crowd, "a": request})["a"])
    assert alone == batched


def test_unconstrained_requests_are_unchanged_by_constrained_neighbours(engine) -> None:
    plain = {f"u{i}": (random_prompt(9, 70 + i), SamplingParams(max_tokens=20, seed=i,
             temperature=1.0)) for i in range(4)}  # fmt: skip
    alone = run_to_completion(engine(), plain)
    mixed = {**plain, **{f"c{i}": (random_prompt(6, i), constrained(ALL_SPECS[i], seed=i))
                         for i in range(4)}}  # fmt: skip
    together = run_to_completion(engine(), mixed)
    assert all(texts(alone[rid]) == texts(together[rid]) for rid in plain)


def test_preempted_constrained_requests_keep_their_grammar_state(engine) -> None:
    specs = [StructuredOutput.json_schema(s, "guided_json") for s in SCHEMAS[:6]]
    requests = {f"c{i}": (random_prompt(40, i), constrained(spec, seed=i, max_tokens=120))
                for i, spec in enumerate(specs)}  # fmt: skip
    alone = {rid: texts(run_to_completion(engine(), {rid: r})[rid]) for rid, r in
             requests.items()}  # fmt: skip
    tight = engine(num_blocks=20, max_num_batched_tokens=32)  # 6 x 3 prompt blocks of 19
    together = run_to_completion(tight, requests)
    assert tight.scheduler.num_preemptions_total > 0
    for rid, expected in alone.items():
        assert texts(together[rid]) == expected, rid


def test_beam_search_under_a_grammar_returns_valid_sequences(engine) -> None:
    spec = StructuredOutput.json_schema(SCHEMAS[2], "guided_json")
    params = SamplingParams(max_tokens=60, use_beam_search=True, best_of=4, n=3,
                            structured_output=spec)  # fmt: skip
    outputs = run_to_completion(engine(), {"b": (random_prompt(8, 3), params)})["b"]
    assert len(outputs) == 3
    for output in outputs:
        check(spec, output.text)


def test_a_complete_grammar_ends_the_sequence_even_with_ignore_eos(engine) -> None:
    spec = StructuredOutput.choice(["yes", "no"], "guided_choice")
    outputs = run_to_completion(engine(), {"c": (random_prompt(4, 1), constrained(
        spec, ignore_eos=True, max_tokens=50))})["c"]  # fmt: skip
    assert outputs[-1].finish_reason == "stop" and texts(outputs)[0] in ("yes", "no")


def test_a_length_cut_reports_length_like_vllm(engine) -> None:
    spec = StructuredOutput.json_schema(SCHEMAS[0], "guided_json")
    outputs = run_to_completion(engine(), {"c": (random_prompt(4, 1), constrained(
        spec, max_tokens=3))})["c"]  # fmt: skip
    assert outputs[-1].finish_reason == "length"
    with pytest.raises(json.JSONDecodeError):
        json.loads(texts(outputs)[0])


@pytest.mark.parametrize(
    ("spec", "param"),
    [
        (StructuredOutput("regex", "a(b", "guided_regex"), "guided_regex"),
        (StructuredOutput.json_schema({"type": "strin"}, "guided_json"), "guided_json"),
        (
            StructuredOutput("grammar", "root ::= undefined_rule", "guided_grammar"),
            "guided_grammar",
        ),
    ],
)
def test_an_invalid_spec_is_an_invalid_request_naming_its_field(engine, spec, param) -> None:
    e = engine()
    with pytest.raises(InvalidRequestError) as info:
        e.add_request("x", e.request_limits.check([1, 2], constrained(spec)))
    assert info.value.param == param and not e.has_unfinished_requests()


class _SlowBackend:
    def __init__(self, tokenizer) -> None:
        self.calls = 0
        self.release = threading.Event()

    def compile(self, spec: StructuredOutput) -> object:
        self.calls += 1
        self.release.wait(5)
        return ("compiled", spec.key)


def test_the_grammar_cache_compiles_once_is_bounded_and_times_out(tokenizer) -> None:
    service = GrammarService(tokenizer, cache_size=2, timeout=0.2, backend_factory=_SlowBackend)
    spec = StructuredOutput("regex", "a+", "guided_regex")
    started = time.monotonic()
    with pytest.raises(GrammarError, match="longer than") as info:
        service.compile_now(spec)  # the compile is still running: this request gives up
    assert info.value.param == "guided_regex" and time.monotonic() - started < 2
    backend = service._backend
    backend.release.set()
    assert service.compile_now(spec) == ("compiled", spec.key)  # the same compile, finished
    assert service.submit(spec).done() and backend.calls == 1
    for pattern in ("b+", "c+"):
        service.compile_now(StructuredOutput("regex", pattern, "guided_regex"))
    assert len(service._cache) == 2 and spec.key not in service._cache  # least recent out
    service.shutdown()


def test_prefix_cache_hits_do_not_change_constrained_output(engine) -> None:
    spec = StructuredOutput.json_schema(SCHEMAS[6], "guided_json")
    prompt = random_prompt(70, 4)  # four full blocks the second request finds cached
    params = constrained(spec, seed=8)
    e = engine()
    first = texts(run_to_completion(e, {"a": (prompt, params)})["a"])
    second = texts(run_to_completion(e, {"b": (prompt, params)})["b"])
    assert e.block_manager.prefix_cache_hits >= 64
    assert first == second
    check(spec, second[0])


def test_the_grammar_service_restarts_after_a_shutdown(tokenizer) -> None:
    # An engine served by one app, shut down, then served again (tests, reloads) still compiles.
    service = GrammarService(tokenizer)
    spec = StructuredOutput("regex", "[ab]{2}", "guided_regex")
    first = service.compile_now(spec)
    service.shutdown()
    assert service.compile_now(spec) is first  # finished compiles stay cached
    assert service.compile_now(StructuredOutput("regex", "c+", "guided_regex")) is not None
    service.shutdown()
