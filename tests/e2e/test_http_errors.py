"""Bad requests sent to the gateway over plain HTTP: each gets a 4xx with an OpenAI error body,
and a good request right after still works."""

import http.client
import json

import openai
import pytest

from local_network import MODEL_ID, SMALL_MAX_BODY_BYTES, decode_json, http_json

GOOD_BODY = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


def assert_openai_error(body: dict, code: str) -> None:
    assert "error" in body, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, body
    assert isinstance(error["message"], str) and error["message"], body
    assert error["type"] == "invalid_request_error", body
    assert error["code"] == code, body


def post_chat(network, body: bytes, headers: dict[str, str] | None = None, api_key: str | None = "default"):
    key = network.api_key if api_key == "default" else api_key
    return http_json("POST", f"{network.gateway.base_url}/chat/completions", key, body, headers)


def assert_good_request_works(network) -> None:
    status, body = post_chat(network, json.dumps(GOOD_BODY).encode())
    assert status == 200, body
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"


BAD_REQUESTS = [
    # (case, body, api key, status, error code)
    ("malformed JSON", b'{"model": "gemma-3-270m", "messages": [', "default", 400, "invalid_json"),
    ("missing model", json.dumps({"messages": GOOD_BODY["messages"]}).encode(), "default", 400, "missing_required_parameter"),
    ("unknown model", json.dumps({**GOOD_BODY, "model": "no-such-model"}).encode(), "default", 404, "model_not_found"),
    ("wrong key", json.dumps(GOOD_BODY).encode(), "sk-spare-" + "0" * 64, 401, "invalid_api_key"),
    ("missing key", json.dumps(GOOD_BODY).encode(), None, 401, "invalid_api_key"),
    ("body over limit", json.dumps({**GOOD_BODY, "padding": "x" * SMALL_MAX_BODY_BYTES}).encode(), "default", 413, "request_too_large"),
]


@pytest.mark.parametrize("case, body, api_key, status, code", BAD_REQUESTS, ids=[case[0] for case in BAD_REQUESTS])
def test_bad_request_gets_openai_error(network, case, body, api_key, status, code):
    got_status, got_body = post_chat(network, body, api_key=api_key)

    assert got_status == status, got_body
    assert_openai_error(got_body, code)
    if code in ("missing_required_parameter", "model_not_found"):
        assert got_body["error"]["param"] == "model"
    assert_good_request_works(network)


def test_chunked_body_over_limit_is_rejected(network):
    """A body without Content-Length is counted while it is read."""
    body = json.dumps({**GOOD_BODY, "padding": "x" * SMALL_MAX_BODY_BYTES}).encode()
    connection = http.client.HTTPConnection("127.0.0.1", network.gateway.port, timeout=60)
    try:
        connection.request("POST", "/v1/chat/completions", body=iter([body[:1000], body[1000:]]), encode_chunked=True,
                           headers={"Authorization": f"Bearer {network.api_key}", "Content-Type": "application/json"})
        response = connection.getresponse()
        status, response_body = response.status, decode_json(response.read())
    finally:
        connection.close()

    assert status == 413, response_body
    assert_openai_error(response_body, "request_too_large")
    assert_good_request_works(network)


def test_x_api_key_header_is_accepted(network):
    status, body = http_json("GET", f"{network.gateway.base_url}/models", headers={"x-api-key": network.api_key})
    assert status == 200, body
    assert [model["id"] for model in body["data"]] == [MODEL_ID]

    status, body = post_chat(network, json.dumps(GOOD_BODY).encode(), headers={"x-api-key": network.api_key}, api_key=None)
    assert status == 200, body
    assert body["object"] == "chat.completion"


def test_health_needs_no_key(network):
    status, body = http_json("GET", f"{network.gateway.url}/health")
    assert status == 200, body
    assert body["status"] == "ok"
    assert body["models"] == 1
    assert body["peers"] >= 2


def test_sdk_raises_typed_errors(network):
    wrong_key = openai.OpenAI(base_url=network.gateway.base_url, api_key="sk-spare-" + "1" * 64, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong_key.chat.completions.create(model=MODEL_ID, messages=GOOD_BODY["messages"], max_tokens=2)

    client = openai.OpenAI(base_url=network.gateway.base_url, api_key=network.api_key, max_retries=0)
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="no-such-model", messages=GOOD_BODY["messages"], max_tokens=2)
    assert raised.value.code == "model_not_found"
