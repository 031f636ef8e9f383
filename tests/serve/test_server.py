"""The embedded server, over real HTTP, driven by the official openai client."""

import httpx
import openai
import pytest


def test_openai_client_alias_artifact_and_base(served):
    url, base, artifact = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    models = {m.id for m in client.models.list()}
    assert {base.id, "tiny@production"} <= models
    messages = [{"role": "user", "content": "Ada, 36, London"}]
    by_alias = client.chat.completions.create(model="tiny", messages=messages, max_tokens=5)
    assert by_alias.model == artifact.id
    meta = dict(by_alias.tuneops)
    assert meta.pop("request_id").startswith("tr-")
    assert meta == {"base": base.id, "artifact": artifact.id, "alias": "tiny@production", "requested": "tiny",
                    "interrupted": None, "path": "batched", "role": "primary", "fallback": None}
    assert by_alias.usage.completion_tokens <= 5 and by_alias.choices[0].message.role == "assistant"
    by_id = client.chat.completions.create(model=artifact.id, messages=messages, max_tokens=5)
    assert by_id.choices[0].message.content == by_alias.choices[0].message.content  # greedy: same adapter, same text
    on_base = client.chat.completions.create(model=base.id, messages=messages, max_tokens=5)
    assert on_base.model == base.id and on_base.tuneops["artifact"] is None


def test_unknown_model_is_404_with_message(served):
    url, *_ = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nobody@production", messages=[{"role": "user", "content": "x"}])
    assert "alias nobody@production does not exist" in str(e.value)
    r = httpx.post(f"{url}/v1/chat/completions", json={"model": "ad-0000", "messages": [{"role": "user",
                                                                                       "content": "x"}]})
    assert r.status_code == 404 and "artifact 'ad-0000' not found" in r.json()["error"]["message"]
    assert r.headers["content-type"].startswith("application/json")


def test_response_headers_name_base_and_artifact(served):
    url, base, artifact = served
    r = httpx.post(f"{url}/v1/chat/completions",
                   json={"model": "tiny@production", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert r.status_code == 200
    assert r.headers["x-tuneops-base"] == base.id and r.headers["x-tuneops-artifact"] == artifact.id
