"""Microsoft's Azure ML inference server (azmlinfsrv) with our scoring script: the swagger it
generates from inference-schema's decorators, and how it scores and fails.

It is the reference for what a real Azure ML online endpoint or web service serves: the Swagger 2
document Stream Analytics reads for a function's signature, and the request and error shapes that
azure_ml.invoke talks to. The server runs from its own venv (see tests/inference_server).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inference_server import SCORE_SCRIPT, InferenceServerError, inference_server, server_python
from samples import TAXI_TRIPS

COLUMNS = {
    "vendorid": {"type": "integer", "format": "int64"},
    "weekday": {"type": "string"},
    "pickuphour": {"type": "integer", "format": "int64"},
    "passenger": {"type": "integer", "format": "int64"},
    "distance": {"type": "number", "format": "double"},
}
# The rows of Stream Analytics' DataFrame example request ("Integrate Azure Stream Analytics with
# Azure Machine Learning"), sent as it sends them: every value a string.
ARTICLE_REQUEST = {"data": TAXI_TRIPS}
# score.py's formula: 3 + 2.5*distance + 0.5*(passenger-1) (+1 weekend, +1 night, +0.25 vendor 2)
ARTICLE_FARES = [3 + 2.5 * 5.8, 3 + 2.5 * 10 + 0.5 + 0.25]
GENERIC_RUN_ERROR = "An unexpected error occurred in scoring script. Check the logs for more info."


@pytest.fixture(scope="module")
def python() -> Path:
    found, reason = server_python()
    if found is None:
        pytest.skip(reason)
    return found


@pytest.fixture(scope="module")
def server(python: Path) -> Iterator[str]:
    with inference_server(SCORE_SCRIPT, python=python) as base_url:
        yield base_url


def call(
    base_url: str,
    path: str,
    body: Any = None,
    *,
    method: str | None = None,
    content_type: str = "application/json",
) -> tuple[int, dict[str, str], bytes]:
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": content_type} if data is not None else {}
    request = urllib.request.Request(base_url + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def get_json(base_url: str, path: str) -> Any:
    status, headers, body = call(base_url, path)
    assert status == 200, body
    assert headers["Content-Type"] == "application/json"
    return json.loads(body)


def test_liveness(server: str) -> None:
    assert call(server, "/")[::2] == (200, b"Healthy")


def test_swagger2_describes_the_input_columns_and_output(server: str) -> None:
    doc = get_json(server, "/swagger.json")
    assert doc["swagger"] == "2.0"
    assert doc["info"] == {
        "title": "ML service",
        "description": "API specification for the Azure Machine Learning service ML service",
        "version": "1.0",
    }
    score = doc["paths"]["/score"]["post"]
    assert score["operationId"] == "RunMLService"
    assert score["parameters"][0]["in"] == "body"
    assert score["parameters"][0]["schema"] == {"$ref": "#/definitions/ServiceInput"}
    assert score["responses"]["200"]["schema"] == {"$ref": "#/definitions/ServiceOutput"}
    assert doc["paths"]["/"]["get"]["operationId"] == "ServiceHealthCheck"

    service_input = doc["definitions"]["ServiceInput"]
    assert service_input["type"] == "object"
    data = service_input["properties"]["data"]
    assert data["type"] == "array"
    assert data["format"] == "pandas.DataFrame:records"
    assert data["items"]["type"] == "object"
    assert data["items"]["required"] == list(COLUMNS)  # in the sample's column order
    assert data["items"]["properties"] == COLUMNS
    assert service_input["example"]["data"][0] == {
        "vendorid": 1,
        "weekday": "Mon",
        "pickuphour": 12,
        "passenger": 1,
        "distance": 5.8,
    }
    assert doc["definitions"]["ServiceOutput"] == {
        "type": "array",
        "items": {"type": "number", "format": "double"},
        "example": [17.5, 28.75],
        "format": "numpy.ndarray",
    }
    assert doc["definitions"]["ErrorResponse"] == {
        "type": "object",
        "properties": {"message": {"type": "string"}},
    }


def test_swagger2_is_the_default_version(server: str) -> None:
    default = get_json(server, "/swagger.json")
    assert get_json(server, "/swagger.json?version=2") == default
    assert get_json(server, "/swagger.json?version=2.0") == default


@pytest.mark.parametrize(
    ("version", "openapi"), [("3", "3.0.3"), ("3.0", "3.0.3"), ("3.1", "3.1.0")]
)
def test_openapi3_by_query_parameter(server: str, version: str, openapi: str) -> None:
    swagger2 = get_json(server, "/swagger.json")
    doc = get_json(server, f"/swagger.json?version={version}")
    assert doc["openapi"] == openapi
    assert "swagger" not in doc
    schemas = doc["components"]["schemas"]
    # The same inference-schema output as Swagger 2's definitions.
    for name in ("ServiceInput", "ServiceOutput", "ErrorResponse"):
        assert schemas[name] == swagger2["definitions"][name]
    body = doc["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/ServiceInput"}
    assert doc["components"]["securitySchemes"]["Bearer"]["in"] == "header"


def test_unknown_swagger_version_is_a_404_naming_the_known_ones(server: str) -> None:
    status, _, body = call(server, "/swagger.json?version=4")
    assert status == 404
    assert json.loads(body) == {
        "message": "Swagger version [4] is not valid. Supported versions: [2, 3, 3.1]."
    }


def test_score_the_swagger_example(server: str) -> None:
    example = get_json(server, "/swagger.json")["definitions"]["ServiceInput"]["example"]
    status, headers, body = call(server, "/score", example)
    assert status == 200, body
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == pytest.approx([17.5, 28.75])
    assert headers["x-ms-run-function-failed"] == "False"
    assert float(headers["x-ms-run-fn-exec-ms"]) >= 0
    assert headers["x-ms-server-version"].startswith("azmlinfsrv/")
    assert headers["x-ms-request-id"]


def test_score_stream_analytics_string_values(server: str) -> None:
    """Column types come from the sample: Stream Analytics' "12" and "5.8" are cast."""
    status, _, body = call(server, "/score", ARTICLE_REQUEST)
    assert status == 200, body
    assert json.loads(body) == pytest.approx(ARTICLE_FARES)


