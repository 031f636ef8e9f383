"""The OpenAI API surface beyond one plain chat completion: streaming, text completions, n, stop, seeds —
driven by the official openai client over real HTTP."""

import httpx
import openai
import pytest

HI = [{"role": "user", "content": "Ada, 36, London"}]


@pytest.fixture(scope="module")
def client(served):
    url, *_ = served
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def test_streamed_chat_is_the_same_text_as_unstreamed(client, served):
    _, base, artifact = served
    whole = client.chat.completions.create(model="tiny", messages=HI, max_tokens=12)
    chunks = list(client.chat.completions.create(model="tiny", messages=HI, max_tokens=12, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert all(c.model == artifact.id for c in chunks)
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage.completion_tokens == whole.usage.completion_tokens
    assert usage.usage.prompt_tokens == whole.usage.prompt_tokens
    assert usage.tuneops["artifact"] == artifact.id and usage.tuneops["base"] == base.id


def test_stream_without_usage_has_no_usage_chunk(served):
    url, *_ = served
    with httpx.stream("POST", url + "/v1/chat/completions", timeout=60,
                      json={"model": "tiny", "messages": HI, "max_tokens": 3, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-tuneops-alias"] == "tiny@production"
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)
    assert '"usage"' not in "".join(lines)


def test_stream_errors_before_the_first_token_keep_their_status(served):
    url, *_ = served
    r = httpx.post(url + "/v1/chat/completions", json={"model": "nobody@production", "messages": HI, "stream": True})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_text_completions_plain_and_streamed(client, served):
    _, base, artifact = served
    out = client.completions.create(model="tiny", prompt="The capital of France is", max_tokens=6)
    assert out.object == "text_completion" and out.model == artifact.id
    assert out.usage.completion_tokens <= 6 and out.choices[0].finish_reason in ("stop", "length")
    streamed = list(client.completions.create(model="tiny", prompt="The capital of France is", max_tokens=6,
                                              stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == out.choices[0].text
    default = client.completions.create(model=base.id, prompt="Once upon a time")
    assert default.usage.completion_tokens <= 16  # OpenAI's default max_tokens for completions


def test_completions_list_of_prompts_with_n(client):
    prompts = ["one two three", "alpha beta"]
    out = client.completions.create(model="tiny", prompt=prompts, max_tokens=4, n=2, temperature=0.9, seed=5)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    alone = [client.completions.create(model="tiny", prompt=p, max_tokens=4, n=2, temperature=0.9, seed=5)
             for p in prompts]
    # A seed makes sampling repeatable whatever the request is batched with.
    assert [c.text for c in out.choices] == [c.text for a in alone for c in a.choices]


def test_seeded_sampling_is_repeatable(client):
    kw = dict(model="tiny", messages=HI, max_tokens=8, temperature=1.0)
    a = client.chat.completions.create(seed=11, **kw).choices[0].message.content
    b = client.chat.completions.create(seed=11, **kw).choices[0].message.content
    others = {client.chat.completions.create(seed=s, **kw).choices[0].message.content for s in (12, 13, 14)}
    assert a == b and others != {a}


def test_n_choices_streamed(client):
    chunks = list(client.chat.completions.create(model="tiny", messages=HI, max_tokens=4, n=3, temperature=1.0,
                                                 seed=3, stream=True))
    texts = {0: "", 1: "", 2: ""}
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] += ch.delta.content or ""
    whole = client.chat.completions.create(model="tiny", messages=HI, max_tokens=4, n=3, temperature=1.0, seed=3)
    assert [texts[i] for i in range(3)] == [c.message.content for c in whole.choices]


def test_stop_is_cut_in_streams_too(client, served):
    _, base, _ = served
    # Seeded sampling from the random base: long, repeatable text to cut.
    kw = dict(model=base.id, messages=HI, max_tokens=24, temperature=1.0, seed=7)
    whole = client.chat.completions.create(**kw).choices[0].message.content
    assert len(whole) >= 8, whole
    stop = whole[4:7]
    cut = client.chat.completions.create(stop=stop, **kw)
    assert cut.choices[0].message.content == whole[:whole.index(stop)].strip()
    assert cut.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        stop=stop, stream=True, **kw) if c.choices)
    assert streamed == cut.choices[0].message.content


@pytest.mark.parametrize("param, value", [("echo", True), ("suffix", "x"), ("best_of", 3), ("logprobs", 2)])
def test_completion_parameters_that_change_the_answer_are_refused(served, param, value):
    url, *_ = served
    r = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2, param: value})
    assert r.status_code == 400 and r.json()["error"]["param"] == param
