"""The Azure ML simulator over real HTTP on loopback, in-process and as a command."""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from azure_ai_sim.sim import AzureMLSimulator, Fault
from azure_ai_sim.sim.models import HOUSING_COEFFICIENTS, HOUSING_INTERCEPT
from samples import DIABETES_ROWS, TAXI_TRIPS

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


class Reply:
    def __init__(self, response: http.client.HTTPResponse):
        self.status = response.status
        self.headers = {name.lower(): value for name, value in response.getheaders()}
        self.body = response.read()

    def json(self) -> Any:
        return json.loads(self.body)


def send(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    payload: Any = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """Sends JSON for anything but bytes, which go as they are."""
    body = payload if isinstance(payload, bytes) or payload is None else json.dumps(payload)
    conn.request(method, path, body=body, headers=headers or {})
    return Reply(conn.getresponse())


def connect(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)


@pytest.fixture(scope="module")
def sim() -> Iterator[AzureMLSimulator]:
    with AzureMLSimulator(keys=[KEY, "second-key"]) as simulator:
        yield simulator


@pytest.fixture
def call(sim: AzureMLSimulator) -> Iterator[Any]:
    """call(method, path, payload=None, headers=None) on a fresh connection, no faults left."""
    conn = connect(sim.url)
    yield lambda *args, **kwargs: send(conn, *args, **kwargs)
    conn.close()
    sim.faults.clear()
    sim.recorded.clear()


def score(call: Any, rows: Any, deployment: str | None = None, **headers: str) -> Reply:
    if deployment:
        headers["azureml-model-deployment"] = deployment
    return call("POST", "/score", {"input_data": rows}, {**AUTH, **headers})


def queue(call: Any, *faults: dict[str, Any]) -> None:
    reply = call("POST", "/_sim/faults", {"faults": list(faults)})
    assert reply.status == 200
    assert reply.json()["queued"] == len(faults)


def housing(row: list[float]) -> float:
    return HOUSING_INTERCEPT + sum(c * x for c, x in zip(HOUSING_COEFFICIENTS, row, strict=False))


def test_health_and_swagger(call):
    reply = call("GET", "/")
    assert (reply.status, reply.headers["content-type"], reply.body) == (
        200,
        "text/plain",
        b"Healthy",
    )
    swagger = call("GET", "/swagger.json").json()
    assert swagger["swagger"] == "2.0"
    assert "post" in swagger["paths"]["/score"]
    assert [d["name"] for d in swagger["x-azureml-deployments"]] == [
        "Housingprediction",
        "diabetes",
        "nyc-taxi-fare",
    ]


DEPLOYMENT_NAMES = ["Housingprediction", "diabetes", "nyc-taxi-fare"]
# What each deployment's swagger says its scoring script takes: the parameters and the
# inference-schema format of the first one.
DOCUMENTED_INPUTS = {
    "Housingprediction": (["input_data"], "pandas.DataFrame:split"),
    "diabetes": (["data"], "numpy.ndarray"),
    "nyc-taxi-fare": (["Inputs", "GlobalParameters"], None),
}
TAXI_COLUMNS = ["vendorid", "weekday", "pickuphour", "passenger", "distance"]
# Azure Stream Analytics' example requests ("Integrate Azure Stream Analytics with Azure
# Machine Learning"): its createArray form and its DataFrame form.
ASA_ARRAYS = {
    "Inputs": {"WebServiceInput0": [["1", "Mon", "12", "1", "5.8"], ["2", "Wed", "10", "2", "10"]]}
}
ASA_FRAME = {"Inputs": {"WebServiceInput0": TAXI_TRIPS}}


def swagger(
    call: Any, deployment: str | None = None, query: str = "", path: str = "/swagger.json"
) -> Reply:
    headers = {"azureml-model-deployment": deployment} if deployment else {}
    return call("GET", path + query, headers=headers)


def taxi(call: Any, payload: Any, path: str = "/score") -> Reply:
    headers = {**AUTH, "azureml-model-deployment": "nyc-taxi-fare"}
    return call("POST", path, payload, headers)


@pytest.mark.parametrize("name", DEPLOYMENT_NAMES)
def test_swagger2_of_each_deployment(call, name):
    reply = swagger(call, name)
    assert (reply.status, reply.headers["content-type"]) == (200, "application/json")
    document = reply.json()
    assert document["swagger"] == "2.0"
    assert document["info"]["title"] == name
    assert list(document["paths"]) == ["/", "/score", "/swagger.json"]
    score = document["paths"]["/score"]["post"]
    assert score["operationId"] == "RunMLService"
    assert score["parameters"] == [
        {
            "name": "serviceInputPayload",
            "in": "body",
            "description": "The input payload for executing the real-time machine learning "
            "service.",
            "schema": {"$ref": "#/definitions/ServiceInput"},
        }
    ]
    assert score["responses"]["200"]["schema"] == {"$ref": "#/definitions/ServiceOutput"}
    service_input = document["definitions"]["ServiceInput"]
    parameters, input_format = DOCUMENTED_INPUTS[name]
    assert service_input["type"] == "object"
    assert list(service_input["properties"]) == list(service_input["example"]) == parameters
    assert service_input["properties"][parameters[0]].get("format") == input_format
    assert document["definitions"]["ErrorResponse"] == {
        "type": "object",
        "properties": {"message": {"type": "string"}},
    }
    assert document["securityDefinitions"]["Bearer"]["name"] == "Authorization"
    assert [d["name"] for d in document["x-azureml-deployments"]] == DEPLOYMENT_NAMES


def test_swagger_shows_the_columns_and_their_types(call):
    housing_input = swagger(call, "Housingprediction").json()["definitions"]["ServiceInput"]
    split = housing_input["properties"]["input_data"]
    assert split["required"] == ["columns", "index", "data"]
    assert split["properties"]["data"] == {
        "type": "array",
        "items": {"type": "array", "items": {"type": "number", "format": "double"}},
    }
    assert housing_input["example"]["input_data"]["columns"][:2] == ["MedInc", "HouseAge"]
    diabetes = swagger(call, "diabetes").json()["definitions"]
    assert diabetes["ServiceInput"]["properties"]["data"]["items"]["items"]["type"] == "number"
    assert diabetes["ServiceOutput"]["format"] == "numpy.ndarray"

    taxi_document = swagger(call, "nyc-taxi-fare").json()["definitions"]
    frame = taxi_document["ServiceInput"]["properties"]["Inputs"]["properties"]["WebServiceInput0"]
    assert frame["format"] == "pandas.DataFrame:records"
    assert frame["items"]["required"] == TAXI_COLUMNS
    assert frame["items"]["properties"] == {name: {"type": "string"} for name in TAXI_COLUMNS}
    example = taxi_document["ServiceInput"]["example"]
    assert example["Inputs"]["WebServiceInput0"] == ASA_FRAME["Inputs"]["WebServiceInput0"][:1]
    assert example["GlobalParameters"] == {}
    results = taxi_document["ServiceOutput"]["properties"]["Results"]
    output = results["properties"]["WebServiceOutput0"]["items"]
    assert output["required"] == [*TAXI_COLUMNS, "Scored Labels"]
    assert output["properties"]["Scored Labels"] == {"type": "number", "format": "double"}


def test_default_deployment_swagger_and_version_aliases(call):
    default = swagger(call).json()
    assert default["info"]["title"] == "Housingprediction"
    assert swagger(call, query="?version=2").json() == default
    assert swagger(call, query="?version=2.0").json() == default


@pytest.mark.parametrize(
    ("version", "openapi"), [("3", "3.0.3"), ("3.0", "3.0.3"), ("3.1", "3.1.0")]
)
def test_openapi3_of_each_deployment(call, version, openapi):
    for name in DEPLOYMENT_NAMES:
        document = swagger(call, name, f"?version={version}").json()
        assert document["openapi"] == openapi
        assert "swagger" not in document and "definitions" not in document
        score = document["paths"]["/score"]["post"]
        assert score["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ServiceInput"
        }
        assert score["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ServiceOutput"
        }
        health = document["paths"]["/"]["get"]["responses"]["200"]["content"]
        assert health["text/plain"]["schema"] == {"type": "string", "example": "Healthy"}
        assert document["components"]["securitySchemes"]["Bearer"]["in"] == "header"
        swagger2 = swagger(call, name).json()["definitions"]
        schemas = document["components"]["schemas"]
        assert {key: schemas[key] for key in swagger2} == swagger2


def test_v1_service_swagger(call):
    document = swagger(call, path="/api/v1/service/nyc-taxi-fare/swagger.json").json()
    assert document["swagger"] == "2.0"
    assert list(document["paths"]) == [
        "/api/v1/service/nyc-taxi-fare/",
        "/api/v1/service/nyc-taxi-fare/score",
        "/api/v1/service/nyc-taxi-fare/swagger.json",
    ]
    assert "Inputs" in document["definitions"]["ServiceInput"]["properties"]
    assert "x-azureml-deployments" not in document
    openapi = swagger(call, path="/api/v1/service/diabetes/swagger.json", query="?version=3")
    assert openapi.json()["openapi"] == "3.0.3"
    assert "/api/v1/service/diabetes/score" in openapi.json()["paths"]


def test_swagger_errors_are_404(call):
    reply = swagger(call, "nope")
    assert reply.status == 404
    assert "nope" in reply.json()["message"]
    reply = swagger(call, path="/api/v1/service/nope/swagger.json")
    assert (reply.status, reply.json()["message"].startswith('service "nope"')) == (404, True)
    reply = swagger(call, "diabetes", "?version=4")
    assert reply.status == 404
    assert reply.json() == {
        "message": "Swagger version [4] is not valid. Supported versions: [2, 3, 3.1]."
    }


@pytest.mark.parametrize("name", DEPLOYMENT_NAMES)
def test_each_swagger_example_scores(call, name):
    """A client that builds its request from the swagger's example is answered."""
    example = swagger(call, name).json()["definitions"]["ServiceInput"]["example"]
    reply = call("POST", "/score", example, {**AUTH, "azureml-model-deployment": name})
    assert reply.status == 200, reply.body
    assert reply.headers["azureml-model-deployment"] == name


def test_stream_analytics_requests_both_forms(call):
    expected = [17.5, 28.0]  # $2.50 + $2.50 a mile + 50¢ tax, before 4 pm
    reply = taxi(call, ASA_FRAME)
    assert reply.status == 200, reply.body
    rows = reply.json()["Results"]["WebServiceOutput0"]
    assert rows == [
        {**row, "Scored Labels": fare}
        for row, fare in zip(ASA_FRAME["Inputs"]["WebServiceInput0"], expected, strict=True)
    ]
    reply = taxi(
        call, {**ASA_ARRAYS, "GlobalParameters": {}}, "/api/v1/service/nyc-taxi-fare/score"
    )
    assert reply.status == 200, reply.body
    rows = reply.json()["Results"]["WebServiceOutput0"]
    assert [list(row) for row in rows] == [[*TAXI_COLUMNS, "Scored Labels"]] * 2
    assert [row["Scored Labels"] for row in rows] == expected
    assert rows[1]["weekday"] == "Wed"


@pytest.mark.parametrize(
    ("row", "fare"),
    [
        (["1", "Fri", "17", "1", "1"], 6.5),  # weekday peak, 4 pm to 8 pm
        (["1", "Saturday", "17", "1", "1"], 5.5),  # no peak at weekends
        ([2, "sun", 22, 3, 1.0], 6.0),  # overnight; numbers as JSON numbers
        (["1", "Mon", "5", "1", "0"], 3.5),
    ],
)
def test_taxi_fare_follows_the_tariff(call, row, fare):
    reply = taxi(call, {"Inputs": {"WebServiceInput0": [row]}})
    assert reply.status == 200, reply.body
    assert reply.json()["Results"]["WebServiceOutput0"][0]["Scored Labels"] == fare


GOOD_ROW = {
    "vendorid": "1",
    "weekday": "Mon",
    "pickuphour": "12",
    "passenger": "1",
    "distance": "5.8",
}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"input_data": [[1, 2]]}, "A value is not provided for the 'Inputs' parameter"),
        ([GOOD_ROW], "POST body should be a JSON dictionary"),
        ({"Inputs": {"input1": [GOOD_ROW]}}, 'the one key "WebServiceInput0"'),
        ({"Inputs": {"WebServiceInput0": GOOD_ROW}}, '"WebServiceInput0" must be a list of rows'),
        ({"Inputs": {"WebServiceInput0": []}, "GlobalParameters": 1}, '"GlobalParameters" must'),
        (
            {
                "Inputs": {
                    "WebServiceInput0": [{k: v for k, v in GOOD_ROW.items() if k != "distance"}]
                }
            },
            'row 0: missing "distance"; expected the columns vendorid, weekday, pickuphour',
        ),
        (
            {"Inputs": {"WebServiceInput0": [GOOD_ROW, {**GOOD_ROW, "fare": "3"}]}},
            'row 1: unexpected "fare"; expected the columns',
        ),
        (
            {"Inputs": {"WebServiceInput0": [["1", "Mon", "12", "1"]]}},
            "row 0: expected an object with the columns vendorid, weekday, pickuphour, passenger,"
            ' distance or an array of their 5 values in that order, got ["1", "Mon", "12", "1"]',
        ),
        ({"Inputs": {"WebServiceInput0": ["1,Mon,12,1,5.8"]}}, "row 0: expected an object"),
        (
            {"Inputs": {"WebServiceInput0": [{**GOOD_ROW, "weekday": 1}]}},
            'row 0, column "weekday": expected a day such as "Mon" or "Monday", got 1',
        ),
        (
            {"Inputs": {"WebServiceInput0": [{**GOOD_ROW, "distance": "far"}]}},
            'row 0, column "distance": expected a distance in miles such as "5.8", got "far"',
        ),
        ({"Inputs": {"WebServiceInput0": [{**GOOD_ROW, "pickuphour": "25"}]}}, '"pickuphour"'),
        ({"Inputs": {"WebServiceInput0": [{**GOOD_ROW, "passenger": True}]}}, '"passenger"'),
        ({"Inputs": {"WebServiceInput0": [{**GOOD_ROW, "passenger": "1.5"}]}}, '"passenger"'),
        ({"Inputs": {"WebServiceInput0": [{**GOOD_ROW, "vendorid": None}]}}, '"vendorid"'),
        ({"Inputs": {"WebServiceInput0": [{**GOOD_ROW, "distance": "-1"}]}}, '"distance"'),
        ({"Inputs": {"WebServiceInput0": [{**GOOD_ROW, "distance": "nan"}]}}, '"distance"'),
    ],
)
def test_stream_analytics_deployment_400s(call, payload, message):
    reply = taxi(call, payload)
    assert reply.status == 400
    assert message in reply.json()["message"]


