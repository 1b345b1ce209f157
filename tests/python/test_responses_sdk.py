"""OpenAI's Responses API through the official SDK (`client.responses.create/stream/parse`,
`retrieve`, `delete`), with function tools on Qwen2.5-Coder-0.5B and plain text on SmolLM2
(the `tool_server` fixture)."""
import json

import jsonschema
import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel
from test_tools import SCHEMAS, WEATHER as CHAT_WEATHER

# The chat tests' tool, in the Responses API's flat shape.
WEATHER = {"type": "function", **CHAT_WEATHER["function"]}


@pytest.fixture(scope="module")
def client(tool_server):
    return OpenAI(base_url=tool_server.base_url, api_key="unused", max_retries=0)


def test_a_text_reply_matches_the_chat_api_and_reports_usage(client):
    reply = client.responses.create(
        model="smol", instructions="You are terse.", input="Name three colours.",
        temperature=0, max_output_tokens=24)
    assert reply.object == "response" and reply.id.startswith("resp_")
    assert reply.status in ("completed", "incomplete")
    assert [item.type for item in reply.output] == ["message"]
    assert reply.output[0].role == "assistant" and reply.output[0].id.startswith("msg_")
    chat = client.chat.completions.create(
        model="smol", temperature=0, max_tokens=24,
        messages=[{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": "Name three colours."}])
    # Same model, same prompt, greedy: the same words through either API.
    assert reply.output_text == chat.choices[0].message.content
    assert reply.usage.input_tokens == chat.usage.prompt_tokens
    assert reply.usage.output_tokens == chat.usage.completion_tokens
    assert reply.usage.total_tokens == chat.usage.total_tokens
    # The request's settings come back on the response.
    assert reply.instructions == "You are terse." and reply.max_output_tokens == 24
    assert reply.temperature == 0


def test_the_stream_rebuilds_the_same_response(client):
    kwargs = dict(model="smol", input="Say hello.", temperature=0, max_output_tokens=200)
    whole = client.responses.create(**kwargs)
    events = []
    with client.responses.stream(**kwargs) as stream:
        for event in stream:
            events.append(event)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed" and whole.status == "completed"
    assert "response.output_text.delta" in types
    # Sequence numbers count every event from 0.
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == whole.output_text == final.output_text
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_max_output_tokens_ends_the_response_incomplete(client):
    reply = client.responses.create(
        model="smol", input="Write a long story about a dragon.", temperature=0,
        max_output_tokens=8)
    assert reply.status == "incomplete"
    assert reply.incomplete_details.reason == "max_output_tokens"
    assert reply.usage.output_tokens == 8
    # Streamed, it ends with `response.incomplete` (the SDK's `get_final_response` wants a
    # `response.completed`, as with OpenAI).
    with client.responses.stream(model="smol", input="Write a long story about a dragon.",
                                 temperature=0, max_output_tokens=8) as stream:
        last = [event for event in stream][-1]
    assert last.type == "response.incomplete" and last.response.status == "incomplete"
    assert last.response.output_text == reply.output_text


def test_a_follow_up_continues_the_stored_conversation(client):
    first = client.responses.create(
        model="smol", input="My name is Ada. Say hello to me.", temperature=0,
        max_output_tokens=20)
    follow = client.responses.create(
        model="smol", previous_response_id=first.id, input="What is my name?", temperature=0,
        max_output_tokens=20)
    # The same conversation sent whole through the chat API reads the same prompt.
    chat = client.chat.completions.create(
        model="smol", temperature=0, max_tokens=20, messages=[
            {"role": "user", "content": "My name is Ada. Say hello to me."},
            {"role": "assistant", "content": first.output_text},
            {"role": "user", "content": "What is my name?"}])
    assert follow.usage.input_tokens == chat.usage.prompt_tokens
    assert follow.output_text == chat.choices[0].message.content
    assert follow.previous_response_id == first.id
    # The follow-up found the first turn in the prompt cache.
    assert follow.usage.input_tokens_details.cached_tokens > first.usage.input_tokens // 2
    # Stored responses can be read back and forgotten.
    assert client.responses.retrieve(first.id).output_text == first.output_text
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="smol", previous_response_id=first.id, input="Hi")
    assert e.value.body["param"] == "previous_response_id"


def test_store_false_is_not_kept(client):
    reply = client.responses.create(model="smol", input="Hi", store=False, max_output_tokens=4)
    assert reply.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(reply.id)


class City(BaseModel):
    name: str
    country: str
    population: int


def test_structured_output_through_text_format(client):
    reply = client.responses.parse(
        model="smol", input="Describe a city as JSON.", text_format=City, temperature=0,
        max_output_tokens=80)
    assert isinstance(reply.output_parsed, City)
    jsonschema.validate(json.loads(reply.output_text), City.model_json_schema())


def test_a_function_call_and_its_output_make_an_agent_loop(client):
    ask = "What's the weather in Paris?"
    first = client.responses.create(
        model="qwen", input=ask, tools=[WEATHER], tool_choice="required", temperature=0)
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls and first.status == "completed"
    for call in calls:
        assert call.id.startswith("fc_") and call.call_id.startswith("call_")
        jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
    # The client runs the tool and sends its output back, with the call, as items.
    items = [{"role": "user", "content": ask}, *[c.model_dump() for c in calls]]
    items += [{"type": "function_call_output", "call_id": c.call_id,
               "output": json.dumps({"temperature": 18, "unit": "celsius"})} for c in calls]
    answer = client.responses.create(
        model="qwen", input=items, tools=[WEATHER], tool_choice="none", temperature=0,
        max_output_tokens=60)
    assert answer.output_text and not any(i.type == "function_call" for i in answer.output)
    # previous_response_id carries the call; only the output is new.
    chained = client.responses.create(
        model="qwen", previous_response_id=first.id, tools=[WEATHER], tool_choice="none",
        temperature=0, max_output_tokens=60,
        input=[{"type": "function_call_output", "call_id": c.call_id,
                "output": json.dumps({"temperature": 18, "unit": "celsius"})} for c in calls])
    assert chained.output_text == answer.output_text


def test_a_streamed_call_equals_the_non_streamed_one(client):
    kwargs = dict(model="qwen", input="What's the weather in Paris?", tools=[WEATHER],
                  tool_choice={"type": "function", "name": "get_weather"}, temperature=0)
    whole = client.responses.create(**kwargs)
    with client.responses.stream(**kwargs) as stream:
        types = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in types
    assert "response.function_call_arguments.done" in types
    call = [i for i in whole.output if i.type == "function_call"]
    streamed = [i for i in final.output if i.type == "function_call"]
    assert [(c.name, c.arguments) for c in streamed] == [(c.name, c.arguments) for c in call]


@pytest.mark.parametrize("extra, param", [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"background": True}, "background"),
    ({"truncation": "auto"}, "truncation"),
    ({"reasoning": {"effort": "high"}}, "reasoning.effort"),
    ({"include": ["reasoning.encrypted_content"]}, "include"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"max_output_tokens": 100000}, "max_output_tokens"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
])
def test_what_this_server_does_not_do_is_a_400_naming_the_field(client, extra, param):
    kwargs = {"model": "smol", "input": "Hi", **extra}
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(**kwargs)
    assert e.value.body["param"] == param, e.value.body
    assert e.value.body["type"] == "invalid_request_error"


def test_an_unknown_model_is_a_404(client):
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="nope", input="Hi")
