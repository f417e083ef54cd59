"""Simulator of SageMaker Runtime's InvokeEndpoint, with real models behind its endpoints.

POST /endpoints/<name>/invocations (REST-JSON protocol, SigV4 signing name "sagemaker")
passes the body to the endpoint's model and answers its output with the headers
Content-Type and x-Amzn-Invoked-Production-Variant. The models take what SageMaker's
built-in algorithms take: text/csv, one record per line (RFC 4180, so fields may be quoted),
and answer one line per record with a trailing newline; a record with several outputs
(housing-multi) answers them comma-separated on its line. The regression and classification
endpoints also take application/json {"instances": [[...], ...]} and answer
{"predictions": [...]}. The echo endpoint answers the body it received, byte for byte, so a
test can see exactly the CSV a client sent.

An unknown endpoint is a 400 ValidationError; a model that rejects its input is a 424
ModelError carrying the container's status and message, as SageMaker reports a model's
failure (OriginalStatusCode, OriginalMessage, LogStreamArn).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import unquote

from azure_ai_sim.sim import models
from azure_ai_sim.sim.aws import ACCOUNT_ID, AWSError, AWSSimulator, Caller, Operation
from azure_ai_sim.sim.server import Request, Response

INVOCATIONS = re.compile(r"/endpoints/([^/]+)/invocations")
ENDPOINT_NAME_PATTERN = "^[a-zA-Z0-9](-*[a-zA-Z0-9])*"  # EndpointName in the service model
ENDPOINT_NAME = re.compile(ENDPOINT_NAME_PATTERN)
MAX_ENDPOINT_NAME = 63
VARIANT = "AllTraffic"  # the variant name the console and the SDKs create by default
CSV = "text/csv"
JSON = "application/json"
OCTET_STREAM = "application/octet-stream"  # what SageMaker assumes without a Content-Type

Value = float | int
Rows = list[list[float]]


class _ContainerError(Exception):
    """What a model container answers instead of a prediction: an HTTP status and message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Model:
    """A deployed model: features per record, and one list of outputs per record."""

    description: str
    features: int
    predict: Callable[[Rows], list[list[Value]]]


def _linear(model: models.LinearModel) -> Callable[[Rows], list[list[Value]]]:
    return lambda rows: [[value] for value in model.predict(rows)]


def _housing_multi(rows: Rows) -> list[list[Value]]:
    """Two outputs per record, so that clients see a multi-output CSV line."""
    return [[value, value * 1.1] for value in models.HOUSING.predict(rows)]


@functools.lru_cache(maxsize=1)
def _iris_model() -> Any:
    """Trained on first use: scikit-learn's bundled iris data needs no download."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    data = load_iris()
    return LogisticRegression(max_iter=1000).fit(data.data, data.target)


def _iris(rows: Rows) -> list[list[Value]]:
    return [[int(label)] for label in _iris_model().predict(rows)]


MODELS = {
    "diabetes-regression": Model(
        "scikit-learn diabetes data: disease progression one year after baseline (OLS fit)",
        len(models.DIABETES_FEATURES),
        _linear(models.DIABETES),
    ),
    "housing": Model(
        "California housing: median house value in units of $100,000 (OLS fit)",
        len(models.HOUSING_FEATURES),
        _linear(models.HOUSING),
    ),
    "housing-multi": Model(
        "California housing, two outputs per record: the prediction and 1.1 times it",
        len(models.HOUSING_FEATURES),
        _housing_multi,
    ),
    "iris-classifier": Model(
        "iris species from sepal and petal length and width: class index 0, 1 or 2 "
        "(logistic regression)",
        4,
        _iris,
    ),
}
ECHO = "echo"  # answers the request body as it is
FIELD_COUNT = "field-count"  # answers how many fields each record has: any input works
ENDPOINTS = [*MODELS, ECHO, FIELD_COUNT]


def _media_type(header: str | None) -> str:
    return (header or "").split(";")[0].strip().lower()


def parse_csv(body: bytes) -> Rows:
    """Records of numbers; blank lines are skipped, as SageMaker's built-in algorithms do."""
    try:
        text = body.decode("utf-8-sig")
        records = [r for r in csv.reader(io.StringIO(text, newline=""), strict=True) if r]
    except (UnicodeDecodeError, csv.Error) as error:
        raise _ContainerError(400, f"unable to parse the CSV input: {error}") from None
    return [_numbers(record, f"record {i}") for i, record in enumerate(records, 1)]


def _numbers(values: Sequence[Any], where: str) -> list[float]:
    row = []
    for i, value in enumerate(values, 1):
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            number = math.nan
        if isinstance(value, bool) or not math.isfinite(number):
            raise _ContainerError(400, f"{where}, field {i}: {value!r} is not a finite number")
        row.append(number)
    return row


def parse_json(body: bytes) -> Rows:
    """{"instances": [[...], ...]}, or instances as {"features": [...]} as in linear learner."""
    try:
        instances = json.loads(body)["instances"]
        if not isinstance(instances, list):
            raise TypeError
    except (ValueError, TypeError, KeyError):
        raise _ContainerError(400, 'expected a JSON object {"instances": [[...], ...]}') from None
    rows = []
    for i, instance in enumerate(instances, 1):
        if isinstance(instance, dict):
            instance = instance.get("features")
        if not isinstance(instance, list):
            raise _ContainerError(400, f"instance {i} is not a list of numbers")
        rows.append(_numbers(instance, f"instance {i}"))
    return rows


