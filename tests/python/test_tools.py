"""Tool calling through the official openai SDK (and LangChain) against Qwen2.5-Coder-0.5B.

Every returned `arguments` string must parse and validate against its tool's schema; the
grammar guarantees it, so these tests also run at high temperature."""
import json

import jsonschema
import openai
import pytest
from openai import OpenAI

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Local time in a time zone",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET", "JST"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
ASK = [{"role": "user", "content": "What's the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(tool_server):
    return OpenAI(base_url=tool_server.base_url, api_key="unused", max_retries=0)


def check_calls(message):
    assert message.tool_calls, message
    for call in message.tool_calls:
        assert call.type == "function"
        assert call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    return message.tool_calls


def test_two_step_agent_loop(client):
    messages = list(ASK)
    first = client.chat.completions.create(model="qwen", messages=messages, tools=[WEATHER], temperature=0)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = check_calls(choice.message)
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] == "Paris"
    # The agent runs the tool and sends the history back, as the SDK gives it.
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id,
                     "content": json.dumps({"temperature": 21, "unit": "celsius", "sky": "sunny"})})
    final = client.chat.completions.create(model="qwen", messages=messages, tools=[WEATHER],
                                           tool_choice="none", temperature=0)
    answer = final.choices[0]
    assert answer.finish_reason == "stop"
    assert answer.message.tool_calls is None
    assert isinstance(answer.message.content, str) and answer.message.content.strip()
    assert final.usage.prompt_tokens > first.usage.prompt_tokens, "the tool result was rendered"


@pytest.mark.parametrize("temperature", [0.0, 1.0, 1.5])
def test_required_calls_are_schema_valid_at_any_temperature(client, temperature):
    response = client.chat.completions.create(
        model="qwen", messages=ASK, tools=[WEATHER, TIME], tool_choice="required",
        temperature=temperature, seed=11, max_tokens=600)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = check_calls(choice.message)
    assert 1 <= len(calls) <= 8


def test_named_tool_is_called_exactly_once(client):
    response = client.chat.completions.create(
        model="qwen", messages=ASK, tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}}, temperature=0.9, seed=3)
    [call] = check_calls(response.choices[0].message)
    assert call.function.name == "get_time"


def test_none_returns_text_only(client):
    response = client.chat.completions.create(
        model="qwen", messages=ASK, tools=[WEATHER], tool_choice="none", temperature=0, max_tokens=60)
    message = response.choices[0].message
    assert message.tool_calls is None
    assert isinstance(message.content, str)


def test_parallel_calls_and_parallel_off(client):
    ask = [{"role": "user", "content": "Weather in Paris, and the time in Tokyo?"}]
    many = client.chat.completions.create(
        model="qwen", messages=ask, tools=[WEATHER, TIME], tool_choice="required", temperature=0)
    calls = check_calls(many.choices[0].message)
    assert len({c.id for c in calls}) == len(calls)
    one = client.chat.completions.create(
        model="qwen", messages=ask, tools=[WEATHER, TIME], tool_choice="required",
        parallel_tool_calls=False, temperature=0)
    assert len(check_calls(one.choices[0].message)) == 1


@pytest.mark.parametrize("tool_choice", ["auto", "required"])
def test_streaming_reassembles_to_the_non_streamed_message(client, tool_choice):
    args = dict(model="qwen", messages=ASK, tools=[WEATHER, TIME], tool_choice=tool_choice,
                temperature=0, max_tokens=300)
    plain = client.chat.completions.create(**args).choices[0]
    chunks = list(client.chat.completions.create(**args, stream=True))
    # Each call's id, type and name come once, in its first piece; arguments follow.
    first_pieces = [tc for ch in chunks for c in ch.choices for tc in (c.delta.tool_calls or []) if tc.id]
    assert all(tc.type == "function" and tc.function.name for tc in first_pieces)
    assert len(first_pieces) == len(plain.message.tool_calls or [])
    with client.chat.completions.stream(**args) as stream:
        streamed = stream.get_final_completion().choices[0]
    assert streamed.finish_reason == plain.finish_reason
    assert streamed.message.content == plain.message.content
    shape = lambda m: [(c.function.name, c.function.arguments) for c in (m.tool_calls or [])]
    assert shape(streamed.message) == shape(plain.message)
    for chunk in chunks:
        for c in chunk.choices:
            assert "<tool_call>" not in (c.delta.content or "")


def test_legacy_functions_return_function_call(client):
    response = client.chat.completions.create(
        model="qwen", messages=ASK, functions=[WEATHER["function"]],
        function_call={"name": "get_weather"}, temperature=0)
    choice = response.choices[0]
    assert choice.finish_reason == "function_call"
    assert choice.message.function_call.name == "get_weather"
    jsonschema.validate(json.loads(choice.message.function_call.arguments), SCHEMAS["get_weather"])


def test_legacy_function_conversation_continues(client):
    first = client.chat.completions.create(
        model="qwen", messages=ASK, functions=[WEATHER["function"]], temperature=0)
    call = first.choices[0].message.function_call
    assert call is not None and call.name == "get_weather"
    messages = ASK + [
        {"role": "assistant", "content": None, "function_call": {"name": call.name, "arguments": call.arguments}},
        {"role": "function", "name": "get_weather", "content": '{"temperature": 21}'},
    ]
    second = client.chat.completions.create(
        model="qwen", messages=messages, functions=[WEATHER["function"]], function_call="none",
        temperature=0, max_tokens=30)
    assert second.choices[0].message.function_call is None
    assert isinstance(second.choices[0].message.content, str)
    assert second.usage.prompt_tokens > first.usage.prompt_tokens


def test_json_that_is_not_a_call_stays_content(client):
    response = client.chat.completions.create(
        model="qwen", tools=[WEATHER], temperature=0, max_tokens=80,
        messages=[{"role": "user", "content": "Write a minimal tsconfig.json file. Reply with the JSON only."}])
    message = response.choices[0].message
    if message.tool_calls:  # the model may still choose the tool; then it is a valid call
        check_calls(message)
    else:
        assert "{" in message.content


def test_a_model_without_a_tool_template_still_calls_through_the_fallback(client):
    # SmolLM2's template cannot show tools: hearth describes them and enforces the call.
    response = client.chat.completions.create(
        model="smol", messages=ASK, tools=[WEATHER], tool_choice="required", temperature=1.0, seed=5)
    [call] = check_calls(response.choices[0].message)
    assert call.function.name == "get_weather"


@pytest.mark.parametrize("extra, param", [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "code_interpreter"}]}, "tools[0].type"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": [{"role": "tool", "content": "21C"}]}, "messages[0].tool_call_id"),
])
def test_bad_tool_requests_are_400_naming_the_param(client, extra, param):
    body = {"model": "qwen", "messages": ASK, **extra}
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(**body)
    assert error.value.status_code == 400
    assert error.value.body["param"] == param, error.value.body


def test_langchain_bind_tools_end_to_end(tool_server):
    from langchain_openai import ChatOpenAI
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str, unit: str) -> str:
        """Current weather for a city; unit is celsius or fahrenheit."""
        return f"21 degrees {unit} in {city}"

    llm = ChatOpenAI(base_url=tool_server.base_url, api_key="unused", model="qwen", temperature=0,
                     max_retries=0)
    reply = llm.bind_tools([get_weather], tool_choice="get_weather").invoke("What's the weather in Paris?")
    [call] = reply.tool_calls
    assert call["name"] == "get_weather"
    assert isinstance(call["args"]["city"], str) and isinstance(call["args"]["unit"], str)
    assert get_weather.invoke(call["args"]).startswith("21 degrees")
