"""The embedded server, over real HTTP, driven by the official openai client."""

import socket
import threading
import time

import httpx
import openai
import pytest
import uvicorn

from tests.conftest import tiny_recipe
from tuneops.pipeline import run_recipe
from tuneops.serve.app import create_app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    from tuneops.data.bundled import json_extraction_rows
    from tuneops.data.ingest import ingest_rows
    from tuneops.models.base import import_local
    from tuneops.store import Store

    store = Store(tmp_path_factory.mktemp("serve-store"))
    base, _ = import_local(store, tiny_model_dir, name="tiny-llama")
    train_rows, eval_rows = json_extraction_rows(8, 2, seed=2)
    ingest_rows(store, train_rows, name="tiny-train")
    ingest_rows(store, eval_rows, name="tiny-eval")
    out = run_recipe(store, tiny_recipe(base.id, train={"max_steps": 2, "batch_size": 4, "threads": 2},
                                        eval={"suites": ["json_extraction"], "max_new_tokens": 4, "max_items": 2},
                                        gates=[]))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(store, base.id), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", base, out.artifact
    server.should_exit = True
    thread.join(timeout=10)


def test_openai_client_alias_artifact_and_base(served):
    url, base, artifact = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    models = {m.id for m in client.models.list()}
    assert {base.id, "tiny@production"} <= models
    messages = [{"role": "user", "content": "Ada, 36, London"}]
    by_alias = client.chat.completions.create(model="tiny", messages=messages, max_tokens=5)
    assert by_alias.model == artifact.id
    assert by_alias.tuneops == {"base": base.id, "artifact": artifact.id, "alias": "tiny@production",
                                "requested": "tiny"}
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