def test_row_deployments_reject_the_designer_shape(call):
    reply = call("POST", "/api/v1/service/diabetes/score", ASA_FRAME, AUTH)
    assert reply.status == 400
    assert '"input_data" (or "data")' in reply.json()["message"]


def test_concurrent_requests_are_counted():
    """Requests on different connections overlap, and /_sim/in_flight says how many did."""
    headers = {**AUTH, "azureml-model-deployment": "nyc-taxi-fare"}
    with AzureMLSimulator(keys=[KEY], latency_ms=300) as sim:
        control = connect(sim.url)
        assert send(control, "DELETE", "/_sim/in_flight").status == 200
        conns = [connect(sim.url) for _ in range(4)]
        statuses = []

        def request(conn: http.client.HTTPConnection) -> None:
            statuses.append(send(conn, "POST", "/score", ASA_ARRAYS, headers).status)

        threads = [threading.Thread(target=request, args=(conn,)) for conn in conns]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert statuses == [200] * 4
        counts = send(control, "GET", "/_sim/in_flight").json()
        assert counts == {"in_flight": 0, "max_in_flight": 4, "served": 4, "connections": 4}
        for conn in [control, *conns]:
            conn.close()


def test_housing_is_the_published_ols_fit(call):
    rows = [[1, 2, 3, 4, 5, 6, 7, 8], [-1, -2, -3, -4, -5, -6, -7, -8]]
    reply = score(call, rows, "Housingprediction", **{"x-ms-client-request-id": "abc-123"})
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.json() == pytest.approx([housing(row) for row in rows])
    assert reply.headers["azureml-model-deployment"] == "Housingprediction"
    assert reply.headers["x-ms-client-request-id"] == "abc-123"
    assert re.fullmatch(r"[0-9a-f-]{36}", reply.headers["x-request-id"])


