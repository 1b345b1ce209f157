"""The official SDK against hearth's admission features: API keys, X-Priority, rate limits
(the SDK's own retry honours our Retry-After), request ids."""
import time

import openai
import pytest
from openai import OpenAI

from conftest import Server

MESSAGES = [{"role": "user", "content": "Say hi."}]


@pytest.fixture(scope="module")
def guarded():
    s = Server("--api-key", "sk-test-key", "--rate-limit-rpm", "60", "--rate-limit-burst", "2")
    yield s
    s.stop()


def test_api_keys_and_priorities(guarded):
    client = OpenAI(base_url=guarded.base_url, api_key="sk-test-key", max_retries=0)
    reply = client.chat.completions.create(
        model="smol", messages=MESSAGES, max_tokens=3, extra_headers={"X-Priority": "high"})
    assert reply.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model="smol", messages=MESSAGES, max_tokens=3, extra_headers={"X-Priority": "asap"})
    assert bad.value.body["param"] == "X-Priority"

    wrong = OpenAI(base_url=guarded.base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as denied:
        wrong.models.list()
    assert denied.value.body["code"] == "invalid_api_key"


def test_rate_limit_and_the_sdk_retry(guarded):
    # Let the bucket refill (one request per second), then spend it.
    time.sleep(2.1)
    client = OpenAI(base_url=guarded.base_url, api_key="sk-test-key", max_retries=0)
    client.models.list()
    client.models.list()
    with pytest.raises(openai.RateLimitError) as limited:
        client.models.list()
    assert limited.value.response.headers["x-ratelimit-limit-requests"] == "60"
    assert int(limited.value.response.headers["retry-after"]) >= 1
    # The SDK's default retries wait as Retry-After says, and then get through.
    patient = OpenAI(base_url=guarded.base_url, api_key="sk-test-key", max_retries=2)
    started = time.monotonic()
    assert patient.models.list().data[0].id == "smol"
    assert time.monotonic() - started >= 0.5


def test_request_ids_come_back(guarded):
    time.sleep(1.1)
    client = OpenAI(base_url=guarded.base_url, api_key="sk-test-key", max_retries=2)
    raw = client.chat.completions.with_raw_response.create(
        model="smol", messages=MESSAGES, max_tokens=2, extra_headers={"X-Request-Id": "sdk-7"})
    assert raw.headers["x-request-id"] == "sdk-7"
    assert raw.parse().choices[0].finish_reason in ("length", "stop")
