"""Anthropic's Messages API through the official `anthropic` SDK, streaming and not, with
tools on Qwen2.5-Coder-0.5B and plain text on SmolLM2 (the `tool_server` fixture)."""
import json

import anthropic
import jsonschema
import pytest
from openai import OpenAI
from test_tools import WEATHER as CHAT_WEATHER

# The chat tests' tool, in Anthropic's shape.
WEATHER = {
    "name": CHAT_WEATHER["function"]["name"],
    "description": CHAT_WEATHER["function"]["description"],
    "input_schema": CHAT_WEATHER["function"]["parameters"],
}
ASK = [{"role": "user", "content": "What's the weather in Paris?"}]
# The current SDK has no `temperature` argument (older ones do); the API takes it.
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def claude(tool_server):
    root = tool_server.base_url.removesuffix("/v1")
    return anthropic.Anthropic(base_url=root, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def openai_client(tool_server):
    return OpenAI(base_url=tool_server.base_url, api_key="unused", max_retries=0)


def test_a_text_reply_matches_the_chat_api_and_reports_usage(claude, openai_client):
    messages = [{"role": "user", "content": "Name three colours."}]
    reply = claude.messages.create(
        model="smol", max_tokens=24, extra_body=GREEDY, system="You are terse.", messages=messages)
    assert reply.type == "message" and reply.role == "assistant"
    assert reply.id.startswith("msg_")
    assert [block.type for block in reply.content] == ["text"]
    assert reply.stop_reason in ("end_turn", "max_tokens")
    chat = openai_client.chat.completions.create(
        model="smol", max_tokens=24, extra_body=GREEDY,
        messages=[{"role": "system", "content": "You are terse."}, *messages])
    # Same model, same prompt, greedy: the same words through either API.
    assert reply.content[0].text == chat.choices[0].message.content
    assert reply.usage.input_tokens == chat.usage.prompt_tokens
    assert reply.usage.output_tokens == chat.usage.completion_tokens


def test_the_stream_rebuilds_the_same_message(claude):
    kwargs = dict(model="smol", max_tokens=20, extra_body=GREEDY,
                  messages=[{"role": "user", "content": "Tell me about the sea."}])
    whole = claude.messages.create(**kwargs)
    events = []
    with claude.messages.stream(**kwargs) as stream:
        for event in stream:
            events.append(event.type)
        final = stream.get_final_message()
    assert events[0] == "message_start"
    assert "content_block_delta" in events
    assert events[-1] == "message_stop"
    assert final.content[0].text == whole.content[0].text
    assert final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_stop_sequences_and_max_tokens(claude):
    kwargs = dict(model="smol", max_tokens=40, extra_body=GREEDY,
                  messages=[{"role": "user", "content": "Count from one to ten in words."}])
    free = claude.messages.create(**kwargs).content[0].text
    word = free.split()[2]  # a word the greedy reply writes
    cut = claude.messages.create(stop_sequences=["zzz", word], **kwargs)
    assert cut.stop_reason == "stop_sequence"
    assert cut.stop_sequence == word
    assert word not in cut.content[0].text and free.startswith(cut.content[0].text)
    with claude.messages.stream(stop_sequences=["zzz", word], **kwargs) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", word)
    reply = claude.messages.create(
        model="smol", max_tokens=3, extra_body=GREEDY,
        messages=[{"role": "user", "content": "Write a long story."}])
    assert reply.stop_reason == "max_tokens"
    assert reply.usage.output_tokens == 3


def check_tool_use(message):
    uses = [block for block in message.content if block.type == "tool_use"]
    assert uses, message
    for use in uses:
        assert use.id.startswith("toolu_")
        assert use.name == "get_weather"
        jsonschema.validate(use.input, WEATHER["input_schema"])
    return uses


def test_a_tool_loop_with_tool_use_and_tool_result_blocks(claude):
    first = claude.messages.create(
        model="qwen", max_tokens=128, extra_body=GREEDY, tools=[WEATHER],
        tool_choice={"type": "any", "disable_parallel_tool_use": True}, messages=ASK)
    assert first.stop_reason == "tool_use"
    use = check_tool_use(first)[0]
    second = claude.messages.create(
        model="qwen", max_tokens=64, extra_body=GREEDY, tools=[WEATHER],
        tool_choice={"type": "none"}, messages=[
            *ASK,
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                          "content": json.dumps({"temperature": 18, "unit": "celsius",
                                                                      "sky": "sunny"})}]},
        ])
    assert second.stop_reason == "end_turn", second
    text = "".join(b.text for b in second.content if b.type == "text")
    assert text.strip(), second
    assert second.usage.input_tokens > first.usage.input_tokens, "the tool result was rendered"