def test_diabetes_scores_the_doc_rows(call):
    reply = score(call, DIABETES_ROWS, "diabetes")
    assert reply.status == 200, reply.body
    predictions = reply.json()
    assert len(predictions) == 2
    assert all(isinstance(p, float) and math.isfinite(p) for p in predictions)
    assert predictions[0] != predictions[1]


def test_default_deployment_and_other_payload_shapes(call):
    row = [1, 2, 3, 4, 5, 6, 7, 8]
    mlflow = {"columns": list("abcdefgh"), "index": [0], "data": [row]}
    for payload in ({"data": [row]}, {"input_data": mlflow}):
        reply = call("POST", "/score", payload, AUTH)
        assert reply.status == 200
        assert reply.json() == pytest.approx([housing(row)])
        assert reply.headers["azureml-model-deployment"] == "Housingprediction"


def test_v1_service_path(call):
    reply = call("POST", "/api/v1/service/diabetes/score", {"data": DIABETES_ROWS[:1]}, AUTH)
    assert reply.status == 200
    assert len(reply.json()) == 1
    assert reply.headers["azureml-model-deployment"] == "diabetes"
    reply = call("POST", "/api/v1/service/nope/score", {"data": [[1]]}, AUTH)
    assert reply.status == 404
    assert "nope" in reply.json()["message"]