def format_csv(outputs: list[list[Value]]) -> bytes:
    return "".join(",".join(map(repr, values)) + "\n" for values in outputs).encode()


def format_json(outputs: list[list[Value]]) -> bytes:
    predictions = [values[0] if len(values) == 1 else values for values in outputs]
    return json.dumps({"predictions": predictions}).encode()


PARSERS = {CSV: parse_csv, JSON: parse_json}
FORMATTERS = {CSV: format_csv, JSON: format_json}


def _output_type(accept: str | None, input_type: str) -> str:
    """The first acceptable type of the Accept header; none or */* answers like the input."""
    types = [_media_type(t) for t in (accept or "").split(",") if t.strip()]
    for media_type in types or ["*/*"]:
        if media_type == "*/*":
            return input_type
        if media_type in FORMATTERS:
            return media_type
    raise _ContainerError(406, f"accept type {accept} is not supported; use {CSV} or {JSON}")


def predict(model: Model, request: Request) -> Response:
    """Runs the model as a container would: parse, check, predict, format."""
    input_type = _media_type(request.headers.get("content-type")) or OCTET_STREAM
    parse = PARSERS.get(input_type)
    if parse is None:
        raise _ContainerError(
            415, f"content type {input_type} is not supported; use {CSV} or {JSON}"
        )
    output_type = _output_type(request.headers.get("accept"), input_type)
    rows = parse(request.body)
    if not rows:
        raise _ContainerError(400, "the input has no records")
    for i, row in enumerate(rows, 1):
        if len(row) != model.features:
            raise _ContainerError(
                400, f"record {i} has {len(row)} features, the model expects {model.features}"
            )
    try:
        outputs = model.predict(rows)
    except models.ModelError as error:
        raise _ContainerError(400, str(error)) from None
    return Response(200, FORMATTERS[output_type](outputs), {"content-type": output_type})


def model_error(name: str, region: str, error: _ContainerError) -> AWSError:
    """424 ModelError as SageMaker words it, with the container's status and message."""
    log_group = f"/aws/sagemaker/Endpoints/{name}"
    kind = "client" if error.status < 500 else "server"
    logs = f"https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}"
    message = (
        f'Received {kind} error ({error.status}) from primary with message "{error}". '
        f"See {logs}#logEventViewer:group={log_group} in account {ACCOUNT_ID} "
        "for more information."
    )
    fields = {
        "ErrorCode": f"{kind.upper()}_ERROR_FROM_MODEL",
        "OriginalStatusCode": error.status,
        "OriginalMessage": str(error),
        "LogStreamArn": f"arn:aws:logs:{region}:{ACCOUNT_ID}:log-group:{log_group}",
    }
    return AWSError(424, "ModelError", message, fields)


class SageMakerSimulator(AWSSimulator):
    """SageMaker Runtime InvokeEndpoint: regression, classification and echo endpoints.

    Endpoints: diabetes-regression, housing, housing-multi, iris-classifier and echo (see
    MODELS); every other name is a ValidationError, as an endpoint that does not exist.
    `aliases` serves more names, such as the ones of Aurora's examples, with these.
    """

    aliases: ClassVar[dict[str, str]] = {}

    name = "sagemaker"
    signing_name = "sagemaker"
    message_key = "Message"
    status_codes: ClassVar[dict[int, str]] = {
        **AWSSimulator.status_codes,
        400: "ValidationError",
        424: "ModelError",
        500: "InternalFailure",
        503: "ServiceUnavailable",
        530: "InternalDependencyException",
    }

    def operation(self, request: Request) -> Operation | None:
        match = INVOCATIONS.fullmatch(request.path)
        if request.method != "POST" or match is None:
            return None
        name = unquote(match[1])
        name = self.aliases.get(name, name)
        return lambda request, caller: self.invoke(request, caller, name)

    def invoke(self, request: Request, caller: Caller, name: str) -> Response:
        if len(name) > MAX_ENDPOINT_NAME or not ENDPOINT_NAME.fullmatch(name):
            raise AWSError(
                400,
                "ValidationError",
                f"1 validation error detected: Value '{name}' at 'endpointName' failed to "
                "satisfy constraint: Member must satisfy regular expression pattern: "
                f"{ENDPOINT_NAME_PATTERN} and have length less than or equal to "
                f"{MAX_ENDPOINT_NAME}",
            )
        headers = {"x-amzn-invoked-production-variant": VARIANT}
        if name == ECHO:
            content_type = request.headers.get("content-type") or OCTET_STREAM
            return Response(200, request.body, {"content-type": content_type, **headers})
        if name == FIELD_COUNT:
            counts = [len(record) for record in csv.reader(io.StringIO(request.body.decode()))]
            body = "".join(f"{count}\n" for count in counts).encode()
            return Response(200, body, {"content-type": "text/csv", **headers})
        model = MODELS.get(name)
        if model is None:
            raise AWSError(
                400, "ValidationError", f"Endpoint {name} of account {ACCOUNT_ID} not found."
            )
        try:
            response = predict(model, request)
        except _ContainerError as error:
            raise model_error(name, caller.region, error) from None
        response.headers.update(headers)
        return response