def test_a_named_tool_streams_to_the_same_call(claude):
    kwargs = dict(model="qwen", max_tokens=128, extra_body=GREEDY, tools=[WEATHER],
                  tool_choice={"type": "tool", "name": "get_weather"}, messages=ASK)
    whole = claude.messages.create(**kwargs)
    with claude.messages.stream(**kwargs) as stream:
        final = stream.get_final_message()
    assert [u.input for u in check_tool_use(final)] == [u.input for u in check_tool_use(whole)]
    assert final.stop_reason == "tool_use"


def test_errors_come_in_anthropic_shape(claude, tool_server):
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude.messages.create(model="nope", max_tokens=8, messages=ASK)
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(model="smol", max_tokens=8, messages=[
            {"role": "user", "content": [{"type": "document", "source": {}}]}])
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    assert "document" in caught.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model="smol", max_tokens=8, messages=ASK,
                               extra_body={"temperature": 2})


def test_the_sdk_reads_json_errors_even_from_outer_layers(tool_server):
    import httpx
    root = tool_server.base_url.removesuffix("/v1")
    response = httpx.post(f"{root}/v1/messages", content=b"{", headers={
        "content-type": "application/json"})
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    response = httpx.post(f"{root}/v1/messages", content=b"x", headers={
        "content-type": "text/plain"})
    assert response.status_code == 415
    assert response.json()["type"] == "error"
    assert json.loads(httpx.get(f"{root}/v1/messages").text)["type"] == "error"


def test_count_tokens_is_what_the_message_reads(claude):
    kwargs = dict(model="qwen", system="Be brief.", tools=[WEATHER], messages=ASK)
    counted = claude.messages.count_tokens(**kwargs)
    reply = claude.messages.create(max_tokens=1, extra_body=GREEDY, **kwargs)
    assert counted.input_tokens == reply.usage.input_tokens > 0


def test_tokenize_and_detokenize_match_what_generation_reads(tool_server, openai_client):
    import httpx
    root = tool_server.base_url.removesuffix("/v1")
    text = "The quick brown fox jumps over the lazy dog. Ünïcödé ✓"
    tokens = httpx.post(f"{root}/tokenize", json={"model": "smol", "content": text}).json()
    completion = openai_client.completions.create(model="smol", prompt=text, max_tokens=1)
    assert tokens["count"] == len(tokens["tokens"]) == completion.usage.prompt_tokens
    back = httpx.post(f"{root}/detokenize", json={"model": "smol", "tokens": tokens["tokens"]})
    assert back.json()["content"] == text
    pieces = httpx.post(f"{root}/tokenize", json={
        "model": "smol", "prompt": text, "with_pieces": True}).json()["tokens"]
    joined = b"".join(p["piece"].encode() if isinstance(p["piece"], str) else bytes(p["piece"])
                      for p in pieces)
    assert joined.decode() == text
    assert any(isinstance(p["piece"], list) for p in pieces), "a piece that splits a character"
    messages = [{"role": "user", "content": "Hello there"}]
    chat_count = httpx.post(f"{root}/tokenize", json={"model": "qwen", "messages": messages}).json()
    chat = openai_client.chat.completions.create(model="qwen", messages=messages, max_tokens=1)
    assert chat_count["count"] == chat.usage.prompt_tokens
    bad = httpx.post(f"{root}/detokenize", json={"model": "smol", "tokens": [10 ** 9]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens[0]"
    both = httpx.post(f"{root}/tokenize", json={"model": "smol", "content": "a", "messages": []})
    assert both.status_code == 400
