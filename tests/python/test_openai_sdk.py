"""hearth through the official `openai` Python SDK, unchanged."""
import asyncio

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

USER = [{"role": "user", "content": "What is the capital of Germany?"}]


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server.base_url, api_key="unused")


def test_chat_completion(client):
    r = client.chat.completions.create(model="smol", messages=USER, temperature=0, max_tokens=20)
    assert r.id.startswith("chatcmpl-")
    assert r.object == "chat.completion"
    assert "Berlin" in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_streaming_with_usage(client):
    stream = client.chat.completions.create(
        model="smol", messages=USER, temperature=0, max_tokens=20,
        stream=True, stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Berlin" in text
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    assert chunks[-1].usage.completion_tokens > 0
    whole = client.chat.completions.create(model="smol", messages=USER, temperature=0, max_tokens=20)
    assert text == whole.choices[0].message.content


def test_completions_and_streaming(client):
    r = client.completions.create(model="smol", prompt="The three primary colours are", temperature=0, max_tokens=12)
    assert r.id.startswith("cmpl-")
    assert r.usage.completion_tokens == 12
    assert r.choices[0].finish_reason == "length"
    streamed = "".join(
        c.choices[0].text for c in client.completions.create(
            model="smol", prompt="The three primary colours are", temperature=0, max_tokens=12, stream=True)
        if c.choices
    )
    assert streamed == r.choices[0].text


def test_n_seed_and_stop(client):
    story = [{"role": "user", "content": "Tell me a story about a dragon."}]
    a = client.chat.completions.create(model="smol", messages=story, n=2, seed=7, max_tokens=16)
    b = client.chat.completions.create(model="smol", messages=story, n=2, seed=7, max_tokens=16)
    assert len(a.choices) == 2
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    full = client.chat.completions.create(model="smol", messages=story, temperature=0, max_tokens=30).choices[0].message.content
    stop = full[5:8]
    cut = client.chat.completions.create(model="smol", messages=story, temperature=0, max_tokens=30, stop=stop)
    assert cut.choices[0].message.content == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_logprobs(client):
    r = client.chat.completions.create(model="smol", messages=USER, temperature=0, max_tokens=5,
                                       logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) > 0
    for token in content:
        assert token.logprob <= 0
        assert len(token.top_logprobs) == 2
    c = client.completions.create(model="smol", prompt="Hello", max_tokens=4, temperature=0, logprobs=2)
    assert len(c.choices[0].logprobs.tokens) == 4
    assert all(len(t) == 2 for t in c.choices[0].logprobs.top_logprobs)


def test_errors(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="missing", messages=USER)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="smol", messages=USER, temperature=9)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "word " * 3000}])
    assert e.value.body["code"] == "context_length_exceeded"


def test_models(client):
    ids = [m.id for m in client.models.list()]
    assert ids == ["smol"]
    assert client.models.retrieve("smol").id == "smol"


def test_eight_concurrent_async_streams(server):
    client = AsyncOpenAI(base_url=server.base_url, api_key="unused")
    questions = [f"What is {i} plus {i}?" for i in range(8)]

    async def ask(question):
        stream = await client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": question}],
            temperature=0, max_tokens=24, stream=True)
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        return "".join(parts)

    async def main():
        return await asyncio.gather(*(ask(q) for q in questions))

    answers = asyncio.run(main())
    sync = OpenAI(base_url=server.base_url, api_key="unused")
    for question, answer in zip(questions, answers):
        alone = sync.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": question}], temperature=0, max_tokens=24)
        assert answer == alone.choices[0].message.content


def test_prompt_cache_reports_cached_tokens(client):
    messages = [{"role": "system", "content": "You are a museum guide. " * 20},
                {"role": "user", "content": "Which painting should I see first?"}]
    client.chat.completions.create(model="smol", messages=messages, max_tokens=8, temperature=0)
    again = client.chat.completions.create(model="smol", messages=messages, max_tokens=8, temperature=0)
    # (Its text is not compared with the first reply's: on a server that has served other
    # requests, the first may itself have read part of its prompt from the cache, in other
    # chunks; see docs/architecture.md, "Exactness".)
    details = again.usage.prompt_tokens_details
    # All but the last prompt token (decoded again for fresh logits) came from the cache.
    assert details.cached_tokens == again.usage.prompt_tokens - 1
    streamed = list(client.chat.completions.create(
        model="smol", messages=messages, max_tokens=8, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert streamed[-1].usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1