def test_unknown_deployment_is_404_listing_the_known_ones(call):
    reply = score(call, [[1] * 8], "nope")
    assert reply.status == 404
    message = reply.json()["message"]
    assert "nope" in message and "Housingprediction" in message and "diabetes" in message
    assert "azureml-model-deployment" not in reply.headers
    assert "x-request-id" in reply.headers


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-key-123", "Basic dGVzdC1rZXk="])
def test_401_without_a_valid_key(call, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    reply = call("POST", "/score", {"input_data": [[1] * 8]}, headers)
    assert reply.status == 401
    assert reply.json()["message"]
    assert b"wrong-key-123" not in reply.body


def test_every_key_is_accepted(call):
    headers = {"Authorization": "bearer second-key"}
    assert call("POST", "/score", {"input_data": [[1] * 8]}, headers).status == 200


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"\xff\xfe",
        b"[[1, 2]]",
        b'{"rows": [[1]]}',
        b'{"input_data": [1, 2]}',
        b'{"input_data": [["1", 2]]}',
        b'{"input_data": [[true, 2]]}',
        b'{"input_data": {"columns": ["a"]}}',
    ],
)
def test_400_on_bad_payloads(call, body):
    reply = call("POST", "/score", body, AUTH)
    assert reply.status == 400
    assert reply.json()["message"]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([[1, 2, 3]], "expected 8 features per row, got 3"),
        ([[1] * 8, [1] * 9], "expected 8 features per row, got 9"),
        ([[float("nan")] * 8], "input contains NaN or infinity"),
        ([], "expected at least one row, got none"),
    ],
)
def test_424_when_the_model_rejects_its_input(call, rows, message):
    reply = score(call, rows)
    assert reply.status == 424
    assert reply.headers["ms-azureml-model-error-statuscode"] == "500"
    assert reply.headers["ms-azureml-model-error-reason"] == "model_error"
    assert reply.json() == {"message": message}


