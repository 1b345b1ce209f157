"""response_format json_object / json_schema: every output parses and validates."""
import asyncio
import re
import json

import httpx
import jsonschema
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from schemas import SCHEMAS

PROMPT = "Reply with a short JSON document with made-up example values. Keep numbers short, like 4.5 or 12."


def response_format(name, schema):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def test_every_schema_at_temperature_0_and_1(server):
    assert len(SCHEMAS) >= 20
    client = AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    settings = [dict(temperature=0)] + [dict(temperature=1.0, seed=s) for s in (1, 2)]
    semaphore = asyncio.Semaphore(8)

    async def one(name, schema, extra):
        async with semaphore:
            r = await client.chat.completions.create(
                model="smol", messages=[{"role": "user", "content": PROMPT}], max_tokens=400,
                response_format=response_format(name, schema), **extra)
        return name, extra, r.choices[0]

    async def main():
        return await asyncio.gather(*(one(n, s, e) for n, s in SCHEMAS.items() for e in settings))

    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    for name, extra, choice in asyncio.run(main()):
        assert choice.finish_reason == "stop", (name, extra, choice.message.content)
        document = json.loads(choice.message.content)
        jsonschema.validate(document, SCHEMAS[name], cls=jsonschema.Draft202012Validator, format_checker=checker)


def test_json_object_streaming_and_completions(server):
    client = OpenAI(base_url=server.base_url, api_key="unused")
    ask = [{"role": "user", "content": "Give a JSON object with the name, colour and age of a cat."}]
    greedy = client.chat.completions.create(
        model="smol", messages=ask, response_format={"type": "json_object"}, temperature=0, max_tokens=300)
    assert greedy.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(greedy.choices[0].message.content), dict)
    # At temperature 1 a 135M model may wander inside an unbounded string until max_tokens;
    # every answer that does finish must be a JSON object.
    finished = 0
    for seed in range(1, 7):
        r = client.chat.completions.create(
            model="smol", messages=ask, response_format={"type": "json_object"},
            temperature=1.0, seed=seed, max_tokens=300)
        if r.choices[0].finish_reason == "stop":
            finished += 1
            assert isinstance(json.loads(r.choices[0].message.content), dict)
    assert finished >= 1
    stream = client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": "Describe a dog as JSON."}],
        response_format=response_format("person", SCHEMAS["flat_person"]), temperature=0, max_tokens=200, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    jsonschema.validate(json.loads(text), SCHEMAS["flat_person"])
    # Raw completions take response_format too (an extension over OpenAI's legacy API).
    c = client.completions.create(
        model="smol", prompt="A colour in JSON:", max_tokens=50, temperature=0,
        extra_body={"response_format": response_format("c", SCHEMAS["enum_colour"])})
    jsonschema.validate(json.loads(c.choices[0].text), SCHEMAS["enum_colour"])


def test_bad_schemas_are_rejected(server):
    client = OpenAI(base_url=server.base_url, api_key="unused")
    deep = {"type": "string"}
    for _ in range(25):
        deep = {"type": "array", "items": deep}
    for bad in (
        {"type": "json_schema", "json_schema": {"name": "x", "schema": deep}},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"description": "d" * 70000}}},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}, "required": ["a"]}}},
        {"type": "yaml"},
    ):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "hi"}],
                                           response_format=bad, max_tokens=10)
        assert e.value.body["param"] == "response_format", e.value.body
    ok = client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert ok.choices[0].message.content is not None


def test_sdk_parse_returns_a_pydantic_object(server):
    from pydantic import BaseModel, Field

    class City(BaseModel):
        name: str = Field(max_length=30)
        country: str = Field(max_length=30)
        population_millions: int = Field(ge=0, le=100)

    client = OpenAI(base_url=server.base_url, api_key="unused")
    parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
    r = parse(model="smol", messages=[{"role": "user", "content": "Describe Berlin."}],
              response_format=City, temperature=0, max_tokens=200)
    city = r.choices[0].message.parsed
    assert isinstance(city, City)
    assert city.name


def test_vllm_guided_extensions(server):
    client = OpenAI(base_url=server.base_url, api_key="unused")
    choice = client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": "Is the sky blue?"}],
        # Room for the longest choice: an unseeded draw picks it now and then (~3%), and 10
        # tokens cut it short.
        max_tokens=24,
        extra_body={"guided_choice": ["yes", "no", "it depends (sometimes)"]})
    assert choice.choices[0].message.content in ["yes", "no", "it depends (sometimes)"]
    regex = client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": "Give me a product code."}], max_tokens=20,
        temperature=1.0, seed=3, extra_body={"guided_regex": "[A-Z]{3}-[0-9]{4}"})
    assert re.fullmatch(r"[A-Z]{3}-[0-9]{4}", regex.choices[0].message.content)
    schema = client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": "A colour."}], max_tokens=30,
        extra_body={"guided_json": SCHEMAS["enum_colour"]})
    jsonschema.validate(json.loads(schema.choices[0].message.content), SCHEMAS["enum_colour"])
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": "x"}], max_tokens=5,
            response_format={"type": "json_object"}, extra_body={"guided_regex": "a+"})
    assert e.value.body["param"] == "guided_regex"


def test_cut_short_json_says_length(server):
    client = OpenAI(base_url=server.base_url, api_key="unused")
    r = client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": PROMPT}], max_tokens=5,
        response_format=response_format("arr", SCHEMAS["array_of_objects"]), temperature=0)
    assert r.choices[0].finish_reason == "length"
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.choices[0].message.content)


def test_repeated_schemas_skip_compilation(server):
    client = OpenAI(base_url=server.base_url, api_key="unused")
    ready = lambda: httpx.get(server.base_url.replace("/v1", "/health/ready")).json()["models"]["smol"]
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["n"], "additionalProperties": False, "title": "cache-probe"}
    before = ready()
    for _ in range(3):
        client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "a digit"}],
                                       max_tokens=20, response_format=response_format("probe", schema))
    after = ready()
    assert after["grammars_compiled"] == before["grammars_compiled"] + 1
    assert after["grammar_cache_hits"] == before["grammar_cache_hits"] + 2
