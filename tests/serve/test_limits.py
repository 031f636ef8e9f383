"""Bounded: prompts past the context, oversized bodies, slow generations, clients that leave."""

import threading
import time

import httpx
import openai
import pytest

from tests.serve.conftest import running

SLOW_CONTEXT = 65536
SLOW_TOKENS = 60000  # minutes of generation for the tiny model on this CPU


@pytest.fixture(scope="module")
def slow_store(smollm_tokenizer_dir, tmp_path_factory):
    """(store, base) of the tiny random Llama with a 64k context: asked for 60k tokens, it
    generates for minutes, so a test can watch a generation that would outlive it."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tuneops.models.base import import_local
    from tuneops.store import Store

    tok = AutoTokenizer.from_pretrained(smollm_tokenizer_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SLOW_CONTEXT,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    model_dir = tmp_path_factory.mktemp("slow-llama")
    LlamaForCausalLM(cfg).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    store = Store(tmp_path_factory.mktemp("slow-store"))
    base, _ = import_local(store, model_dir, name="slow-llama")
    return store, base


def _chat(model: str, max_tokens: int | None = None, content: str = "hi") -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    return body | ({"max_tokens": max_tokens} if max_tokens else {})


def _health(url: str) -> dict:
    return httpx.get(url + "/healthz", timeout=10).json()


def _wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


class _Client(threading.Thread):
    """One request in the background from a client that gives up after ``patience`` seconds."""

    def __init__(self, url: str, body: dict, patience: float):
        super().__init__(daemon=True)
        self.url, self.body, self.patience = url, body, patience
        self.response: httpx.Response | None = None
        self.error: Exception | None = None
        self.start()

    def run(self):
        try:
            self.response = httpx.post(self.url + "/v1/chat/completions", json=self.body, timeout=self.patience)
        except httpx.TimeoutException as e:  # the client hangs up
            self.error = e


# -- context ---------------------------------------------------------------------------------

def test_prompt_past_the_context_is_400_context_length_exceeded(served):
    url, *_ = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    started = time.monotonic()
    with pytest.raises(openai.BadRequestError) as e:  # 200k characters: ~40k tokens against 512
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "word " * 40000}])
    assert time.monotonic() - started < 20  # refused up front, nothing generated
    assert e.value.code == "context_length_exceeded" and e.value.param == "messages"
    assert e.value.body["message"].startswith("This model's maximum context length is 512 tokens. However, your "
                                              "messages resulted in ")
    # A prompt that fits, with a completion that does not.
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=500)
    msg = e.value.body["message"]
    assert e.value.code == "context_length_exceeded"
    assert msg.startswith("This model's maximum context length is 512 tokens. However, you requested ")
    assert "in the messages, 500 in the completion). Please reduce the length of the messages or completion." in msg
    # Without max_tokens the completion is sized to what is left of the context.
    ok = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "word " * 85}])
    assert ok.usage.total_tokens <= 512


# -- body size -------------------------------------------------------------------------------

def test_body_over_the_cap_is_413_before_parsing(served_store):
    from tuneops.serve.app import create_app

    store, base, _ = served_store
    limit = 64 * 1024
    body = ('{"model": "tiny", "messages": [{"role": "user", "content": "' + "x" * (2 * limit) + '"}]}').encode()
    with running(create_app(store, base.id, max_body_bytes=limit)) as url:
        declared = httpx.post(url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        assert declared.status_code == 413
        assert declared.json()["error"]["type"] == "invalid_request_error"

        def chunks():  # no Content-Length: the body is counted as it arrives
            for i in range(0, len(body), 8192):
                yield body[i:i + 8192]

        streamed = httpx.post(url + "/v1/chat/completions", content=chunks(),
                              headers={"content-type": "application/json"})
        assert streamed.status_code == 413 and "error" in streamed.json()
        small = httpx.post(url + "/v1/chat/completions", json=_chat("tiny", 1), timeout=30)
        assert small.status_code == 200


# -- time limits and clients that leave -----------------------------------------------------

def test_time_limit_returns_the_text_so_far(slow_store):
    from tuneops.serve.app import create_app

    store, base = slow_store
    with running(create_app(store, base.id, request_timeout=2.0, max_tokens_limit=SLOW_TOKENS)) as url:
        started = time.monotonic()
        r = httpx.post(url + "/v1/chat/completions", json=_chat(base.id, SLOW_TOKENS), timeout=30)
        took = time.monotonic() - started
        assert r.status_code == 200, r.text
        body = r.json()
        assert 1.5 < took < 8
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["tuneops"]["interrupted"] == "time_limit"
        assert 0 < body["usage"]["completion_tokens"] < SLOW_TOKENS
        assert _health(url)["busy"] is False


@pytest.fixture(scope="module")
def patient_server(slow_store):
    """A server whose requests may take minutes, so only a leaving client can end them. One row per forward
    pass (max_batch=1): a second request waits for its turn instead of joining the running batch."""
    from tuneops.serve.app import create_app

    store, base = slow_store
    with running(create_app(store, base.id, request_timeout=600, max_tokens_limit=SLOW_TOKENS, max_batch=1)) as url:
        yield url, base


def test_generation_stops_when_the_client_disconnects(patient_server):
    url, base = patient_server
    leaver = _Client(url, _chat(base.id, SLOW_TOKENS), patience=2.0)
    _wait_until(lambda: _health(url)["busy"], 2.0, "the generation started")
    leaver.join(timeout=10)
    assert leaver.error is not None, "the client was meant to give up"
    _wait_until(lambda: not _health(url)["busy"], 3.0, "the generation stopped after the client left")
    # The next request is served at once, not after minutes of abandoned work.
    started = time.monotonic()
    r = httpx.post(url + "/v1/chat/completions", json=_chat(base.id, 2), timeout=30)
    assert r.status_code == 200 and time.monotonic() - started < 5


def test_waiting_request_gives_up_when_its_client_leaves(patient_server):
    url, base = patient_server
    running_ = _Client(url, _chat(base.id, SLOW_TOKENS), patience=8.0)
    _wait_until(lambda: _health(url)["busy"], 2.0, "the first generation started")
    queued = _Client(url, _chat(base.id, 2), patience=2.0)
    _wait_until(lambda: _health(url)["waiting"] == 1, 1.5, "the second request queued")
    queued.join(timeout=5)
    assert queued.error is not None
    # It left the queue while the first generation still runs.
    _wait_until(lambda: _health(url)["waiting"] == 0, 2.0, "the queued request gave up")
    assert _health(url)["busy"]
    running_.join(timeout=10)
    _wait_until(lambda: not _health(url)["busy"], 3.0, "the first generation stopped")


def test_waiting_past_the_queue_timeout_is_503_server_busy(slow_store):
    from tuneops.serve.app import create_app

    store, base = slow_store
    with running(create_app(store, base.id, request_timeout=600, queue_timeout=1.0,
                            max_tokens_limit=SLOW_TOKENS, max_batch=1)) as url:
        first = _Client(url, _chat(base.id, SLOW_TOKENS), patience=5.0)
        _wait_until(lambda: _health(url)["busy"], 2.0, "the first generation started")
        started = time.monotonic()
        r = httpx.post(url + "/v1/chat/completions", json=_chat(base.id, 2), timeout=30)
        assert r.status_code == 503 and time.monotonic() - started < 4
        assert r.json()["error"]["code"] == "server_busy" and r.headers["retry-after"]
        first.join(timeout=10)
        _wait_until(lambda: not _health(url)["busy"], 3.0, "the first generation stopped")
