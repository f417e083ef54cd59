"""Simulator of an Azure Machine Learning online endpoint and its deployments.

It speaks the scoring protocol that azure_ml.invoke calls: POST /score (v2 online endpoints,
deployment chosen by the azureml-model-deployment header) and POST /api/v1/service/<name>/score
(v1 ACI/AKS web services), with Azure's status codes: 401 bad key, 404 unknown deployment,
400 bad payload, 424 when the model raises, 408 past the request timeout. Keys are checked
before the deployment is looked up, so that a caller without a key cannot list deployments.

Each deployment takes the request shape of the scoring script it stands for:

    Housingprediction  {"input_data": rows}, or pandas' "split" orientation
                       {"input_data": {"columns": [...], "index": [...], "data": rows}}
    diabetes           {"data": rows}, as Azure's v1 web-service example (input_data works too)
    nyc-taxi-fare      Azure Stream Analytics' example: {"Inputs": {"WebServiceInput0": rows},
                       "GlobalParameters": {}}, each row an object of the five columns or an
                       array of them in order -> {"Results": {"WebServiceOutput0": [...]}}

and publishes the swagger that the Azure ML inference server (azureml-inference-server-http)
generates for a scoring script decorated with inference-schema, since clients such as Stream
Analytics read a deployment's signature from it: GET /swagger.json (the deployment of the
azureml-model-deployment header, or the default) and GET /api/v1/service/<name>/swagger.json;
Swagger 2.0 by default, ?version=3 (or 3.1) for OpenAPI 3.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import ssl
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from azure_ai_sim.sim import managed_identity, models
from azure_ai_sim.sim.server import (
    Endpoint,
    HTTPError,
    Request,
    Response,
    Simulator,
    json_response,
)

DEFAULT_KEY = "sim-key"
DEFAULT_DEPLOYMENT = "Housingprediction"
ML_RESOURCE = "https://ml.azure.com"
V1_SERVICE = re.compile(r"/api/v1/service/([^/]+)/(score|swagger\.json)")
PAYLOAD_KEYS = ("input_data", "data")
MODEL_ERROR_HEADERS = {
    "ms-azureml-model-error-statuscode": "500",
    "ms-azureml-model-error-reason": "model_error",
}
JSON = "application/json"

# The sample inputs of the scoring scripts, which the swagger shows as examples: the first row
# of the California housing data, the first row of Azure's diabetes example, and the first row
# of Stream Analytics' example request.
HOUSING_SAMPLE = [8.3252, 41.0, 6.984127, 1.02381, 322.0, 2.555556, 37.88, -122.23]
DIABETES_SAMPLE = [
    0.0199132141783263,
    0.0506801187398187,
    0.104808689473925,
    0.0700725447072635,
    -0.0359677812752396,
    -0.0266789028311707,
    -0.0249926566315915,
    -0.00259226199818282,
    0.00371173823343597,
    0.0403433716478807,
]
TAXI_SAMPLE = ["1", "Mon", "12", "1", "5.8"]
SCORED_LABELS = "Scored Labels"  # the column a designer-style scoring adds to each row


# The schemas of inference-schema's parameter types: each carries an "example"; inside a
# dict, the examples move up to the dict's own, as inference-schema does.

SCALAR_SCHEMAS: dict[type, dict[str, str]] = {
    bool: {"type": "boolean"},
    int: {"type": "integer", "format": "int64"},
    float: {"type": "number", "format": "double"},
    str: {"type": "string"},
}


def schema_of(sample: Any) -> dict[str, Any]:
    """The schema StandardPythonParameterType derives from a sample, without its example.

    Like inference-schema, a list's items take the schema of its last element.
    """
    if type(sample) is list:
        return {"type": "array", "items": schema_of(sample[-1]) if sample else {"type": "object"}}
    if type(sample) is dict:
        return {
            "type": "object",
            "required": list(sample),
            "properties": {key: schema_of(value) for key, value in sample.items()},
        }
    return dict(SCALAR_SCHEMAS[type(sample)])


def standard(sample: Any) -> dict[str, Any]:
    """StandardPythonParameterType(sample)."""
    return {**schema_of(sample), "example": sample}


def numpy_array(sample: list[Any]) -> dict[str, Any]:
    """NumpyParameterType(np.array(sample))."""
    return {**standard(sample), "format": "numpy.ndarray"}


def pandas_frame(sample: Any, orient: str) -> dict[str, Any]:
    """PandasParameterType(frame, orient=orient), sample being frame.to_json(orient=orient)."""
    return {**standard(sample), "format": f"pandas.DataFrame:{orient}"}


def _hoist(parameters: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The parameters' schemas without their examples, and the examples by name."""
    schemas = {
        name: {key: value for key, value in schema.items() if key != "example"}
        for name, schema in parameters.items()
    }
    return schemas, {name: schema["example"] for name, schema in parameters.items()}


