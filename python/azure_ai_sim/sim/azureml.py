"""Simulator of an Azure Machine Learning online endpoint and its deployments.

It speaks the scoring protocol that azure_ml.invoke calls: POST /score (v2 online endpoints,
deployment chosen by the azureml-model-deployment header) and POST /api/v1/service/<name>/score
(v1 ACI/AKS web services), with Azure's status codes: 401 bad key, 404 unknown deployment,
400 bad payload, 424 when the model raises, 408 past the request timeout. Keys are checked
before the deployment is looked up, so that a caller without a key cannot list deployments.
"""

from __future__ import annotations

import argparse
import json
import re
import ssl
import uuid
from collections.abc import Iterable
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
V1_SCORE = re.compile(r"/api/v1/service/([^/]+)/score")
PAYLOAD_KEYS = ("input_data", "data")
MODEL_ERROR_HEADERS = {
    "ms-azureml-model-error-statuscode": "500",
    "ms-azureml-model-error-reason": "model_error",
}


@dataclass(frozen=True)
class Deployment:
    name: str
    description: str
    model: models.LinearModel


DEPLOYMENTS = {
    d.name: d
    for d in (
        Deployment(
            "Housingprediction",
            "California housing: median house value in units of $100,000 (OLS fit)",
            models.HOUSING,
        ),
        Deployment(
            "diabetes",
            "scikit-learn diabetes dataset: disease progression one year after baseline",
            models.DIABETES,
        ),
    )
}


def parse_rows(body: bytes) -> list[list[float]]:
    """The rows of a scoring request: {"input_data": rows}, {"data": rows}, or MLflow's
    {"input_data": {"columns": [...], "index": [...], "data": rows}}."""
    try:
        payload = json.loads(body)
    except ValueError:  # also bodies that are not UTF-8
        raise HTTPError(400, "the request body is not valid JSON") from None
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
        self._swagger = json.dumps(_swagger(), indent=2).encode()

    def route(self, request: Request) -> Endpoint | None:
        if request.method == "GET":
            if request.path == "/":
                return Endpoint(lambda _: Response(200, b"Healthy", {"content-type": "text/plain"}))
            if request.path == "/swagger.json":
                return Endpoint(
                    lambda _: Response(200, self._swagger, {"content-type": "application/json"})
                )
            if request.path == managed_identity.PATH:
                return Endpoint(self.identity.issue, recorded=True)
        elif request.method == "POST":
            if request.path == "/score":
                return self._scoring(request, request.headers.get("azureml-model-deployment"))
            v1 = V1_SCORE.fullmatch(request.path)
            if v1:
                return self._scoring(request, unquote(v1[1]), v1=True)
        return None

    def _scoring(self, request: Request, name: str | None, v1: bool = False) -> Endpoint:
        name = name or self.default_deployment
        deployment = DEPLOYMENTS.get(name)
        headers = {"x-request-id": str(uuid.uuid4())}
        if deployment is not None:
            headers["azureml-model-deployment"] = name
        client_request_id = request.headers.get("x-ms-client-request-id")
        if client_request_id is not None:
            headers["x-ms-client-request-id"] = client_request_id

        def score(request: Request) -> Response:
            self._authenticate(request)
            if deployment is None:
                kind = "service" if v1 else "deployment"
                raise HTTPError(404, f'{kind} "{name}" not found; known: {_known()}')
            rows = parse_rows(request.body)
            try:
                return json_response(200, deployment.model.predict(rows))
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


def _swagger() -> dict[str, Any]:
    """OpenAPI 2.0, the version Azure ML generates for online endpoints."""
    rows = {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}
    error = {"type": "object", "properties": {"message": {"type": "string"}}}
    responses = {
        "200": {
            "description": "one prediction per row",
            "schema": {"type": "array", "items": {"type": "number"}},
        },
        **{
            status: {"description": description, "schema": error}
            for status, description in [
                ("400", "the payload is not a list of rows of numbers"),
                ("401", "missing or invalid key or token"),
                ("404", "unknown deployment"),
                ("408", "request timed out"),
                ("424", "the model failed; see ms-azureml-model-error-* headers"),
            ]
        },
    }
    deployments = [
        {"name": d.name, "description": d.description, "features": list(d.model.features)}
        for d in DEPLOYMENTS.values()
    ]
    deployment_header = {
        "name": "azureml-model-deployment",
        "in": "header",
        "type": "string",
        "enum": list(DEPLOYMENTS),
        "required": False,
    }
    return {
        "swagger": "2.0",
        "info": {
            "title": "Azure ML online endpoint (azure_ai_sim simulator)",
            "version": "1.0",
            "description": "Deployments: "
            + "; ".join(f"{d['name']} ({len(d['features'])} features)" for d in deployments),
        },
        "x-azureml-deployments": deployments,
        "schemes": ["http"],
        "consumes": ["application/json"],
        "produces": ["application/json"],
        "securityDefinitions": {
            "Bearer": {"type": "apiKey", "name": "Authorization", "in": "header"}
        },
        "security": [{"Bearer": []}],
        "paths": {
            "/score": {
                "post": {
                    "operationId": "RunMLService",
                    "description": "Score rows with the deployment named by the header",
                    "parameters": [
                        deployment_header,
                        {
                            "name": "body",
                            "in": "body",
                            "required": True,
                            "schema": {
                                "type": "object",
                                "required": ["input_data"],
                                "properties": {"input_data": rows},
                            },
                        },
                    ],
                    "responses": responses,
                }
            }
        },
    }
