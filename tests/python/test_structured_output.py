"""response_format json_object / json_schema: every output parses and validates."""
import asyncio
import json

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
    for seed in (1, 2, 3):
        r = client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": "Describe a cat as JSON."}],
            response_format={"type": "json_object"}, temperature=1.0, seed=seed, max_tokens=300)
        assert isinstance(json.loads(r.choices[0].message.content), dict)
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