def test_status_faults_in_order_then_normal(call):
    queue(call, {"status": 503}, {"status": 503})
    statuses = [score(call, [[1] * 8]) for _ in range(4)]
    assert [r.status for r in statuses] == [503, 503, 200, 200]
    assert statuses[0].json() == {"message": "simulated 503"}
    assert statuses[0].headers["azureml-model-deployment"] == "Housingprediction"
    assert call("GET", "/_sim/faults").json() == {"faults": []}


def test_faults_are_taken_by_scoring_requests_only(call):
    queue(call, {"status": 500})
    assert call("GET", "/").status == 200
    assert call("POST", "/api/v1/service/diabetes/score", {"data": [[0] * 10]}, AUTH).status == 500


def test_retry_after_and_extra_headers(call):
    queue(call, {"status": 429, "retry_after": "2", "headers": {"X-Extra": "yes"}})
    reply = score(call, [[1] * 8])
    assert reply.status == 429
    assert (reply.headers["retry-after"], reply.headers["x-extra"]) == ("2", "yes")


def test_malformed_bodies(call):
    queue(
        call,
        {"body": "[1.0, 2"},
        {"status": 502, "body": "<html>Bad Gateway</html>", "content_type": "text/html"},
    )
    reply = score(call, [[1] * 8])
    assert (reply.status, reply.body, reply.headers["content-type"]) == (
        200,
        b"[1.0, 2",
        "application/json",
    )
    reply = score(call, [[1] * 8])
    assert (reply.status, reply.headers["content-type"]) == (502, "text/html")
    assert reply.body == b"<html>Bad Gateway</html>"
    assert reply.headers["content-length"] == str(len(reply.body))


