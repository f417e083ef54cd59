"""Simulator of Amazon Bedrock Runtime's InvokeModel, with real embeddings and a local generator.

POST /model/<modelId>/invoke (REST-JSON protocol, SigV4 signing name "bedrock") takes the
model's own JSON body and answers the model's JSON with the headers X-Amzn-Bedrock-Input-Token-
Count, X-Amzn-Bedrock-Output-Token-Count and X-Amzn-Bedrock-Invocation-Latency. Models:

    amazon.titan-embed-text-v1      {"inputText"} -> {"embedding": [1536], "inputTextTokenCount"}
    amazon.titan-embed-text-v2:0    {"inputText", "dimensions": 256|512|1024, "normalize",
                                     "embeddingTypes": ["float", "binary"]} -> {"embedding",
                                     "embeddingsByType", "inputTextTokenCount"}
    cohere.embed-english-v3,        {"texts", "input_type", "truncate", "embedding_types"} ->
    cohere.embed-multilingual-v3    {"embeddings": [[1024], ...], "id", "response_type", "texts"}
    anthropic.claude-*              text completions ({"prompt", "max_tokens_to_sample"}; Claude
                                    2 and Instant only) and messages ({"anthropic_version",
                                    "max_tokens", "messages"})

The embeddings are real but they are not Titan's or Cohere's: they are the project's local
multilingual-e5-small (ONNX, 384 dimensions), loaded by the first embedding request and
mapped to the model's dimensions by a fixed random orthonormal projection per model and size,
then L2-normalised. Above 384 dimensions that map is an isometry, so cosine similarities are
exactly e5's; paraphrases are close and unrelated texts are not, as with the real models.

The Claude models are answered by a deterministic local generator whose every reply starts
with "[azure_ai_sim local generator]", so that nobody mistakes it for a language model: it
describes the last user message, and honours max tokens and stop sequences.

Body errors are 400 ValidationException worded as Bedrock words them ("Malformed input
request: #: required key [inputText] not found, please reformat your input and try again.");
an unknown model is "The provided model identifier is invalid.".
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import time
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote

from azure_ai_sim.sim.aws import (
    AWSError,
    AWSSimulator,
    Caller,
    Operation,
)
from azure_ai_sim.sim.e5 import E5, E5_DIMENSIONS, ModelMissing, default_model_dir
from azure_ai_sim.sim.server import Request, Response

INVOKE = re.compile(r"/model/([^/]+)/invoke")
FOUNDATION_MODEL_ARN = re.compile(r"arn:aws[a-z-]*:bedrock:[a-z0-9-]*::foundation-model/(.+)")
INFERENCE_PROFILE = re.compile(r"(?:us|eu|apac|us-gov|global)\.(anthropic\..+)")
TITAN_MAX_TOKENS = 8192
COHERE_MAX_TEXTS = 96
COHERE_MAX_CHARS = 2048
GENERATOR_LABEL = "[azure_ai_sim local generator]"
ANTHROPIC_VERSION = "bedrock-2023-05-31"
TEXT_COMPLETION_MODELS = (
    "anthropic.claude-v2",
    "anthropic.claude-v2:1",
    "anthropic.claude-instant-v1",
)
HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
_TOKEN = re.compile(r"\w+|[^\w\s]")  # the generator's tokens: words and punctuation marks

Invocation = tuple[dict[str, Any], int, int]  # the response body, input and output tokens


def _malformed(detail: str) -> AWSError:
    return AWSError(
        400,
        "ValidationException",
        f"Malformed input request: {detail}, please reformat your input and try again.",
    )


def _json_type(value: Any) -> str:
    """The type names of the JSON schema validator behind Bedrock's messages."""
    if isinstance(value, bool):
        return "Boolean"
    for kind, name in [(str, "String"), (int, "Integer"), (float, "Number"), (list, "JSONArray")]:
        if isinstance(value, kind):
            return name
    return "JSONObject" if isinstance(value, dict) else "Null"


