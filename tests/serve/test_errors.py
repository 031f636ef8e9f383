"""Every error the server gives is OpenAI-shaped JSON, names the field, and never echoes the input."""

import httpx
import openai
import pytest

from tests.serve.conftest import running

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]


def _post_raw(url: str, body: str, **headers) -> httpx.Response:
    """POST a hand-written JSON text (httpx's json= refuses NaN and lone surrogates)."""
    return httpx.post(url + CHAT, content=body.encode("utf-8", "surrogatepass"),
                      headers={"content-type": "application/json", **headers}, timeout=30)


def _openai_error(r: httpx.Response) -> dict:
    assert r.headers["content-type"].startswith("application/json"), r.text
    body = r.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


@pytest.mark.parametrize("field, value", [("temperature", "NaN"), ("temperature", "Infinity"),
                                          ("top_p", "-Infinity"), ("max_tokens", "1e999")])
def test_non_finite_numbers_are_400_naming_the_field(served, field, value):
    url, *_ = served
    r = _post_raw(url, f'{{"model": "tiny", "messages": [{{"role": "user", "content": "hi"}}], "{field}": {value}}}')
    assert r.status_code == 400
    err = _openai_error(r)
    assert err["param"] == field and err["message"].startswith(f"{field}: ")
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize("where, body", [
    ("messages[0].content", '{"model": "tiny", "messages": [{"role": "user", "content": "a\\ud800b"}]}'),
    ("messages[0].content[0].text",
     '{"model": "tiny", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}'),
    ("stop[1]", '{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stop": ["x", "\\ud83d"]}'),
    ("model", '{"model": "tiny\\udc00", "messages": [{"role": "user", "content": "hi"}]}'),
])
def test_lone_surrogates_are_400_naming_the_field(served, where, body):
    url, *_ = served
    r = _post_raw(url, body)
    assert r.status_code == 400
    err = _openai_error(r)
    assert err["message"].startswith(f"{where}: ") and "surrogate" in err["message"]


def test_validation_errors_name_the_field_and_never_echo_the_input(served):
    url, *_ = served
    secret = "SECRET-" + "x" * 50
    cases = {
        "messages[0].role": {"model": "tiny", "messages": [{"role": secret, "content": "hi"}]},
        "max_tokens": {"model": "tiny", "messages": HI, "max_tokens": secret},
        "messages": {"model": "tiny", "messages": []},
        "n": {"model": "tiny", "messages": HI, "n": 9},
        "stop": {"model": "tiny", "messages": HI, "stop": ["a", "b", "c", "d", "e"]},
        "model": {"messages": HI},
    }
    for param, body in cases.items():
        r = httpx.post(url + CHAT, json=body, timeout=30)
        assert r.status_code == 400, (param, r.text)
        err = _openai_error(r)
        assert err["param"] == param and err["message"].startswith(f"{param}: "), (param, err)
        assert secret not in r.text
    # Not JSON at all, and JSON that is not an object.
    for raw in ('{"model": ', "[1, 2]"):
        r = _post_raw(url, raw)
        assert r.status_code == 400 and _openai_error(r)["type"] == "invalid_request_error"


def test_openai_client_sees_bad_request_not_server_error(served):
    url, *_ = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=HI, n=100)
    assert e.value.param == "n"


def test_unknown_routes_and_methods_are_openai_shaped(served):
    url, *_ = served
    r = httpx.get(url + "/v1/nothing-here")
    assert r.status_code == 404 and _openai_error(r)
    r = httpx.delete(url + CHAT)
    assert r.status_code == 405 and _openai_error(r)


@pytest.mark.parametrize("param, value", [
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
    ("tool_choice", "required"), ("functions", [{"name": "f"}]), ("logprobs", True), ("top_logprobs", 3),
    ("response_format", {"type": "json_object"}), ("logit_bias", {"1": 5}),
    ("presence_penalty", 0.5), ("frequency_penalty", -1.0),
])
def test_unsupported_parameters_are_refused_by_name(served, param, value):
    url, *_ = served
    r = httpx.post(url + CHAT, json={"model": "tiny", "messages": HI, "max_tokens": 2, param: value}, timeout=30)
    assert r.status_code == 400
    err = _openai_error(r)
    assert err["code"] == "unsupported_parameter" and err["param"] == param and param in err["message"]


def test_harmless_parameters_are_accepted(served):
    url, *_ = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    out = client.chat.completions.create(model="tiny", messages=HI, max_tokens=2, user="u-1", metadata={"k": "v"},
                                         store=False, presence_penalty=0, frequency_penalty=0, logprobs=False,
                                         response_format={"type": "text"}, stream=False)
    assert out.choices[0].message.role == "assistant"


def test_openapi_documents_openai_errors_and_no_422(served_store):
    from tuneops.serve.app import create_app

    store, base, _ = served_store
    schema = create_app(store, base.id, api_key="k").openapi()
    assert "ErrorResponse" in schema["components"]["schemas"]
    for path in ("/v1/chat/completions", "/v1/models"):
        (op,) = schema["paths"][path].values()
        assert {"400", "401", "404", "413", "503"} <= set(op["responses"]), path
        assert "422" not in op["responses"]
        assert op["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
        assert op.get("security"), "the bearer key is documented"


def test_api_key_is_required_when_configured(served_store):
    from tuneops.serve.app import create_app

    store, base, _ = served_store
    with running(create_app(store, base.id, api_key="s3cret")) as url:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic czNjcmV0"}):
            r = httpx.post(url + CHAT, json={"model": "tiny", "messages": HI, "max_tokens": 1}, headers=headers)
            assert r.status_code == 401
            assert _openai_error(r)["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
        assert any(m.id == "tiny@production" for m in client.models.list())
        assert client.chat.completions.create(model="tiny", messages=HI, max_tokens=1).choices
        assert httpx.get(url + "/healthz").status_code == 200  # probes need no key
