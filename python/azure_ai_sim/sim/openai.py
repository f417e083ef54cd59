"""Simulator of Azure OpenAI and of an OpenAI-compatible server (OpenAI, Ollama, vLLM,
llama.cpp, Text Embeddings Inference all speak it), with real embeddings.

    POST /openai/deployments/<deployment>/embeddings?api-version=<v>   Azure OpenAI: the
         header api-key, or Authorization: Bearer <a managed-identity token for
         https://cognitiveservices.azure.com>
    POST /v1/embeddings                                                 OpenAI: {"model"};
         Authorization: Bearer <key> when the simulator has keys for it

Both take {"input": text or [texts], "dimensions": n, "encoding_format": "float" or
"base64" (float32 little-endian, as the openai client asks by default)} and answer
{"object": "list", "data": [{"object": "embedding", "index", "embedding"}], "model",
"usage": {"prompt_tokens", "total_tokens"}}, with OpenAI's limits: 2,048 inputs a request,
8,192 tokens an input (400 otherwise, worded as OpenAI words them).

The embeddings are real but they are not OpenAI's: they are the project's multilingual-e5-
small (384 dimensions), and the response's "model" says so. "dimensions" below 384 keeps
the first ones and renormalises, as text-embedding-3 does; above, it is a 400.

    POST /openai/deployments/<deployment>/chat/completions?api-version=<v>   Azure OpenAI
    POST /v1/chat/completions                                                 OpenAI

take {"messages": [{"role", "content"}], "response_format": {"type": "text" | "json_object"
| "json_schema", "json_schema": {"name", "schema", "strict"}}} and answer a chat.completion
whose message is written by a deterministic responder (responder.py), not a language
model, and labelled so in "model". A strict schema is checked as OpenAI checks it (every
object has "additionalProperties": false and requires all its properties).
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from azure_ai_sim.sim import managed_identity
from azure_ai_sim.sim.e5 import E5_DIMENSIONS, ModelMissing
from azure_ai_sim.sim.keyed import KeyedE5Simulator
from azure_ai_sim.sim.responder import Responder
from azure_ai_sim.sim.server import (
    Endpoint,
    HTTPError,
    Request,
    Response,
    json_object,
    json_response,
)

DEFAULT_KEY = "sim-openai-key"
COGNITIVE_SERVICES = "https://cognitiveservices.azure.com"
AZURE_ROUTE = re.compile(r"/openai/deployments/([^/]+)/(embeddings|chat/completions)")
SCHEMA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_INPUTS = 2048
MAX_INPUT_TOKENS = 8192
MODEL_LABEL = "multilingual-e5-small (azure_ai_sim simulator)"
RESPONDER_LABEL = "deterministic responder (azure_ai_sim simulator, not a language model)"


class OpenAISimulator(KeyedE5Simulator):
    """Azure OpenAI's and OpenAI's embeddings and chat completions; keys (api-key, or
    Bearer for /v1) and managed-identity tokens are checked; `open_v1` serves /v1 without
    a key, as a local server does."""

    name = "openai"
    default_key = DEFAULT_KEY

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, open_v1: bool = False,
                 **options: Any):  # fmt: skip
        super().__init__(host, port, **options)
        self.open_v1 = open_v1
        self.responder = Responder(self.e5)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--open-v1", action="store_true", help="serve /v1 without a key, as Ollama does"
        )

    @classmethod
    def options(cls, args: argparse.Namespace) -> dict[str, Any]:
        return {**super().options(args), "open_v1": args.open_v1}

    def error_response(
        self, status: int, message: str, headers: dict[str, str] | None = None
    ) -> Response:
        """OpenAI's (and Azure OpenAI's) error format."""
        kind = "invalid_request_error" if status < 500 else "server_error"
        body = {"error": {"message": message, "type": kind, "param": None, "code": str(status)}}
        return Response(status, json.dumps(body).encode(), {"content-type": "application/json",
                                                            **(headers or {})})  # fmt: skip

    def route(self, request: Request) -> Endpoint | None:
        if request.method == "GET" and request.path == managed_identity.PATH:
            return Endpoint(self.identity.issue, recorded=True)
        if request.method != "POST":
            return None
        headers = {"x-request-id": str(uuid.uuid4())}
        azure = AZURE_ROUTE.fullmatch(request.path)
        if azure is not None:
            deployment, serve = unquote(azure[1]), self._operation(azure[2])

            def azure_call(request: Request) -> Response:
                self._azure_credentials(request)
                if not request.query.get("api-version"):
                    raise HTTPError(404, "Resource not found")  # as Azure answers it
                return serve(request, deployment)

            return Endpoint(azure_call, faulty=True, recorded=True, headers=headers)
        if request.path in ("/v1/embeddings", "/v1/chat/completions"):
            serve = self._operation(request.path.removeprefix("/v1/"))

            def v1_call(request: Request) -> Response:
                self._bearer_key(request)
                return serve(request, None)

            return Endpoint(v1_call, faulty=True, recorded=True, headers=headers)
        return None

    def _operation(self, name: str) -> Callable[[Request, str | None], Response]:
        return self._embeddings if name == "embeddings" else self._chat

    def _azure_credentials(self, request: Request) -> None:
        key = request.headers.get("api-key")
        if key is not None:
            if not self.has_key(key):
                raise HTTPError(401, "Access denied due to invalid subscription key or wrong "
                                     "API endpoint.")  # fmt: skip
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not self.identity.accepts(token.strip(),
                                                                   COGNITIVE_SERVICES):  # fmt: skip
            raise HTTPError(401, "Access denied due to missing or invalid credentials.")

    def _bearer_key(self, request: Request) -> None:
        if self.open_v1:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not self.has_key(token.strip()):
            raise HTTPError(401, "Incorrect API key provided.")

    def _embeddings(self, request: Request, deployment: str | None) -> Response:
        payload = _payload(request, deployment)
        texts = _inputs(payload.get("input"))
        dimensions = payload.get("dimensions", E5_DIMENSIONS)
        if type(dimensions) is not int or not 1 <= dimensions <= E5_DIMENSIONS:
            raise HTTPError(400, f"Invalid value for 'dimensions': {dimensions!r}; this model "
                                 f"supports 1 to {E5_DIMENSIONS}.")  # fmt: skip
        encoding = payload.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise HTTPError(400, f"Invalid value for 'encoding_format': {encoding!r}; supported"
                                 " values are 'float' and 'base64'.")  # fmt: skip
        try:
            tokens = self.e5.token_counts(texts)
            too_long = [i for i, count in enumerate(tokens) if count > MAX_INPUT_TOKENS]
            if too_long:
                raise HTTPError(400, f"This model's maximum context length is {MAX_INPUT_TOKENS}"
                                     f" tokens, however input {too_long[0]} has"
                                     f" {tokens[too_long[0]]} tokens.")  # fmt: skip
            vectors = self.e5.embed_cached([f"query: {text}" for text in texts])
        except ModelMissing as missing:
            raise HTTPError(500, str(missing)) from None
        vectors = vectors[:, :dimensions]
        vectors = vectors / ((vectors**2).sum(axis=1, keepdims=True) ** 0.5)
        if encoding == "base64":  # float32, little-endian, as OpenAI sends them
            encoded: list[Any] = [
                base64.b64encode(vector.astype("<f4").tobytes()).decode() for vector in vectors
            ]
        else:
            encoded = vectors.round(7).tolist()
        body = {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": vector}
                for i, vector in enumerate(encoded)
            ],
            "model": MODEL_LABEL,
            "usage": {"prompt_tokens": sum(tokens), "total_tokens": sum(tokens)},
        }
        return json_response(200, body)

    def _chat(self, request: Request, deployment: str | None) -> Response:
        payload = _payload(request, deployment)
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role")
            in ("system", "developer", "user", "assistant") for m in messages
        ):  # fmt: skip
            raise HTTPError(400, "'messages' must be a non-empty array of objects with a "
                                 "role and a string content.")  # fmt: skip
        schema = _response_schema(payload.get("response_format"))
        asked = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        try:
            answer = self.responder.reply(asked, schema)
            content = answer if schema is None else json.dumps(answer)
            prompt_tokens = sum(self.e5.token_counts([m["content"] for m in messages]))
            completion_tokens = self.e5.token_counts([content])[0]
        except ModelMissing as missing:
            raise HTTPError(500, str(missing)) from None
        body = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": RESPONDER_LABEL,
            "choices": [{
                "index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None, "finish_reason": "stop",
            }],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }  # fmt: skip
        return json_response(200, body)


def _inputs(value: Any) -> list[str]:
    """The texts of "input": one string, or a list of 1 to 2,048 non-empty strings."""
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts:
        raise HTTPError(400, "'input' must be a string or a non-empty array of strings.")
    if len(texts) > MAX_INPUTS:
        raise HTTPError(400, f"Too many inputs: {len(texts)}; at most {MAX_INPUTS} a request.")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text:
            raise HTTPError(400, f"'input[{i}]' must be a non-empty string.")
    return texts


def _payload(request: Request, deployment: str | None) -> dict:
    """The request's JSON object; on OpenAI's wire (no deployment in the path), with a
    model."""
    payload = json_object(request, "We could not parse the JSON body of your request.",
                          "The request body must be a JSON object.")  # fmt: skip
    if deployment is None:
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise HTTPError(400, "you must provide a model parameter")
    return payload


def _response_schema(response_format: Any) -> dict | None:
    """The JSON schema the answer must follow: None for text; an object of anything for
    json_object."""
    kind = (response_format or {"type": "text"}).get("type") if isinstance(
        response_format, (dict, type(None))) else None  # fmt: skip
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object", "properties": {}}
    if kind != "json_schema":
        raise HTTPError(400, "Invalid value for 'response_format.type': supported values are "
                             "'text', 'json_object' and 'json_schema'.")  # fmt: skip
    described = response_format.get("json_schema")
    name = described.get("name") if isinstance(described, dict) else None
    if not isinstance(name, str) or not SCHEMA_NAME.fullmatch(name):
        raise HTTPError(400, "'response_format.json_schema.name' must be 1 to 64 letters, "
                             "digits, underscores or dashes.")  # fmt: skip
    schema = described.get("schema")
    if not isinstance(schema, dict):
        raise HTTPError(400, "'response_format.json_schema.schema' must be an object.")
    if described.get("strict"):
        _check_strict(schema, name, ())
    return schema


def _check_strict(schema: dict, name: str, context: tuple[str, ...]) -> None:
    """Structured outputs' rules for a strict schema, worded as OpenAI words them."""
    where = f"Invalid schema for response_format '{name}': In context=({', '.join(context)}), "
    types = schema.get("type")
    if "object" in (types if isinstance(types, list) else [types]):
        properties = schema.get("properties", {})
        if schema.get("additionalProperties") is not False:
            raise HTTPError(400, where + "'additionalProperties' is required to be supplied "
                                         "and to be false.")  # fmt: skip
        if sorted(schema.get("required", [])) != sorted(properties):
            raise HTTPError(400, where + "'required' is required to be supplied and to be an "
                                         "array including every key in properties.")  # fmt: skip
        for key, sub in properties.items():
            _check_strict(sub, name, (*context, "properties", key))
    if isinstance(schema.get("items"), dict):
        _check_strict(schema["items"], name, (*context, "items"))