def _members(payload: Any, required: tuple[str, ...], optional: tuple[str, ...]) -> None:
    if not isinstance(payload, dict):
        raise _malformed(f"#: expected type: JSONObject, found: {_json_type(payload)}")
    for key in required:
        if key not in payload:
            raise _malformed(f"#: required key [{key}] not found")
    for key in payload:
        if key not in required + optional:
            raise _malformed(f"#: extraneous key [{key}] is not permitted")


def _typed(payload: dict[str, Any], key: str, expected: str, default: Any = None) -> Any:
    """payload[key] if it has the expected JSON type ("Integer" also rejects booleans)."""
    value = payload.get(key, default)
    if value is not default and _json_type(value) != expected:
        raise _malformed(f"#/{key}: expected type: {expected}, found: {_json_type(value)}")
    return value


def _one_of(payload: dict[str, Any], key: str, allowed: tuple[Any, ...], default: Any) -> Any:
    value = payload.get(key, default)
    if value not in allowed:
        raise _malformed(f"#/{key}: {value} is not a valid enum value")
    return value


# --- embeddings -------------------------------------------------------------------------------


@functools.cache
def projection(model_id: str, dimensions: int) -> Any:
    """[dimensions, 384] with orthonormal columns (or rows, below 384), fixed by a seed that
    is the model id and size, so that each simulated model has its own space."""
    import numpy

    rng = numpy.random.default_rng(zlib.crc32(f"{model_id}/{dimensions}".encode()))
    gaussian = rng.standard_normal((max(dimensions, E5_DIMENSIONS), min(dimensions, E5_DIMENSIONS)))
    q, _ = numpy.linalg.qr(gaussian)
    return q if dimensions >= E5_DIMENSIONS else q.T


def project(vectors: Any, model_id: str, dimensions: int, normalize: bool = True) -> Any:
    """e5 vectors in the model's dimensions, as float64 rows."""
    import numpy

    projected = vectors.astype(numpy.float64) @ projection(model_id, dimensions).T
    if normalize:
        projected /= numpy.linalg.norm(projected, axis=1, keepdims=True)
    return projected


def _floats(rows: Any) -> list[list[float]]:
    return rows.round(7).tolist()


def _titan_input(e5: E5, payload: dict[str, Any]) -> tuple[str, int]:
    text = _typed(payload, "inputText", "String")
    if not text:
        raise _malformed("#/inputText: expected minLength: 1, actual: 0")
    (tokens,) = e5.token_counts([text])
    if tokens > TITAN_MAX_TOKENS:
        raise AWSError(
            400,
            "ValidationException",
            f"400 Bad Request: Too many input tokens. Max input tokens: {TITAN_MAX_TOKENS}, "
            f"request input token count: {tokens} ",
        )
    return text, tokens


def titan_v1(e5: E5, model_id: str, payload: Any) -> Invocation:
    _members(payload, ("inputText",), ())
    text, tokens = _titan_input(e5, payload)
    embedding = _floats(project(e5.embed([f"query: {text}"]), model_id, 1536))[0]
    return {"embedding": embedding, "inputTextTokenCount": tokens}, tokens, 0


def titan_v2(e5: E5, model_id: str, payload: Any) -> Invocation:
    _members(payload, ("inputText",), ("dimensions", "normalize", "embeddingTypes"))
    text, tokens = _titan_input(e5, payload)
    dimensions = _one_of(payload, "dimensions", (256, 512, 1024), 1024)
    normalize = _typed(payload, "normalize", "Boolean", True)
    types = _typed(payload, "embeddingTypes", "JSONArray", ["float"])
    if not types or any(t not in ("float", "binary") for t in types):
        raise _malformed("#/embeddingTypes: expected a non-empty subset of [float, binary]")
    vector = project(e5.embed([f"query: {text}"]), model_id, dimensions, normalize)
    by_type = {
        "float": _floats(vector)[0],
        "binary": [int(v > 0) for v in vector[0]],
    }
    body: dict[str, Any] = {"embeddingsByType": {t: by_type[t] for t in types}}
    if "float" in types:
        body["embedding"] = by_type["float"]
    return {**body, "inputTextTokenCount": tokens}, tokens, 0