def standard_dict(**parameters: dict[str, Any]) -> dict[str, Any]:
    """StandardPythonParameterType of a dict whose values are parameter types."""
    properties, example = _hoist(parameters)
    required = list(parameters)
    return {"type": "object", "required": required, "properties": properties, "example": example}


def service_input(**parameters: dict[str, Any]) -> dict[str, Any]:
    """The ServiceInput definition: one @input_schema(name, parameter type) per parameter."""
    properties, example = _hoist(parameters)
    return {"type": "object", "properties": properties, "example": example}


# Request bodies.


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:  # also bodies that are not UTF-8
        raise HTTPError(400, "the request body is not valid JSON") from None


def rows_of(payload: Any) -> list[list[float]]:
    """The rows of a scoring request: {"input_data": rows}, {"data": rows}, or pandas' split
    orientation {"input_data": {"columns": [...], "index": [...], "data": rows}}."""
    key = next((k for k in PAYLOAD_KEYS if k in payload), None) if type(payload) is dict else None
    if key is None:
        raise HTTPError(400, 'expected a JSON object with the key "input_data" (or "data")')
    rows = payload[key]
    if type(rows) is dict:
        rows = rows.get("data")
    if type(rows) is not list or not all(
        type(row) is list and all(type(x) in (int, float) for x in row) for row in rows
    ):
        raise HTTPError(400, f'"{key}" must be a list of rows, each a list of numbers')
    return rows


DESIGNER_SHAPE = '{"Inputs": {"WebServiceInput0": [row, ...]}, "GlobalParameters": {}}'


def designer_rows(payload: Any) -> list[Any]:
    """The rows of a designer-style request, which Stream Analytics and Power BI send."""
    if type(payload) is not dict:
        raise HTTPError(400, f"POST body should be a JSON dictionary: {DESIGNER_SHAPE}")
    if "Inputs" not in payload:
        raise HTTPError(
            400, f"A value is not provided for the 'Inputs' parameter; expected {DESIGNER_SHAPE}"
        )
    inputs = payload["Inputs"]
    if type(inputs) is not dict or list(inputs) != ["WebServiceInput0"]:
        raise HTTPError(400, '"Inputs" must be an object with the one key "WebServiceInput0"')
    if type(inputs["WebServiceInput0"]) is not list:
        raise HTTPError(400, '"WebServiceInput0" must be a list of rows')
    if type(payload.get("GlobalParameters", {})) is not dict:
        raise HTTPError(400, '"GlobalParameters" must be an object')
    return inputs["WebServiceInput0"]


@dataclass(frozen=True)
class Column:
    """A column of a designer-style input and how its JSON value becomes the model's."""

    name: str
    expected: str  # what the error message says a value should be
    convert: Callable[[Any], Any]  # raises ValueError on a value it does not take


def _vendor(value: Any) -> str:
    if (type(value) is str and value) or type(value) is int:
        return str(value)
    raise ValueError


def _weekday(value: Any) -> int:
    if type(value) is str:
        for index, day in enumerate(models.WEEKDAYS):
            if value.lower() in (day.lower(), day[:3].lower()):
                return index
    raise ValueError