def test_drop_closes_the_connection_without_a_response(sim, call):
    queue(call, {"drop": True, "latency_ms": 10})
    conn = connect(sim.url)
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        send(conn, "POST", "/score", {"input_data": [[1] * 8]}, AUTH)
    conn.close()
    assert score(call, [[1] * 8]).status == 200


def test_oversized_response(call):
    queue(call, {"oversized_bytes": 200_000})
    reply = score(call, [[1] * 8])
    assert reply.status == 200
    assert int(reply.headers["content-length"]) == len(reply.body) >= 200_000
    assert all(isinstance(x, float) for x in reply.json())


def test_chunked_response_keeps_the_connection_usable(call):
    queue(call, {"chunked": True})
    reply = score(call, [[1] * 8, [2] * 8])
    assert reply.status == 200
    assert reply.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in reply.headers
    assert reply.json() == pytest.approx([housing([1] * 8), housing([2] * 8)])
    assert score(call, [[1] * 8]).status == 200


def test_latency_below_the_timeout_then_normal_answer(call):
    queue(call, {"latency_ms": 20})
    assert score(call, [[1] * 8]).status == 200


def test_latency_does_not_hold_up_other_connections():
    with AzureMLSimulator(keys=[KEY]) as sim:
        sim.faults.extend([Fault(latency_ms=4000)])
        conn = connect(sim.url)

        def slow_request() -> None:
            with contextlib.suppress(ConnectionError, http.client.HTTPException):
                send(conn, "POST", "/score", b"{}")

        slow = threading.Thread(target=slow_request)
        slow.start()
        while not sim.recorded.snapshot():  # the slow request has arrived and is sleeping
            time.sleep(0.005)
        other = connect(sim.url)
        assert send(other, "GET", "/").status == 200
        assert slow.is_alive()
        other.close()
    slow.join()  # stop() shut its connection down
    conn.close()