def test_score_by_get_with_query_parameters(server: str) -> None:
    query = urllib.parse.urlencode({"data": json.dumps(ARTICLE_REQUEST["data"])})
    status, _, body = call(server, f"/score?{query}")
    assert status == 200, body
    assert json.loads(body) == pytest.approx(ARTICLE_FARES)


ONE_ROW = ARTICLE_REQUEST["data"][0]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        pytest.param(
            b"{not json",
            "application/json",
            400,
            "POST body could not be decoded as JSON: Expecting property name enclosed in double "
            "quotes: line 1 column 2 (char 1)",
            id="not-json",
        ),
        pytest.param(
            b"",
            "application/json",
            400,
            "POST body is empty. Expecting a JSON dictionary.",
            id="empty",
        ),
        pytest.param(
            [ONE_ROW], "application/json", 400, "POST body should be a JSON dictionary.", id="list"
        ),
        pytest.param(
            {"input_data": [ONE_ROW]},
            "application/json",
            400,
            "A value is not provided for the 'data' parameter.",
            id="no-data-key",
        ),
        pytest.param(
            ARTICLE_REQUEST,
            "text/plain",
            415,
            "Expects Content-Type to be application/json",
            id="not-json-content-type",
        ),
        # inference-schema's own checks run inside the run() wrapper: the server reports them as
        # a failure of the scoring script, with the reason only in its log.
        pytest.param(
            {"data": [{k: v for k, v in ONE_ROW.items() if k != "distance"}]},
            "application/json",
            500,
            GENERIC_RUN_ERROR,
            id="missing-column",
        ),
        pytest.param(
            {"data": [{**ONE_ROW, "distance": "far"}]},
            "application/json",
            500,
            GENERIC_RUN_ERROR,
            id="uncastable-value",
        ),
        pytest.param(
            {"data": [["1", "Mon", "12", "1", "5.8"]]},  # the article's createArray form
            "application/json",
            500,
            GENERIC_RUN_ERROR,
            id="array-rows",
        ),
    ],
)
def test_wrong_payload(
    server: str, body: Any, content_type: str, status: int, message: str
) -> None:
    got, headers, answer = call(server, "/score", body, content_type=content_type)
    assert got == status, answer
    assert headers["Content-Type"] == "application/json"
    assert json.loads(answer) == {"message": message}
    assert headers["x-ms-run-function-failed"] == ("True" if status == 500 else "False")


def test_wrong_method(server: str) -> None:
    status, _, body = call(server, "/score", b"{}", method="PUT")
    assert status == 405
    assert json.loads(body) == {"message": "The method is not allowed for the requested URL."}


def test_failed_init_raises_with_the_server_output(python: Path, tmp_path: Path) -> None:
    script = tmp_path / "broken.py"
    script.write_text(
        "def init():\n"
        "    raise RuntimeError('model.onnx is missing')\n"
        "\n"
        "def run(data):\n"
        "    return data\n"
    )
    with (
        pytest.raises(InferenceServerError, match="model.onnx is missing") as failure,
        inference_server(script, python=python, startup_timeout=60),
    ):
        pytest.fail("the server answered although init() failed")
    assert "azmlinfsrv" in str(failure.value)