def _cohere_types(vectors: Any) -> dict[str, Callable[[], Any]]:
    """Cohere's embedding types of unit vectors: int8 scaled so the largest value is +-127,
    binary the signs packed 8 per byte (unsigned: ubinary, offset by 128: binary)."""
    import numpy

    def int8() -> Any:
        scale = 127 / numpy.abs(vectors).max(axis=1, keepdims=True)
        return numpy.rint(vectors * scale).astype(int)

    def ubinary() -> Any:
        return numpy.packbits(vectors > 0, axis=1).astype(int)

    return {
        "float": lambda: _floats(vectors),
        "int8": lambda: int8().tolist(),
        "uint8": lambda: (int8() + 128).tolist(),
        "ubinary": lambda: ubinary().tolist(),
        "binary": lambda: (ubinary() - 128).tolist(),
    }


COHERE_INPUT_TYPES = ("search_document", "search_query", "classification", "clustering")
COHERE_EMBEDDING_TYPES = ("float", "int8", "uint8", "binary", "ubinary")


def cohere(e5: E5, model_id: str, payload: Any) -> Invocation:
    _members(payload, ("texts", "input_type"), ("truncate", "embedding_types"))
    texts = _typed(payload, "texts", "JSONArray")
    if not 1 <= len(texts) <= COHERE_MAX_TEXTS:
        raise _malformed(f"#/texts: expected 1 to {COHERE_MAX_TEXTS} items, found: {len(texts)}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise _malformed(f"#/texts/{i}: expected type: String, found: {_json_type(text)}")
        if len(text) > COHERE_MAX_CHARS:
            raise _malformed(
                f"#/texts/{i}: expected maxLength: {COHERE_MAX_CHARS}, actual: {len(text)}"
            )
    input_type = _one_of(payload, "input_type", COHERE_INPUT_TYPES, None)
    _one_of(payload, "truncate", ("NONE", "START", "END"), "NONE")
    types = _typed(payload, "embedding_types", "JSONArray")
    if types is not None and (not types or any(t not in COHERE_EMBEDDING_TYPES for t in types)):
        raise _malformed(
            f"#/embedding_types: expected a non-empty subset of {COHERE_EMBEDDING_TYPES}"
        )
    prefix = "passage: " if input_type == "search_document" else "query: "  # e5's conventions
    vectors = project(e5.embed([prefix + text for text in texts]), model_id, 1024)
    tokens = sum(e5.token_counts(texts))
    body: dict[str, Any] = {"id": str(uuid.uuid4()), "texts": texts}
    encodings = _cohere_types(vectors)
    if types is None:
        body.update(embeddings=encodings["float"](), response_type="embeddings_floats")
    else:
        embeddings = {t: encodings[t]() for t in types}
        body.update(embeddings=embeddings, response_type="embeddings_by_type")
    return body, tokens, 0


EMBEDDING_MODELS = {
    "amazon.titan-embed-text-v1": titan_v1,
    "amazon.titan-embed-text-v2:0": titan_v2,
    "cohere.embed-english-v3": cohere,
    "cohere.embed-multilingual-v3": cohere,
}


# --- the local generator behind the Claude models ---------------------------------------------


def count_tokens(text: str) -> int:
    return len(_TOKEN.findall(text))


def generate(
    prompt: str, max_tokens: int, stop_sequences: list[str]
) -> tuple[str, str, str | None]:
    """(text, why it stopped: "end", "stop_sequence" or "max_tokens", the stop sequence)."""
    words = prompt.split()
    excerpt = " ".join(words[:12]) + (" ..." if len(words) > 12 else "")
    text = (
        f"{GENERATOR_LABEL} This is a deterministic reply from a local simulator, not from "
        f'Claude. Your message has {count_tokens(prompt)} tokens and begins: "{excerpt}".'
    )
    found = [(text.find(s), s) for s in stop_sequences if s and s in text]
    if found:
        index, sequence = min(found)
        return text[:index], "stop_sequence", sequence
    tokens = list(_TOKEN.finditer(text))
    if len(tokens) > max_tokens:
        return text[: tokens[max_tokens - 1].end()], "max_tokens", None
    return text, "end", None


def _stop_sequences(payload: dict[str, Any]) -> list[str]:
    sequences = _typed(payload, "stop_sequences", "JSONArray", [])
    if not all(isinstance(s, str) for s in sequences):
        raise _malformed("#/stop_sequences: expected an array of strings")
    return sequences


def _max_tokens(payload: dict[str, Any], key: str) -> int:
    value = _typed(payload, key, "Integer")
    if value < 1:
        raise _malformed(f"#/{key}: {value} is not greater or equal to 1")
    return value


SAMPLING = ("temperature", "top_p", "top_k", "stop_sequences")


def claude_completion(model_id: str, payload: Any) -> Invocation:
    """The legacy text-completion API of Claude 2 and Claude Instant."""
    _members(payload, ("prompt", "max_tokens_to_sample"), (*SAMPLING, "anthropic_version"))
    prompt = _typed(payload, "prompt", "String")
    max_tokens = _max_tokens(payload, "max_tokens_to_sample")
    human = prompt.find(HUMAN)
    if human < 0 or (human > 0 and ASSISTANT in prompt[:human]):
        raise AWSError(
            400,
            "ValidationException",
            f'prompt must start with "{HUMAN}" turn after an optional system prompt',
        )
    if not prompt.rstrip(" ").endswith(ASSISTANT):
        raise AWSError(400, "ValidationException", f'prompt must end with "{ASSISTANT}" turn')
    last_turn = prompt[prompt.rfind(HUMAN) + len(HUMAN) : prompt.rfind(ASSISTANT)].strip()
    text, reason, stop = generate(last_turn, max_tokens, [*_stop_sequences(payload), HUMAN])
    if reason == "end":
        reason, stop = "stop_sequence", HUMAN  # Claude 2 ends its turn at the next "Human:"
    body = {"type": "completion", "completion": " " + text, "stop_reason": reason, "stop": stop}
    return body, count_tokens(prompt), count_tokens(text)


def _text_of(content: Any, where: str) -> str:
    """The text of a message's content: a string, or the text blocks of a list of blocks."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not all(
        isinstance(block, dict) and isinstance(block.get("type"), str) for block in content
    ):
        raise AWSError(400, "ValidationException", f"{where}: expected a string or content blocks")
    texts = [block.get("text") for block in content if block["type"] == "text"]
    if not all(isinstance(text, str) and text for text in texts):
        raise AWSError(
            400, "ValidationException", f"{where}: text content blocks must be non-empty"
        )
    return "\n".join(texts)


def _conversation(messages: list[Any]) -> list[str]:
    """The texts of the messages, checked as Anthropic checks the turns."""
    if not messages:
        raise AWSError(400, "ValidationException", "messages: at least one message is required")
    texts = []
    for i, message in enumerate(messages):
        expected = ("user", "assistant")[i % 2]
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise AWSError(
                400, "ValidationException", f'messages.{i}.role: must be "user" or "assistant"'
            )
        if role != expected:
            raise AWSError(
                400,
                "ValidationException",
                'messages: roles must alternate between "user" and "assistant", and the '
                'first message must use the "user" role',
            )
        texts.append(_text_of(message.get("content"), f"messages.{i}.content"))
    return texts


def claude_messages(model_id: str, payload: Any) -> Invocation:
    """Anthropic's Messages API as Bedrock serves it."""
    optional = (*SAMPLING, "system", "tools", "tool_choice", "metadata", "anthropic_beta")
    _members(payload, ("anthropic_version", "max_tokens", "messages"), optional)
    if payload["anthropic_version"] != ANTHROPIC_VERSION:
        raise _malformed(f"#/anthropic_version: expected {ANTHROPIC_VERSION}")
    max_tokens = _max_tokens(payload, "max_tokens")
    texts = _conversation(_typed(payload, "messages", "JSONArray"))
    system = _text_of(payload.get("system", ""), "system")
    last_user = texts[-1] if len(texts) % 2 else texts[-2] if len(texts) > 1 else ""
    text, reason, stop = generate(last_user, max_tokens, _stop_sequences(payload))
    input_tokens = count_tokens(system) + sum(map(count_tokens, texts))
    output_tokens = count_tokens(text)
    name = re.sub(r"-v\d+(:\d+)?$", "", model_id.removeprefix("anthropic."))
    body = {
        "id": "msg_bdrk_" + uuid.uuid4().hex[:24],
        "type": "message",
        "role": "assistant",
        "model": name,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn" if reason == "end" else reason,
        "stop_sequence": stop,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }
    return body, input_tokens, output_tokens


def claude(model_id: str, payload: Any) -> Invocation:
    if isinstance(payload, dict) and "prompt" in payload and "messages" not in payload:
        if model_id not in TEXT_COMPLETION_MODELS:
            name = model_id.removeprefix("anthropic.")
            raise AWSError(
                400,
                "ValidationException",
                f'"{name}" is not supported on this API. Please use the Messages API instead.',
            )
        return claude_completion(model_id, payload)
    return claude_messages(model_id, payload)


def resolve(model_id: str) -> str:
    """The foundation model's id in an ARN or a cross-region inference profile id."""
    for pattern in (FOUNDATION_MODEL_ARN, INFERENCE_PROFILE):
        match = pattern.fullmatch(model_id)
        if match:
            return match[1]
    return model_id


class BedrockSimulator(AWSSimulator):
    """Amazon Bedrock Runtime InvokeModel: Titan and Cohere embeddings, Claude messages.

    The embeddings come from the local multilingual-e5-small model (model_dir, by default
    the model cache); Claude is answered by a deterministic local generator.
    """

    name = "bedrock"
    signing_name = "bedrock"
    status_codes: ClassVar[dict[int, str]] = {
        **AWSSimulator.status_codes,
        400: "ValidationException",
        403: "AccessDeniedException",
        404: "ResourceNotFoundException",
        408: "ModelTimeoutException",
        424: "ModelErrorException",
        500: "InternalServerException",
        503: "ServiceUnavailableException",
    }

    def __init__(self, *args: Any, model_dir: str | Path | None = None, **kwargs: Any):
        """As AWSSimulator's, and model_dir: where the e5 model files are."""
        super().__init__(*args, **kwargs)
        self.e5 = E5(Path(model_dir) if model_dir else default_model_dir())

    def operation(self, request: Request) -> Operation | None:
        match = INVOKE.fullmatch(request.path)
        if request.method != "POST" or match is None:
            return None
        model_id = unquote(match[1])
        return lambda request, caller: self.invoke(request, caller, model_id)

    def invoke(self, request: Request, caller: Caller, model_id: str) -> Response:
        started = time.monotonic()
        model = resolve(model_id)
        embedder = EMBEDDING_MODELS.get(model)
        if embedder is None and not model.startswith("anthropic.claude-"):
            raise AWSError(400, "ValidationException", "The provided model identifier is invalid.")
        try:
            payload = json.loads(request.body)
        except ValueError:
            raise _malformed("the body is not JSON") from None
        if embedder is not None:
            try:
                body, input_tokens, output_tokens = embedder(self.e5, model, payload)
            except ModelMissing as missing:
                raise AWSError(500, "InternalServerException", str(missing)) from None
        else:
            body, input_tokens, output_tokens = claude(model, payload)
        headers = {
            "content-type": "application/json",
            "x-amzn-bedrock-input-token-count": str(input_tokens),
            "x-amzn-bedrock-output-token-count": str(output_tokens),
            "x-amzn-bedrock-invocation-latency": str(round((time.monotonic() - started) * 1000)),
        }
        return Response(200, json.dumps(body, separators=(",", ":")).encode(), headers)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--model-dir",
            help="multilingual-e5-small's files (default: the model cache, "
            f"{default_model_dir()})",
        )

    @classmethod
    def options(cls, args: argparse.Namespace) -> dict[str, Any]:
        return {**super().options(args), "model_dir": args.model_dir}
