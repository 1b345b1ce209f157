"""The OpenAPI document at `GET /openapi.json`: real responses of every endpoint validate
against it, and schemathesis (property-based requests generated from the document) finds no
5xx and no response that breaks it."""
import os
import subprocess
import sys

import httpx
import jsonschema
import pytest


@pytest.fixture(scope="module")
def api(openapi_server):
    root = openapi_server.base_url.removesuffix("/v1")
    client = httpx.Client(base_url=root, timeout=120)
    document = client.get("/openapi.json").json()
    return root, client, document


def check(document, schema_name, value):
    """Validate `value` against `#/components/schemas/<schema_name>` of the document."""
    root = {"$ref": f"#/components/schemas/{schema_name}", "components": document["components"]}
    jsonschema.Draft202012Validator(root).validate(value)


def test_the_document_is_openapi_3_1_and_covers_every_endpoint(api):
    _, _, document = api
    assert document["openapi"].startswith("3.1")
    assert document["info"]["title"] == "hearth"
    expected = {
        "/v1/chat/completions": ["post"], "/v1/completions": ["post"],
        "/v1/embeddings": ["post"], "/v1/responses": ["post"],
        "/v1/responses/{id}": ["get", "delete"], "/v1/messages": ["post"],
        "/v1/messages/count_tokens": ["post"], "/tokenize": ["post"], "/detokenize": ["post"],
        "/v1/models": ["get"], "/v1/models/{id}": ["get"], "/v1/models/{id}/load": ["post"],
        "/v1/models/{id}/unload": ["post"], "/health": ["get"], "/health/ready": ["get"],
        "/metrics": ["get"], "/openapi.json": ["get"],
    }
    assert {p: sorted(ops) for p, ops in document["paths"].items()} == \
        {p: sorted(ops) for p, ops in expected.items()}
    jsonschema.Draft202012Validator.check_schema(
        {"components": document["components"], "$ref": "#/components/schemas/ChatCompletion"})


def test_real_responses_match_the_document(api):
    _, client, document = api

    def ok(method, path, schema, **kwargs):
        response = client.request(method, path, **kwargs)
        assert response.status_code == 200, (path, response.text)
        check(document, schema, response.json())
        return response.json()

    say = [{"role": "user", "content": "Say hello."}]
    ok("POST", "/v1/chat/completions", "ChatCompletion",
       json={"model": "smol", "messages": say, "max_tokens": 4, "logprobs": True, "top_logprobs": 2})
    ok("POST", "/v1/completions", "Completion",
       json={"model": "smol", "prompt": "Once", "max_tokens": 4, "logprobs": 2})
    ok("POST", "/v1/embeddings", "EmbeddingList", json={"model": "smol", "input": ["a", "b"]})
    ok("POST", "/v1/embeddings", "EmbeddingList",
       json={"model": "smol", "input": "a", "encoding_format": "base64"})
    ok("POST", "/v1/messages", "AnthropicMessage",
       json={"model": "smol", "max_tokens": 4, "messages": say})
    ok("POST", "/v1/messages/count_tokens", "CountTokensResponse",
       json={"model": "smol", "messages": say})
    stored = ok("POST", "/v1/responses", "ResponseObject",
                json={"model": "smol", "input": "Say hello.", "max_output_tokens": 4})
    ok("GET", f"/v1/responses/{stored['id']}", "ResponseObject")
    ok("DELETE", f"/v1/responses/{stored['id']}", "DeletedResponse")
    tokens = ok("POST", "/tokenize", "TokenizeResponse",
                json={"model": "smol", "content": "Hello", "with_pieces": True})
    ok("POST", "/detokenize", "DetokenizeResponse",
       json={"model": "smol", "tokens": [t["id"] for t in tokens["tokens"]]})
    ok("GET", "/v1/models", "ModelList")
    ok("GET", "/v1/models/smol", "ModelCard")
    ok("GET", "/health", "Live")
    ok("GET", "/health/ready", "Ready")
    # Errors, in each API's own shape.
    bad = client.post("/v1/chat/completions", json={"model": "smol", "messages": "x"})
    assert bad.status_code == 400
    check(document, "ErrorResponse", bad.json())
    missing = client.get("/v1/responses/resp_nope")
    assert missing.status_code == 404
    check(document, "ErrorResponse", missing.json())
    anthropic_bad = client.post("/v1/messages", json={"model": "smol", "messages": say})
    assert anthropic_bad.status_code == 400
    check(document, "AnthropicError", anthropic_bad.json())


def test_schemathesis_finds_no_server_errors_or_schema_violations(api, tmp_path):
    # (Run in a scratch directory: schemathesis keeps a cache where it runs.)
    root, _, _ = api
    schemathesis = os.path.join(os.path.dirname(sys.executable), "schemathesis")
    run = subprocess.run(
        [schemathesis, "run", f"{root}/openapi.json",
         "--checks", "not_a_server_error,response_schema_conformance",
         "--phases", "examples,coverage,fuzzing", "--max-examples", "10",
         "--generation-deterministic", "--request-timeout", "120", "--no-color"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "passed" in run.stdout
