"""The Azure OpenAI / OpenAI-compatible simulator: real e5 embeddings through both wire
forms, its keys and managed-identity tokens, OpenAI's limits and error format."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy
import pytest

from azure_ai_sim.sim import OpenAISimulator
from azure_ai_sim.sim.openai import DEFAULT_KEY, MAX_INPUTS

TEXTS = ["The cat sat on the mat.", "A cat was sitting on a mat.", "Stock markets fell today."]


@pytest.fixture(scope="module")
def simulator():
    with OpenAISimulator() as simulator:
        yield simulator


def post(url: str, body: dict, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"content-type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def azure(simulator, body: dict, key: str = DEFAULT_KEY, version: str = "2024-10-21"):
    return post(
        f"{simulator.url}/openai/deployments/text-embedding-3-small/embeddings"
        f"?api-version={version}",
        body,
        {"api-key": key},
    )


def test_both_wire_forms_answer_the_same_real_embeddings(simulator):
    status, answer = azure(simulator, {"input": TEXTS})
    assert status == 200
    assert [item["index"] for item in answer["data"]] == [0, 1, 2]
    vectors = numpy.array([item["embedding"] for item in answer["data"]])
    assert vectors.shape == (3, 384)
    assert numpy.allclose(numpy.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > unrelated + 0.05  # paraphrases are close, as with the real models
    assert "simulator" in answer["model"]
    assert answer["usage"]["prompt_tokens"] == answer["usage"]["total_tokens"] > 0

    status, openai = post(
        f"{simulator.url}/v1/embeddings",
        {"model": "text-embedding-3-small", "input": TEXTS},
        {"authorization": f"Bearer {DEFAULT_KEY}"},
    )
    assert status == 200 and openai["data"] == answer["data"]


def test_dimensions_keep_the_first_ones_renormalised(simulator):
    _, whole = azure(simulator, {"input": TEXTS[0]})
    _, short = azure(simulator, {"input": TEXTS[0], "dimensions": 64})
    full, cut = (
        numpy.array(whole["data"][0]["embedding"]),
        numpy.array(short["data"][0]["embedding"]),
    )
    assert cut.shape == (64,)
    assert numpy.allclose(cut, full[:64] / numpy.linalg.norm(full[:64]), atol=1e-6)
    status, error = azure(simulator, {"input": TEXTS[0], "dimensions": 1536})
    assert status == 400 and "dimensions" in error["error"]["message"]


def test_credentials_limits_and_errors_are_openais(simulator):
    status, error = azure(simulator, {"input": "x"}, key="wrong")
    assert status == 401 and error["error"]["message"].startswith("Access denied")
    status, _ = post(f"{simulator.url}/v1/embeddings", {"model": "m", "input": "x"}, {})
    assert status == 401
    status, error = azure(simulator, {"input": ["x"] * (MAX_INPUTS + 1)})
    assert status == 400 and "Too many inputs" in error["error"]["message"]
    status, error = azure(simulator, {"input": "word " * 9000})
    assert status == 400 and "maximum context length is 8192" in error["error"]["message"]
    status, error = post(f"{simulator.url}/v1/embeddings", {"input": "x"},
                         {"authorization": f"Bearer {DEFAULT_KEY}"})  # fmt: skip
    assert status == 400 and "model" in error["error"]["message"]


def test_a_local_server_needs_no_key():
    with OpenAISimulator(open_v1=True) as local:
        status, answer = post(f"{local.url}/v1/embeddings", {"model": "e5", "input": "x"}, {})
        assert status == 200 and len(answer["data"][0]["embedding"]) == 384


def chat(simulator, body: dict, wire: str = "azure") -> tuple[int, dict]:
    if wire == "azure":
        url = f"{simulator.url}/openai/deployments/gpt-4.1/chat/completions?api-version=2024-10-21"
        return post(url, body, {"api-key": DEFAULT_KEY})
    return post(f"{simulator.url}/v1/chat/completions", body,
                {"authorization": f"Bearer {DEFAULT_KEY}"})  # fmt: skip


def strict(properties: dict) -> dict:
    schema = {"type": "object", "properties": properties, "required": list(properties),
              "additionalProperties": False}  # fmt: skip
    return {"type": "json_schema", "json_schema": {"name": "t", "strict": True, "schema": schema}}


def answer(simulator, message: str, properties: dict) -> dict:
    status, body = chat(simulator, {"messages": [{"role": "user", "content": message}],
                                    "response_format": strict(properties)})  # fmt: skip
    assert status == 200, body
    return json.loads(body["choices"][0]["message"]["content"])


def test_chat_completions_from_a_labelled_responder(simulator):
    status, body = chat(simulator, {"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}
    ]})  # fmt: skip
    assert status == 200 and body["object"] == "chat.completion"
    assert "not a language model" in body["model"]
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": "Simulated reply: Hello there",
                                 "refusal": None}  # fmt: skip
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    status, body = chat(simulator, {"messages": [{"role": "user", "content": "Hi"}]}, wire="v1")
    assert status == 400 and body["error"]["message"] == "you must provide a model parameter"


def test_the_responder_follows_the_schema_by_its_rules(simulator):
    review = "The battery lasts ten hours. The screen is dim and hard to read."
    values = answer(simulator, review, {
        "battery": {"type": "string", "description": "battery life"},
        "screen": {"type": "string", "description": "the display"},
        "stars": {"type": "integer", "description": "a score from 1 to 5"},
        "mood": {"type": "string", "enum": ["happy", "disappointed"]},
        "items": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 10}},
    })  # fmt: skip
    assert values == {"battery": "The battery lasts ten hours",
                      "screen": "The screen is dim and hard to read", "stars": 3,
                      "mood": values["mood"], "items": [5]}  # fmt: skip
    assert values["mood"] in ("happy", "disappointed")
    nullable = {"result": {"type": ["boolean", "null"]}}
    assert answer(simulator, "Paris is in France", nullable) == {"result": True}
    assert answer(simulator, "Paris isn't in France", nullable) == {"result": False}
    assert answer(simulator, "Is Paris in France?", nullable) == {"result": None}
    relevance = answer(simulator, "Query: cats\nDocument: A cat sleeps on the sofa.",
                       {"score": {"type": "number"}})  # fmt: skip
    unrelated = answer(simulator, "Query: cats\nDocument: Bond yields rose in March.",
                       {"score": {"type": "number"}})  # fmt: skip
    assert 0 <= unrelated["score"] < relevance["score"] <= 1


@pytest.mark.parametrize(
    ("response_format", "message"),
    [
        ({"type": "xml"}, "Invalid value for 'response_format.type'"),
        ({"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}},
         "'response_format.json_schema.name' must be"),
        ({"type": "json_schema", "json_schema": {"name": "t", "strict": True,
          "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}},
         "Invalid schema for response_format 't': In context=(), 'additionalProperties'"),
        ({"type": "json_schema", "json_schema": {"name": "t", "strict": True,
          "schema": {"type": "object", "properties": {"a": {"type": "string"}},
                     "additionalProperties": False}}},
         "Invalid schema for response_format 't': In context=(), 'required' is required"),
    ],
)  # fmt: skip
def test_response_formats_are_checked_as_openai_checks_them(simulator, response_format, message):
    status, body = chat(simulator, {"messages": [{"role": "user", "content": "x"}],
                                    "response_format": response_format})  # fmt: skip
    assert status == 400 and body["error"]["message"].startswith(message)
