"""The Cohere rerank simulator: e5's relevance through /v1/rerank and /v2/rerank, top_n and
return_documents, its keys and managed-identity tokens, Cohere's errors, injected faults."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

import numpy
import pytest

from azure_ai_sim.sim import CohereSimulator, Fault
from azure_ai_sim.sim.cohere import DEFAULT_KEY, MAX_DOCUMENTS
from azure_ai_sim.sim.e5 import E5, default_model_dir
from azure_ai_sim.sim.managed_identity import DEFAULT_HEADER_SECRET, PATH

QUERY = "Clear calling capability that blocks out background noise"
REVIEWS = [  # Azure's rerank example
    "The product has a great battery life, good design, and decent sound quality.",
    "These headphones are perfect for long calls and music.",
    "Best headphones for music lovers. Call quality could have been better.",
    "The product has a good design, but it is a bit heavy. Not recommended for travel.",
]
AUTH = {"authorization": f"Bearer {DEFAULT_KEY}"}


@pytest.fixture(scope="module")
def simulator():
    with CohereSimulator() as simulator:
        yield simulator


@pytest.fixture(autouse=True)
def no_faults(simulator):
    simulator.faults.clear()


def send(request: urllib.request.Request) -> tuple[int, dict, dict]:
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


def rerank(simulator, version: str, body: dict, headers: dict[str, str] = AUTH):
    request = urllib.request.Request(
        f"{simulator.url}/{version}/rerank",
        json.dumps(body).encode(),
        {"content-type": "application/json", **headers},
    )
    return send(request)[:2]


def e5_scores(query: str, documents: list[str]) -> numpy.ndarray:
    vectors = E5(default_model_dir(), exact=True).embed(
        [f"query: {query}", *(f"passage: {document}" for document in documents)]
    )
    return vectors[1:] @ vectors[0]


def test_v1_and_v2_rank_by_e5_similarity(simulator):
    expected = e5_scores(QUERY, REVIEWS)
    order = sorted(range(len(REVIEWS)), key=lambda i: (-expected[i], i))
    status, v1 = rerank(simulator, "v1", {"query": QUERY, "documents": REVIEWS})
    assert status == 200
    assert [result["index"] for result in v1["results"]] == order
    scores = [result["relevance_score"] for result in v1["results"]]
    assert numpy.allclose(scores, numpy.clip(expected[order], 0, 1), atol=1e-5)
    assert all(0 <= score <= 1 for score in scores)
    assert scores == sorted(scores, reverse=True)
    assert order != list(range(len(REVIEWS)))  # the test ranks, not merely keeps the order
    assert "document" not in v1["results"][0]
    assert v1["meta"] == {
        "api_version": {"version": "1", "is_experimental": False},
        "billed_units": {"search_units": 1},
    }
    status, v2 = rerank(
        simulator, "v2", {"model": "Cohere-rerank-v3.5", "query": QUERY, "documents": REVIEWS}
    )
    assert status == 200
    assert v2["results"] == v1["results"]
    assert v2["meta"]["api_version"] == {"version": "2", "is_experimental": False}
    assert v1["id"] != v2["id"]


def test_top_n_cuts_and_return_documents_adds_them(simulator):
    _, whole = rerank(simulator, "v1", {"query": QUERY, "documents": REVIEWS})
    status, top = rerank(
        simulator,
        "v2",
        {"model": "m", "query": QUERY, "documents": REVIEWS, "top_n": 2, "return_documents": True},
    )
    assert status == 200 and len(top["results"]) == 2
    for result, expected in zip(top["results"], whole["results"][:2], strict=True):
        assert result["index"] == expected["index"]
        assert result["relevance_score"] == expected["relevance_score"]
        assert result["document"] == {"text": REVIEWS[result["index"]]}
    _, more = rerank(simulator, "v1", {"query": QUERY, "documents": REVIEWS, "top_n": 10})
    assert more["results"] == whole["results"]  # top_n beyond the documents returns them all


def test_v1_takes_objects_and_rank_fields(simulator):
    objects = [{"text": review, "id": f"r{i}"} for i, review in enumerate(REVIEWS)]
    _, strings = rerank(simulator, "v1", {"query": QUERY, "documents": REVIEWS})
    status, answer = rerank(
        simulator, "v1", {"query": QUERY, "documents": objects, "return_documents": True}
    )
    assert status == 200
    assert [r["index"] for r in answer["results"]] == [r["index"] for r in strings["results"]]
    assert all(r["document"] == objects[r["index"]] for r in answer["results"])
    titled = [{"title": "Headphones", "body": review} for review in REVIEWS]
    status, ranked = rerank(
        simulator,
        "v1",
        {"query": QUERY, "documents": titled, "rank_fields": ["title", "body"], "top_n": 1},
    )
    expected = e5_scores(QUERY, [f"title: Headphones\nbody: {review}" for review in REVIEWS])
    assert status == 200 and ranked["results"][0]["index"] == int(numpy.argmax(expected))


@pytest.mark.parametrize(
    ("version", "body", "message"),
    [
        ("v1", {"documents": REVIEWS}, "invalid request: query must not be empty"),
        ("v1", {"query": "", "documents": REVIEWS}, "invalid request: query must not be empty"),
        ("v1", {"query": QUERY, "documents": []},
         "invalid request: list of documents must not be empty"),
        ("v1", {"query": QUERY}, "invalid request: list of documents must not be empty"),
        ("v1", {"query": QUERY, "documents": REVIEWS, "top_n": 0},
         "invalid request: top_n must be an integer of at least 1, got 0"),
        ("v2", {"model": "m", "query": QUERY, "documents": REVIEWS, "top_n": "2"},
         'invalid request: top_n must be an integer of at least 1, got "2"'),
        ("v1", {"query": QUERY, "documents": ["d"] * (MAX_DOCUMENTS + 1)},
         "invalid request: too many documents, got 1001 but the limit is 1000"),
        ("v1", {"query": QUERY, "documents": ["d"] * 200, "max_chunks_per_doc": 51},
         "invalid request: documents x max_chunks_per_doc must be at most 10000, got 200 x 51"),
        ("v1", {"query": QUERY, "documents": [{"title": "no text"}]},
         "invalid request: documents[0] must have a string field 'text' (or name its fields"
         " in rank_fields)"),
        ("v2", {"model": "m", "query": QUERY, "documents": ["a", {"text": "b"}]},
         "invalid request: documents[1] must be a string"),
        ("v2", {"query": QUERY, "documents": REVIEWS}, "invalid request: model is required"),
        ("v2", {"model": "m", "query": QUERY, "documents": REVIEWS, "return_documents": 1},
         "invalid request: return_documents must be a boolean"),
    ],
)  # fmt: skip
def test_bad_bodies_are_400_with_cohere_messages(simulator, version, body, message):
    assert rerank(simulator, version, body) == (400, {"message": message})


def test_unknown_fields_are_422_as_cohere_answers_them(simulator):
    status, error = rerank(simulator, "v2", {"model": "m", "query": QUERY, "documents": REVIEWS,
                                             "top_k": 2})  # fmt: skip
    assert status == 422 and error["message"].startswith(
        "unknown field: parameter 'top_k' is not a valid field"
    )
    status, _ = rerank(simulator, "v1", {"query": QUERY, "documents": REVIEWS, "priority": 1})
    assert status == 422  # a v2 field


def test_keys_and_managed_identity_tokens(simulator):
    body = {"query": QUERY, "documents": REVIEWS[:1]}
    assert rerank(simulator, "v1", body, {"authorization": "Bearer wrong"}) == (
        401, {"message": "invalid api token"},
    )  # fmt: skip
    assert rerank(simulator, "v1", body, {})[0] == 401
    assert rerank(simulator, "v1", body, {"authorization": DEFAULT_KEY})[0] == 401
    assert rerank(simulator, "v1", body, {"authorization": f"bearer {DEFAULT_KEY}"})[0] == 200
    with CohereSimulator(keys=["k1", "k2"]) as other:
        assert rerank(other, "v1", body, {"authorization": "Bearer k2"})[0] == 200
        assert rerank(other, "v1", body)[0] == 401  # the default key is not among them

    def token(resource: str) -> str:
        query = urllib.parse.urlencode({"api-version": "2019-08-01", "resource": resource})
        request = urllib.request.Request(
            f"{simulator.url}{PATH}?{query}", headers={"x-identity-header": DEFAULT_HEADER_SECRET}
        )
        status, answer, _ = send(request)
        assert status == 200
        return answer["access_token"]

    ml = {"authorization": f"Bearer {token('https://ml.azure.com/')}"}
    assert rerank(simulator, "v2", {"model": "m", **body}, ml)[0] == 200
    other = {"authorization": f"Bearer {token('https://cognitiveservices.azure.com')}"}
    assert rerank(simulator, "v2", {"model": "m", **body}, other)[0] == 401


def test_unknown_paths_are_404(simulator):
    status, error = rerank(simulator, "v3", {"query": QUERY, "documents": REVIEWS})
    assert status == 404 and "message" in error
    status, _, _ = send(urllib.request.Request(f"{simulator.url}/v1/rerank", headers=AUTH))
    assert status == 404  # GET


def test_faults_are_answered_in_cohere_format(simulator):
    simulator.faults.extend([Fault(status=429, headers={"retry-after": "1"})])
    request = urllib.request.Request(
        f"{simulator.url}/v1/rerank",
        json.dumps({"query": QUERY, "documents": REVIEWS}).encode(),
        {"content-type": "application/json", **AUTH},
    )
    status, error, headers = send(request)
    assert (status, error) == (429, {"message": "simulated 429"})
    assert headers["retry-after"] == "1" and headers["x-request-id"]
    status, answer, headers = send(request)
    assert status == 200 and headers["x-request-id"] == answer["id"]