def _quantity(value: Any) -> float:
    """A non-negative number, sent as a JSON number or as a string (Stream Analytics' example
    sends every column as a string)."""
    if type(value) not in (int, float, str):
        raise ValueError
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        raise ValueError from None
    if not math.isfinite(number) or number < 0:
        raise ValueError
    return number


def _count(value: Any) -> int:
    number = _quantity(value)
    if not number.is_integer():
        raise ValueError
    return int(number)


def _hour(value: Any) -> int:
    hour = _count(value)
    if hour > 23:
        raise ValueError
    return hour


TAXI_COLUMNS = (
    Column("vendorid", 'a vendor id such as "1"', _vendor),
    Column("weekday", 'a day such as "Mon" or "Monday"', _weekday),
    Column("pickuphour", 'an hour from "0" to "23"', _hour),
    Column("passenger", 'a number of passengers such as "1"', _count),
    Column("distance", 'a distance in miles such as "5.8"', _quantity),
)
TAXI_NAMES = [column.name for column in TAXI_COLUMNS]


def row_values(row: Any, index: int, columns: tuple[Column, ...]) -> list[Any]:
    """A row's values in column order, from an object by column name (Stream Analytics'
    DataFrame form) or from an array in column order (its createArray form)."""
    names = [column.name for column in columns]
    if type(row) is dict:
        missing = [name for name in names if name not in row]
        extra = [name for name in row if name not in names]
        if missing or extra:
            problems = [
                f"{label} {', '.join(map(json.dumps, found))}"
                for label, found in [("missing", missing), ("unexpected", extra)]
                if found
            ]
            raise HTTPError(
                400,
                f"row {index}: {'; '.join(problems)}; expected the columns {', '.join(names)}",
            )
        return [row[name] for name in names]
    if type(row) is list and len(row) == len(names):
        return row
    raise HTTPError(
        400,
        f"row {index}: expected an object with the columns {', '.join(names)} or an array of "
        f"their {len(names)} values in that order, got {json.dumps(row)}",
    )


def convert_row(values: list[Any], index: int, columns: tuple[Column, ...]) -> list[Any]:
    converted = []
    for column, value in zip(columns, values, strict=True):
        try:
            converted.append(column.convert(value))
        except ValueError:
            raise HTTPError(
                400,
                f'row {index}, column "{column.name}": expected {column.expected}, '
                f"got {json.dumps(value)}",
            ) from None
    return converted


def score_taxi_fares(payload: Any) -> dict[str, Any]:
    """Each row back as an object with its "Scored Labels", as designer deployments answer."""
    results = []
    for index, row in enumerate(designer_rows(payload)):
        values = row_values(row, index, TAXI_COLUMNS)
        trip = models.TaxiTrip(*convert_row(values, index, TAXI_COLUMNS))
        results.append(
            {**dict(zip(TAXI_NAMES, values, strict=True)), SCORED_LABELS: models.taxi_fare(trip)}
        )
    return {"Results": {"WebServiceOutput0": results}}


def linear_scorer(model: models.LinearModel) -> Callable[[Any], list[float]]:
    return lambda payload: model.predict(rows_of(payload))


@dataclass(frozen=True)
class Deployment:
    """A deployment: how it scores a request, and the schemas its swagger shows."""

    name: str
    description: str
    features: tuple[str, ...]
    score: Callable[[Any], Any]  # the request's JSON -> the answer's; HTTPError or ModelError
    service_input: dict[str, Any]  # the swagger's ServiceInput and ServiceOutput definitions
    service_output: dict[str, Any]


def _taxi_deployment() -> Deployment:
    sample = dict(zip(TAXI_NAMES, TAXI_SAMPLE, strict=True))
    fare = models.taxi_fare(models.TaxiTrip(*convert_row(TAXI_SAMPLE, 0, TAXI_COLUMNS)))
    frame = pandas_frame([{**sample, SCORED_LABELS: fare}], "records")
    return Deployment(
        "nyc-taxi-fare",
        "Azure Stream Analytics' example: a New York taxi fare (designer-style web service)",
        tuple(TAXI_NAMES),
        score_taxi_fares,
        service_input(
            Inputs=standard_dict(WebServiceInput0=pandas_frame([sample], "records")),
            GlobalParameters=standard({}),
        ),
        standard_dict(Results=standard_dict(WebServiceOutput0=frame)),
    )


