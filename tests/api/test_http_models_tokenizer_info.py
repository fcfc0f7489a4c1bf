"""GET /v1/models/{id} (openai's models.retrieve) and GET /tokenizer_info (lm-eval's), keyed."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
from starlette.testclient import TestClient

from gpt2serve.server.api.app import create_app
from gpt2serve.server.api.chat_template import DEFAULT_CHAT_TEMPLATE
from gpt2serve.server.config import ServerSettings
from gpt2serve.server.engine.engine import Engine, EngineConfig
from support.http_server import running_server

openai = pytest.importorskip("openai")

API_KEY = "info-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
EOS = "<|endoftext|>"
EOS_ID = 50256


@pytest.fixture(scope="module")
def server(tiny_model, tokenizer):
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=64, max_num_seqs=4))
    with running_server(engine, api_key=API_KEY) as (url, app):
        yield url, app


@pytest.fixture(scope="module")
def url(server) -> str:
    return server[0]


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=30)


def get(url: str, path: str, headers: dict[str, str] | None = AUTH) -> httpx.Response:
    return httpx.get(f"{url}{path}", headers=headers, timeout=30)


def test_retrieve_answers_the_card_models_lists(client, url) -> None:
    listed = get(url, "/v1/models").json()["data"][0]
    model = client.models.retrieve("tiny")
    assert model.id == "tiny" and model.object == "model" and model.owned_by == "gpt2serve"
    card = model.model_dump(exclude_unset=True)  # the fields the server sent
    assert abs(card.pop("created") - listed.pop("created")) <= 2  # both stamped when answered
    assert card == listed  # every field, max_model_len and root included
    assert listed == {"id": "tiny", "object": "model", "owned_by": "gpt2serve",
                      "root": "random:tiny", "max_model_len": 1024}  # fmt: skip


@pytest.mark.parametrize("model_id", ["gpt2", "TINY", "tiny ", "org/tiny", "tiny/x", "%2F"])
def test_any_other_id_is_404_model_not_found(client, url, model_id: str) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve(model_id)
    assert info.value.status_code == 404 and info.value.code == "model_not_found"
    response = get(url, f"/v1/models/{model_id}")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert error["type"] == "not_found_error" and "'tiny'" in error["message"]


def test_a_served_name_with_a_slash_is_retrieved(tiny_model, tokenizer) -> None:
    """The SDK sends `org/name` percent-encoded (`org%2Fname`); the route takes the whole path."""
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=16, max_num_seqs=2))
    settings = ServerSettings(model="random:tiny", served_model_name="openai-community/gpt2")
    with TestClient(create_app(settings, engine=engine), base_url="http://testserver") as http:
        sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=http)
        assert sdk.models.retrieve("openai-community/gpt2").id == "openai-community/gpt2"
        assert http.get("/v1/models/openai-community/gpt2").json()["id"] == "openai-community/gpt2"
        with pytest.raises(openai.NotFoundError):
            sdk.models.retrieve("openai-community")


@pytest.mark.parametrize("path", ["/v1/models/tiny", "/v1/models/nope", "/tokenizer_info"])
def test_both_routes_are_behind_the_api_key(url, path: str) -> None:
    for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        response = get(url, path, headers)
        assert response.status_code == 401, (path, headers)
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert response.headers["www-authenticate"] == "Bearer"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.retrieve("tiny")


def test_tokenizer_info_is_gpt2s_tokenizer_config(url) -> None:
    response = get(url, "/tokenizer_info")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    info = response.json()
    # The fields vLLM's /tokenizer_info answers for GPT-2 (its HF tokenizer config), plus ids.
    assert info == {
        "tokenizer_class": "GPT2TokenizerFast",
        "bos_token": EOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": None,
        "add_bos_token": False,
        "add_prefix_space": False,
        "model_max_length": get(url, "/v1/models").json()["data"][0]["max_model_len"],
        "chat_template": DEFAULT_CHAT_TEMPLATE,
        "bos_token_id": EOS_ID,
        "eos_token_id": EOS_ID,
        "vocab_size": 50257,
    }
    detokenized = httpx.post(f"{url}/detokenize", json={"tokens": [EOS_ID]}, headers=AUTH)
    assert detokenized.json()["prompt"] == info["eos_token"]


def test_tokenizer_info_serves_the_chat_template_file(tiny_model, tokenizer, tmp_path) -> None:
    source = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
    template = tmp_path / "chat.jinja"
    template.write_text(source)
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=16, max_model_len=64))
    with running_server(engine, chat_template=str(template)) as (url, _):
        info = get(url, "/tokenizer_info", None).json()
        template.write_text("changed after the first answer")
        assert get(url, "/tokenizer_info", None).json() == info  # read once
    assert info["chat_template"] == source and info["model_max_length"] == 64


# lm-evaluation-harness 0.4.13, lm_eval/utils.py: RemoteTokenizer reads /tokenizer_info's
# eos_token, bos_token, pad_token and chat_template (rendered with jinja2 by lm-eval itself), and
# check_remote_tokenizer_support wants a JSON object with "eos_token" and a /tokenize whose
# answer has a "tokens" list. Its base URL may end in /v1/completions; it strips that.


@pytest.fixture(scope="module")
def remote_tokenizer(url):
    utils = pytest.importorskip("lm_eval.utils")
    return utils.RemoteTokenizer(f"{url}/v1/completions", timeout=30, auth_token=API_KEY)


def test_lm_eval_detects_and_uses_the_remote_tokenizer(url, remote_tokenizer) -> None:
    utils = pytest.importorskip("lm_eval.utils")
    base = f"{url}/v1/completions"
    assert utils.check_remote_tokenizer_support(base, auth_token=API_KEY, max_retries=1)
    assert not utils.check_remote_tokenizer_support(base, auth_token="wrong", max_retries=1)
    assert remote_tokenizer.eos_token == EOS and remote_tokenizer.bos_token == EOS
    assert remote_tokenizer.pad_token is None
    tokens = remote_tokenizer.encode("Hello world")
    assert tokens == [15496, 995] and remote_tokenizer.decode(tokens) == "Hello world"
    assert remote_tokenizer("Hello world") == {"input_ids": [15496, 995]}


def test_lm_eval_renders_the_servers_chat_template(url, remote_tokenizer) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    rendered = remote_tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    served = httpx.post(f"{url}/tokenize", json={"messages": messages}, headers=AUTH).json()
    assert rendered == "Be brief.\n\nUser: Hi\nAssistant:"
    assert remote_tokenizer.decode(served["tokens"]) == rendered


def test_lm_eval_reads_gpt2s_special_token_ids(remote_tokenizer) -> None:
    """lm-eval's eot/prefix token is /tokenize(eos_token)[0]: the special token, as with vLLM."""
    assert remote_tokenizer.eos_token_id == EOS_ID == remote_tokenizer.eot_token
    assert remote_tokenizer.bos_token_id == EOS_ID