def test_bad_faults_are_rejected(call):
    for faults in ([{"status": "503"}], [{"statsu": 503}], "x", [{"status": 204}]):
        reply = call("POST", "/_sim/faults", {"faults": faults})
        assert reply.status == 400
    assert call("POST", "/_sim/faults", b"nope").status == 400
    assert call("DELETE", "/_sim/faults").json() == {"cleared": 0}


def test_requests_are_recorded(call):
    score(call, [[1] * 8], **{"X-Test": "one"})
    call("GET", "/")
    call("GET", "/msi/token?api-version=2019-08-01&resource=x")
    recorded = call("GET", "/_sim/requests").json()
    assert [(r["method"], r["path"]) for r in recorded] == [
        ("POST", "/score"),
        ("GET", "/msi/token"),
    ]
    assert recorded[1]["query"] == {"api-version": "2019-08-01", "resource": "x"}
    assert recorded[0]["headers"]["x-test"] == "one"
    assert recorded[0]["headers"]["authorization"] == f"Bearer {KEY}"
    assert json.loads(recorded[0]["body"]) == {"input_data": [[1] * 8]}
    assert call("DELETE", "/_sim/requests").json() == {"cleared": 2}
    assert call("GET", "/_sim/requests").json() == []


def test_managed_identity_tokens(call):
    path = "/msi/token?api-version=2019-08-01&resource=https://ml.azure.com&client_id=x"
    assert call("GET", path).status == 401
    assert call("GET", path, headers={"X-IDENTITY-HEADER": "wrong"}).status == 401
    reply = call("GET", path, headers={"X-IDENTITY-HEADER": "sim-identity-header"})
    assert reply.status == 200
    token = reply.json()
    assert (token["resource"], token["token_type"]) == ("https://ml.azure.com", "Bearer")
    assert int(token["expires_on"]) > time.time()
    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    assert call("POST", "/score", {"input_data": [[1] * 8]}, bearer).status == 200

    other = call(
        "GET",
        "/msi/token?api-version=2019-08-01&resource=https://management.azure.com",
        headers={"X-IDENTITY-HEADER": "sim-identity-header"},
    ).json()
    bearer = {"Authorization": f"Bearer {other['access_token']}"}
    reply = call("POST", "/score", {"input_data": [[1] * 8]}, bearer)
    assert reply.status == 401
    assert other["access_token"].encode() not in reply.body


def test_500_requests_on_one_keep_alive_connection(sim):
    conn = connect(sim.url)
    body = json.dumps({"input_data": [[1, 2, 3, 4, 5, 6, 7, 8]]})
    statuses = []
    sockets = set()
    for _ in range(500):
        conn.request("POST", "/score", body=body, headers=AUTH)
        response = conn.getresponse()
        response.read()
        statuses.append(response.status)
        sockets.add(conn.sock)
    assert len(sockets) == 1  # never reconnected
    assert statuses == [200] * 500
    reply = send(conn, "POST", "/score", body.encode(), {**AUTH, "Connection": "close"})
    assert (reply.status, reply.headers["connection"]) == (200, "close")
    assert conn.sock is None  # http.client closed it as the server asked
    conn.close()


def test_command_line_with_request_timeout():
    command = [sys.executable, "-m", "azure_ai_sim.sim", "azureml", "--port", "0"]
    command += ["--request-timeout-ms", "200", "--key", "k1", "--key", "k2"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        match = re.fullmatch(r"azureml simulator listening on (http://127\.0\.0\.1:\d+)\n", line)
        assert match, line
        conn = connect(match[1])
        assert send(conn, "GET", "/").body == b"Healthy"
        k2 = {"Authorization": "Bearer k2"}
        assert send(conn, "POST", "/score", {"input_data": [[1] * 8]}, k2).status == 200
        assert send(conn, "POST", "/_sim/faults", {"faults": [{"latency_ms": 1000}]}).status == 200
        reply = send(conn, "POST", "/score", {"input_data": [[1] * 8]}, k2)
        assert reply.status == 408
        assert reply.json() == {"message": "request timed out after 200 ms"}
        conn.close()
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        assert proc.stdout.read() == ""
        proc.stdout.close()