DEPLOYMENTS = {
    d.name: d
    for d in (
        Deployment(
            "Housingprediction",
            "California housing: median house value in units of $100,000 (OLS fit)",
            models.HOUSING.features,
            linear_scorer(models.HOUSING),
            service_input(
                input_data=pandas_frame(
                    {
                        "columns": list(models.HOUSING.features),
                        "index": [0],
                        "data": [HOUSING_SAMPLE],
                    },
                    "split",
                )
            ),
            numpy_array([4.131650154688423]),  # the prediction for HOUSING_SAMPLE
        ),
        Deployment(
            "diabetes",
            "scikit-learn diabetes dataset: disease progression one year after baseline",
            models.DIABETES.features,
            linear_scorer(models.DIABETES),
            service_input(data=numpy_array([DIABETES_SAMPLE])),
            numpy_array([235.30150960747142]),  # the prediction for DIABETES_SAMPLE
        ),
        _taxi_deployment(),
    )
}


class AzureMLSimulator(Simulator):
    """Azure Machine Learning online endpoint: /score, the v1 service path, managed identity.

    keys are the accepted API keys; tokens from the identity endpoint (GET /msi/token with
    X-IDENTITY-HEADER: identity_header) are accepted too when issued for https://ml.azure.com.
    """

    name = "azureml"
    default_request_timeout_ms = 5000  # an online deployment's default request_timeout_ms

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        keys: Iterable[str] = (DEFAULT_KEY,),
        default_deployment: str = DEFAULT_DEPLOYMENT,
        request_timeout_ms: int | None = None,
        identity_header: str = managed_identity.DEFAULT_HEADER_SECRET,
        tls: ssl.SSLContext | None = None,
        latency_ms: float = 0,
    ):
        super().__init__(
            host, port, request_timeout_ms=request_timeout_ms, tls=tls, latency_ms=latency_ms
        )
        if default_deployment not in DEPLOYMENTS:
            raise ValueError(f"unknown deployment {default_deployment!r}; known: {_known()}")
        self.keys = tuple(keys) or (DEFAULT_KEY,)
        self.default_deployment = default_deployment
        self.identity = managed_identity.ManagedIdentity(identity_header)

    def route(self, request: Request) -> Endpoint | None:
        v1 = V1_SERVICE.fullmatch(request.path)
        if request.method == "GET":
            if request.path == "/":
                return Endpoint(lambda _: Response(200, b"Healthy", {"content-type": "text/plain"}))
            if request.path == "/swagger.json":
                name = request.headers.get("azureml-model-deployment")
                return Endpoint(lambda request: self._swagger(request, name))
            if v1 and v1[2] == "swagger.json":
                return Endpoint(lambda request: self._swagger(request, unquote(v1[1]), v1=True))
            if request.path == managed_identity.PATH:
                return Endpoint(self.identity.issue, recorded=True)
        elif request.method == "POST":
            if request.path == "/score":
                return self._scoring(request, request.headers.get("azureml-model-deployment"))
            if v1 and v1[2] == "score":
                return self._scoring(request, unquote(v1[1]), v1=True)
        return None

    def _deployment(self, name: str | None, v1: bool) -> Deployment:
        """The deployment or v1 service of that name (the default's without one), else 404."""
        name = name or self.default_deployment
        if name not in DEPLOYMENTS:
            kind = "service" if v1 else "deployment"
            raise HTTPError(404, f'{kind} "{name}" not found; known: {_known()}')
        return DEPLOYMENTS[name]

    def _swagger(self, request: Request, name: str | None, v1: bool = False) -> Response:
        """The deployment's swagger, as the inference server answers GET /swagger.json."""
        deployment = self._deployment(name, v1)
        scheme = "https" if self.tls else "http"
        prefix = f"/api/v1/service/{deployment.name}" if v1 else ""
        document = swagger(deployment, request.query.get("version", "2"), scheme, prefix)
        if not v1:  # the online endpoint's deployments, which a v1 service does not have
            document["x-azureml-deployments"] = [
                {"name": d.name, "description": d.description, "features": list(d.features)}
                for d in DEPLOYMENTS.values()
            ]
        return Response(200, json.dumps(document, indent=2).encode(), {"content-type": JSON})

    def _scoring(self, request: Request, name: str | None, v1: bool = False) -> Endpoint:
        headers = {"x-request-id": str(uuid.uuid4())}
        if (name or self.default_deployment) in DEPLOYMENTS:
            headers["azureml-model-deployment"] = name or self.default_deployment
        client_request_id = request.headers.get("x-ms-client-request-id")
        if client_request_id is not None:
            headers["x-ms-client-request-id"] = client_request_id

        def score(request: Request) -> Response:
            self._authenticate(request)
            deployment = self._deployment(name, v1)
            payload = parse_json(request.body)
            try:
                return json_response(200, deployment.score(payload))
            except models.ModelError as error:
                raise HTTPError(424, str(error), MODEL_ERROR_HEADERS) from None

        return Endpoint(score, faulty=True, recorded=True, headers=headers)

    def _authenticate(self, request: Request) -> None:
        """A key or a managed-identity token for Azure ML; the token is never repeated."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise HTTPError(401, "missing credentials: send the header Authorization: Bearer <key>")
        # A list, not a generator: every key is compared, however early one matches.
        valid_key = any([managed_identity.same_secret(token, key) for key in self.keys])
        if not valid_key and not self.identity.accepts(token, ML_RESOURCE):
            raise HTTPError(401, "the key or token in the Authorization header is not valid here")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--key",
            dest="keys",
            metavar="KEY",
            action="append",
            default=[],
            help=f"an accepted API key; repeatable (default: {DEFAULT_KEY})",
        )
        parser.add_argument(
            "--default-deployment",
            choices=sorted(DEPLOYMENTS),
            default=DEFAULT_DEPLOYMENT,
            help="the deployment for requests without an azureml-model-deployment header",
        )
        parser.add_argument(
            "--identity-header",
            default=managed_identity.DEFAULT_HEADER_SECRET,
            help="the X-IDENTITY-HEADER value that /msi/token requires",
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AzureMLSimulator:
        return cls(
            args.host,
            args.port,
            keys=args.keys,
            default_deployment=args.default_deployment,
            request_timeout_ms=args.request_timeout_ms,
            identity_header=args.identity_header,
            latency_ms=args.latency_ms,
        )


def _known() -> str:
    return ", ".join(DEPLOYMENTS)


# The swagger documents, after azureml-inference-server-http's templates.

SWAGGER_VERSIONS = ("2", "2.0", "3", "3.0", "3.1")
HEALTH_CHECK = "Simple health check endpoint to ensure the service is up at any given point."
HEALTHY = "If service is up and running, this response will be returned with the content 'Healthy'"
FAILED = "The service failed to execute due to an error."
RUN = "Run web service's model and get the prediction output"
PAYLOAD = "The input payload for executing the real-time machine learning service."
SCORED = (
    "The service processed the input correctly and provided a result prediction, if applicable."
)
BEARER = {
    "type": "apiKey",
    "name": "Authorization",
    "in": "header",
    "description": "For example: Bearer abc123",
}
ERROR_RESPONSE = {"type": "object", "properties": {"message": {"type": "string"}}}
VERSION_ENUM = {"type": "integer", "enum": [2, 3]}


def swagger(deployment: Deployment, version: str, scheme: str, prefix: str) -> dict[str, Any]:
    """The document for GET /swagger.json?version=...; 404 for a version the server has not."""
    if version not in SWAGGER_VERSIONS:
        raise HTTPError(
            404, f"Swagger version [{version}] is not valid. Supported versions: [2, 3, 3.1]."
        )
    if version.startswith("2"):
        return _swagger2(deployment, scheme, prefix)
    return _openapi3(deployment, "3.1.0" if version == "3.1" else "3.0.3", prefix)


def _info(deployment: Deployment) -> dict[str, str]:
    name = deployment.name  # the inference server's SERVICE_NAME
    return {
        "title": name,
        "description": f"API specification for the Azure Machine Learning service {name}",
        "version": "1.0",
    }


def _swagger2(deployment: Deployment, scheme: str, prefix: str) -> dict[str, Any]:
    failed = {"description": FAILED, "schema": {"$ref": "#/definitions/ErrorResponse"}}
    payload = {
        "name": "serviceInputPayload",
        "in": "body",
        "description": PAYLOAD,
        "schema": {"$ref": "#/definitions/ServiceInput"},
    }
    scored = {"description": SCORED, "schema": {"$ref": "#/definitions/ServiceOutput"}}
    healthy = {"description": HEALTHY, "schema": {"type": "string"}, "examples": {JSON: "Healthy"}}
    version = {"name": "version", "in": "query", "required": False, **VERSION_ENUM}
    specification = {"description": "The Swagger specification.", "schema": {"type": "string"}}
    return {
        "swagger": "2.0",
        "info": _info(deployment),
        "schemes": [scheme],
        "consumes": [JSON],
        "produces": [JSON],
        "securityDefinitions": {"Bearer": BEARER},
        "paths": _paths(
            prefix, {"parameters": [payload]}, healthy, failed, scored, version, specification
        ),
        "definitions": {
            "ServiceInput": deployment.service_input,
            "ServiceOutput": deployment.service_output,
            "ErrorResponse": ERROR_RESPONSE,
        },
    }


def _paths(
    prefix: str,
    body: dict[str, Any],
    healthy: dict[str, Any],
    failed: dict[str, Any],
    scored: dict[str, Any],
    version: dict[str, Any],
    specification: dict[str, Any],
) -> dict[str, Any]:
    """The three operations, as both versions list them; body: how /score takes its
    payload (Swagger 2's body parameter, OpenAPI 3's requestBody)."""
    return {
        f"{prefix}/": {
            "get": {
                "operationId": "ServiceHealthCheck",
                "description": HEALTH_CHECK,
                "responses": {"200": healthy, "default": failed},
            }
        },
        f"{prefix}/score": {
            "post": {
                "operationId": "RunMLService",
                "description": RUN,
                "security": [{"Bearer": []}],
                **body,
                "responses": {"200": scored, "default": failed},
            }
        },
        f"{prefix}/swagger.json": {
            "get": {
                "operationId": "GetSwaggerSpec",
                "description": "Get the Swagger specification.",
                "parameters": [version],
                "responses": {"200": specification, "default": failed},
            }
        },
    }  # fmt: skip


def _content(schema: dict[str, Any], media_type: str = JSON) -> dict[str, Any]:
    return {"content": {media_type: {"schema": schema}}}


def _openapi3(deployment: Deployment, openapi: str, prefix: str) -> dict[str, Any]:
    failed = {"description": FAILED, **_content({"$ref": "#/components/schemas/ErrorResponse"})}
    healthy = {
        "description": HEALTHY,
        **_content({"type": "string", "example": "Healthy"}, "text/plain"),
    }
    payload = {"description": PAYLOAD, **_content({"$ref": "#/components/schemas/ServiceInput"})}
    scored = {"description": SCORED, **_content({"$ref": "#/components/schemas/ServiceOutput"})}
    version = {"name": "version", "in": "query", "required": False, "schema": VERSION_ENUM}
    specification = {
        "description": "The Swagger specification.",
        **_content({"type": "string"}, "text/plain"),
    }
    return {
        "openapi": openapi,
        "info": _info(deployment),
        "security": [{"Bearer": []}],
        "paths": _paths(
            prefix, {"requestBody": payload}, healthy, failed, scored, version, specification
        ),
        "components": {
            "schemas": {
                "ServiceInput": deployment.service_input,
                "ServiceOutput": deployment.service_output,
                "ErrorResponse": ERROR_RESPONSE,
            },
            "securitySchemes": {"Bearer": BEARER},
        },
    }
