"""`/v1/embeddings` through the official openai SDK, against a numpy reference of
all-MiniLM-L6-v2 (tests/python/embedding_reference.py reads the original sentence-transformers
weights; hearth runs the GGUF that scripts/fetch-embedding-model.sh converts from them)."""
import base64

import numpy as np
import openai
import pytest
from openai import OpenAI

import embedding_reference

# 24 sentences: short and long, punctuation, digits, accents, CJK, code, a one-word input.
SENTENCES = [
    "The weather is lovely today.",
    "It's so sunny outside!",
    "He drove to the stadium.",
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar in front of an audience.",
    "The stock market fell sharply after the announcement.",
    "Shares dropped steeply once the news came out.",
    "How do I reset my password?",
    "What are the steps to change my login password?",
    "Cats sleep for most of the day.",
    "The recipe needs two cups of flour and three eggs.",
    "Quantum computers use qubits instead of classical bits.",
    "Paris is the capital of France.",
    "Café au lait, crème brûlée and a croissant, s'il vous plaît.",
    "東京は日本の首都です。",
    "def add(a, b):\n    return a + b",
    "Error 404: the page you requested could not be found.",
    "In 1969, Apollo 11 landed on the Moon.",
    "Bananas are rich in potassium.",
    "The committee will meet again next Tuesday at 10 a.m.",
    "hello",
    "A very long sentence that keeps going, listing apples, pears, plums, cherries, grapes, "
    "melons, lemons, limes, oranges and peaches, to make an input of some length for the test.",
    "Please translate this document into German by Friday.",
    "Photosynthesis converts light energy into chemical energy.",
]
PARAPHRASES = [(0, 1), (3, 4), (5, 6), (7, 8)]
UNRELATED = [(0, 2), (3, 10), (5, 9), (7, 18), (12, 19)]


@pytest.fixture(scope="module")
def client(embedding_server):
    return OpenAI(base_url=embedding_server.base_url, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def vectors(client):
    reply = client.embeddings.create(model="minilm", input=SENTENCES, encoding_format="float")
    assert reply.object == "list" and [d.index for d in reply.data] == list(range(len(SENTENCES)))
    return reply, np.array([d.embedding for d in reply.data])


def test_vectors_match_the_reference_implementation(vectors):
    reply, ours = vectors
    reference = embedding_reference.embed(SENTENCES)
    assert ours.shape == reference.shape == (len(SENTENCES), 384)
    cosines = (ours * reference).sum(axis=1) / np.linalg.norm(ours, axis=1)
    assert cosines.min() >= 0.99, cosines
    # Unit length, as OpenAI's (and sentence-transformers' normalised) vectors are.
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    # Usage counts the model's tokens, [CLS] and [SEP] included.
    assert reply.usage.prompt_tokens == sum(embedding_reference.token_count(s) for s in SENTENCES)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens


def test_paraphrases_are_closer_than_unrelated_sentences(vectors):
    _, v = vectors
    close = min(float(v[a] @ v[b]) for a, b in PARAPHRASES)
    far = max(float(v[a] @ v[b]) for a, b in UNRELATED)
    assert close > far, (close, far)


def same(a, b):
    """Equal up to float rounding: a batch of 24 and a batch of 1 run different matrix shapes
    (~1e-5 apart here)."""
    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.99999


def test_base64_single_and_batched_inputs_agree(client, vectors):
    _, batched = vectors
    # The SDK asks for base64 by default and decodes it.
    one = client.embeddings.create(model="minilm", input=SENTENCES[3])
    assert same(one.data[0].embedding, batched[3])
    raw = client.embeddings.with_raw_response.create(
        model="minilm", input=[SENTENCES[0]], encoding_format="base64").http_response.json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert same(decoded, batched[0])


def test_token_ids_are_embedded_as_given(client, embedding_server, vectors):
    _, batched = vectors
    ids = embedding_reference.model().token_ids(SENTENCES[12])
    reply = client.embeddings.create(model="minilm", input=[ids, ids[:-1]], encoding_format="float")
    assert same(reply.data[0].embedding, batched[12])
    assert reply.usage.prompt_tokens == 2 * len(ids) - 1


@pytest.mark.parametrize("kwargs, param", [
    ({"input": []}, "input"),
    ({"input": ""}, "input"),
    ({"input": [[]]}, "input"),
    ({"input": [999999]}, "input"),
    ({"input": "word " * 600}, "input"),
    ({"input": "hi", "dimensions": 128}, "dimensions"),
    ({"input": "hi", "encoding_format": "int8"}, "encoding_format"),
])
def test_bad_requests_are_400s_naming_the_field(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="minilm", **kwargs)
    assert e.value.body["param"] == param, e.value.body


def test_the_models_own_dimensions_are_accepted(client):
    reply = client.embeddings.create(model="minilm", input="hi", dimensions=384)
    assert len(reply.data[0].embedding) == 384


def test_a_model_serves_only_what_it_can(client):
    # An encoder does not generate text…
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="minilm", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert "embedding model" in e.value.body["message"]
    # …and a generative model without --pooling does not embed.
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="smol", input="Hi")
    assert "--pooling" in e.value.body["message"]
    # The worker is still fine.
    assert client.embeddings.create(model="minilm", input="still here").data


def test_a_small_request_is_not_stuck_behind_a_big_batch_and_a_dropped_batch_stops(
        embedding_server, client):
    """Embedding jobs take turns a batch at a time, and a job whose client went away stops."""
    import threading

    import httpx

    root = embedding_server.base_url
    big = {"model": "minilm", "input": [f"{i} " + "word " * 100 for i in range(512)]}
    outcome = {}

    def send_big():
        try:
            httpx.post(root + "/embeddings", json=big, timeout=4)
            outcome["big"] = "answered"
        except httpx.TimeoutException:
            outcome["big"] = "gave up"  # the client goes away: the worker must stop the job

    thread = threading.Thread(target=send_big)
    thread.start()
    import time
    time.sleep(0.5)
    small = client.embeddings.create(model="minilm", input="just one sentence")
    small_done_while_big_ran = thread.is_alive()
    thread.join()
    assert small.data and small_done_while_big_ran, outcome
    assert outcome["big"] == "gave up", "512 x 100 tokens took under 4 s: make the batch bigger"
    # The worker is free again (the dropped job stopped at its next batch).
    assert client.embeddings.create(model="minilm", input=["after", "the drop"]).data
