"""Structured output over HTTP: OpenAI's response_format, vLLM's guided_* / structured_outputs
and TGI's grammar, with the real clients, streamed and not, mixed with unconstrained requests."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import pytest
from pydantic import BaseModel, Field

from gpt2serve.server.engine.engine import Engine, EngineConfig
from support.http_server import running_server
from support.structured_cases import CHOICES, REGEXES, SCHEMAS

pytest.importorskip("xgrammar")


@pytest.fixture(scope="module")
def server(random_tiny_model, tokenizer):
    engine = Engine(random_tiny_model, tokenizer, EngineConfig(num_blocks=1024, max_num_seqs=32))
    with running_server(engine) as (url, app):
        yield url, app


def generate(url: str, body: dict, chat: bool) -> tuple[list[str], list[str]]:
    """Texts and finish reasons of every choice, streamed or not."""
    path = "/v1/chat/completions" if chat else "/v1/completions"
    payload = {**body, **({"messages": [{"role": "user", "content": "Go"}]} if chat else
               {"prompt": "Go"})}  # fmt: skip
    if not payload.get("stream"):
        response = httpx.post(f"{url}{path}", json=payload, timeout=120)
        assert response.status_code == 200, response.text
        choices = response.json()["choices"]
        text = [c["message"]["content"] if chat else c["text"] for c in choices]
        return text, [c["finish_reason"] for c in choices]
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    with httpx.stream("POST", f"{url}{path}", json=payload, timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:])["choices"]:
                piece = choice["delta"].get("content") if chat else choice["text"]
                texts[choice["index"]] = texts.get(choice["index"], "") + (piece or "")
                if choice["finish_reason"]:
                    reasons[choice["index"]] = choice["finish_reason"]
    return [texts[i] for i in sorted(texts)], [reasons[i] for i in sorted(reasons)]


def cases() -> list[tuple[dict, object]]:
    """(request fields, check) over every schema, regex and choice, through every field name."""
    out: list[tuple[dict, object]] = []
    for i, schema in enumerate(SCHEMAS):
        fields = [{"guided_json": schema}, {"structured_outputs": {"json": schema}},
                  {"response_format": {"type": "json_schema", "json_schema": {
                      "name": f"s{i}", "schema": schema, "strict": True}}}]  # fmt: skip
        out += [(f, ("json", schema)) for f in fields]
    for regex in REGEXES:
        out += [({"guided_regex": regex}, ("regex", regex)),
                ({"structured_outputs": {"regex": regex}}, ("regex", regex))]  # fmt: skip
    for choice in CHOICES:
        out += [({"guided_choice": choice}, ("choice", choice)),
                ({"structured_outputs": {"choice": choice}}, ("choice", choice))]  # fmt: skip
    return out


def satisfies(check: tuple, text: str) -> bool:
    kind, spec = check
    if kind == "json":
        jsonschema.validate(json.loads(text, strict=False), spec)
        return True
    return bool(re.fullmatch(spec, text)) if kind == "regex" else text in spec


def test_200_constrained_requests_all_validate_amid_unconstrained_ones(server) -> None:
    url, _ = server
    jobs = []
    for round_ in range(5):  # 49 cases a round: every case at least 4 times
        for number, (fields, check) in enumerate(cases()):
            body = {"max_tokens": 200, "temperature": 1.0, "seed": round_ * 100 + number,
                    "stream": (round_ + number) % 2 == 0, **fields}  # fmt: skip
            jobs.append((body, check, round_ % 2 == 1))
    jobs = jobs[:200]
    plain = [({"max_tokens": 20, "stream": i % 2 == 0}, None, False) for i in range(40)]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda job: generate(url, job[0], job[2]), jobs + plain))
    assert len(jobs) == 200 and len({json.dumps(j[1]) for j in jobs}) >= 10 + 5 + 3
    for (body, check, _), (texts, reasons) in zip(jobs, results, strict=False):
        assert reasons == ["stop"], (body, texts)
        assert all(satisfies(check, t) for t in texts), (body, texts)


def test_json_object_n_choices_and_a_stop_string(server) -> None:
    url, _ = server
    body = {"max_tokens": 300, "n": 3, "seed": 5, "response_format": {"type": "json_object"},
            "guided_decoding_backend": "xgrammar"}  # fmt: skip
    texts, reasons = generate(url, body, chat=True)
    assert len(texts) == 3 and all(t.lstrip().startswith("{") for t in texts)
    for text, reason in zip(texts, reasons, strict=True):
        if reason == "stop":  # a random model may write a long string: then "length", as vLLM
            assert isinstance(json.loads(text, strict=False), dict)
    texts, reasons = generate(url, {"guided_regex": r"\d{3}-\d{4}", "stop": ["-"]}, chat=False)
    assert re.fullmatch(r"\d{3}", texts[0]) and reasons == ["stop"]


class Person(BaseModel):
    """What the openai SDK's structured-output helper parses the reply into."""

    name: str = Field(max_length=10)
    age: int = Field(ge=0, le=99)
    member: bool


def test_openai_sdk_parse_with_a_pydantic_model(server) -> None:
    openai = pytest.importorskip("openai")
    url, _ = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    completion = client.chat.completions.parse(
        model="tiny", messages=[{"role": "user", "content": "Who?"}], response_format=Person,
        max_tokens=150, seed=3,
    )  # fmt: skip
    person = completion.choices[0].message.parsed
    assert isinstance(person, Person) and 0 <= person.age <= 99


def test_tgi_grammar_with_the_inference_client(server) -> None:
    huggingface_hub = pytest.importorskip("huggingface_hub")
    url, _ = server
    client = huggingface_hub.InferenceClient(base_url=url, api_key="unused")
    schema = SCHEMAS[0]
    text = client.text_generation("Go", max_new_tokens=150, return_full_text=False,
                                  grammar={"type": "json", "value": schema})  # fmt: skip
    jsonschema.validate(json.loads(text, strict=False), schema)
    text = client.text_generation("Go", max_new_tokens=20, return_full_text=False,
                                  grammar={"type": "regex", "value": "(yes|no)"})  # fmt: skip
    assert text in ("yes", "no")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"guided_regex": "a(b"}, "guided_regex"),
        ({"guided_json": {"type": "strin"}}, "guided_json"),
        ({"guided_json": "{not json"}, "guided_json"),
        ({"guided_grammar": "root ::= nothing_here"}, "guided_grammar"),
        ({"guided_choice": []}, "guided_choice"),
        ({"guided_choice": ["a"], "guided_regex": "b"}, "guided_choice"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "x",
                        "schema": {"type": "object", "properties": {"a": {"type": "nope"}}},
                    },
                }
            },
            "response_format.json_schema.schema",
        ),
        ({"structured_outputs": {"regex": "("}}, "structured_outputs.regex"),
    ],
)
def test_invalid_constraints_are_400_naming_the_field(server, fields, param) -> None:
    url, _ = server
    response = httpx.post(f"{url}/v1/completions", json={"prompt": "x", **fields}, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert httpx.get(f"{url}/health").status_code == 200