def test_openapi_documents_both_routes(url) -> None:
    spec = get(url, "/openapi.json", None).json()
    retrieve = spec["paths"]["/v1/models/{model_id}"]["get"]
    info = spec["paths"]["/tokenizer_info"]["get"]
    ok = {"application/json": {"schema": {"$ref": "#/components/schemas/Model"}}}
    assert retrieve["responses"]["200"]["content"] == ok
    assert set(retrieve["responses"]) == {"200", "401", "404", "408", "431", "500"}  # any path
    assert retrieve["parameters"][0]["in"] == "path"
    assert set(info["responses"]) == {"200", "401", "408", "431", "500"}
    schema = info["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/TokenizerInfo"}
    assert {"eos_token", "bos_token", "pad_token", "chat_template"} <= set(
        spec["components"]["schemas"]["TokenizerInfo"]["required"]
    )
    assert retrieve["security"] == info["security"] == [{"bearer": []}]


# Fuzzing the two routes as test_schemathesis.py does the others (its EXAMPLES table lists them
# not): schema-valid and -invalid cases and the coverage phase, under every built-in check.
NEW_OPERATIONS = [("GET", "/v1/models/{model_id}"), ("GET", "/tokenizer_info")]


@pytest.fixture(scope="module")
def api(url):
    schemathesis = pytest.importorskip("schemathesis")
    return schemathesis.openapi.from_dict(get(url, "/openapi.json", None).json())


@pytest.mark.parametrize(("method", "path"), NEW_OPERATIONS)
def test_fuzz_new_routes(url, api, method: str, path: str) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    operation = api[path][method]
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    statuses = []

    @given(case=st.one_of([operation.as_strategy(generation_mode=m) for m in modes]))
    @settings(max_examples=40, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def fuzz(case) -> None:
        statuses.append(case.call_and_validate(base_url=url, headers=AUTH, timeout=30).status_code)

    fuzz()
    config = api.config.generation_for(operation=operation, phase="coverage")
    for case in api.iter_coverage_cases(
        operation, generation_modes=modes, generation_config=config
    ):
        statuses.append(case.call_and_validate(base_url=url, headers=AUTH, timeout=30).status_code)
    print(path, Counter(statuses))
    # 401: schemathesis also sends the bearer scheme's own (wrong) credentials, or none.
    assert set(statuses) <= {200, 401, 404, 405} and 200 in statuses
    assert (404 in statuses) == ("{model_id}" in path)
    assert httpx.get(f"{url}/health").status_code == 200
