"""Simulator of Cohere's rerank API, as Cohere serves it and as Azure AI Foundry's serverless
Cohere Rerank deployments do, with real relevance scores.

    POST /v1/rerank   {"query", "documents": [text or {"text", ...}], "model", "top_n",
                      "return_documents", "max_chunks_per_doc", "rank_fields"}
    POST /v2/rerank   {"model", "query", "documents": [text], "top_n", "max_tokens_per_doc",
                      "priority", "return_documents"}
    GET  /msi/token   managed-identity tokens (managed_identity.py)

Both take Authorization: Bearer <key> (or "bearer", as Cohere's curl samples write it), or a
managed-identity token for https://ml.azure.com (an Azure ML serverless endpoint with Entra
auth), and answer {"id", "results": [{"index", "relevance_score"} (and "document" when
return_documents is true)] best first (ties: the lower index first) and cut to top_n,
"meta": {"api_version": {"version": "1" or "2", "is_experimental": false}, "billed_units":
{"search_units": one per 100 documents}}}; errors are Cohere's {"message"}: 400 for a bad
body (the documents are at most 1,000), 401 for a bad key, 422 for a field the version does
not have, as Cohere answers a typo such as top_k.

The scores are real but they are not Cohere's: they are the cosine similarity, clamped to
[0, 1], of the project's multilingual-e5-small embeddings of "query: <query>" and "passage:
<document>" (a document truncated to e5's 512 tokens rather than chunked), so the ordering
is a bi-encoder's, not a cross-encoder's. The response has no model field to say so.
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

from azure_ai_sim.sim import managed_identity
from azure_ai_sim.sim.e5 import ModelMissing
from azure_ai_sim.sim.keyed import KeyedE5Simulator
from azure_ai_sim.sim.server import (
    Endpoint,
    HTTPError,
    Request,
    Response,
    json_object,
    json_response,
)

DEFAULT_KEY = "sim-cohere-key"
AZURE_ML = "https://ml.azure.com"  # the audience of a serverless endpoint's Entra tokens
MAX_DOCUMENTS = 1000
MAX_CHUNKS = 10_000  # v1: documents x max_chunks_per_doc
DEFAULT_MAX_CHUNKS_PER_DOC = 10
DEFAULT_MAX_TOKENS_PER_DOC = 4096
DOCUMENTS_PER_SEARCH_UNIT = 100
V1_FIELDS = frozenset(
    {"model", "query", "documents", "top_n", "return_documents", "max_chunks_per_doc",
     "rank_fields"}
)  # fmt: skip
V2_FIELDS = frozenset(
    {"model", "query", "documents", "top_n", "return_documents", "max_tokens_per_doc",
     "priority"}
)  # fmt: skip


class CohereSimulator(KeyedE5Simulator):
    """Cohere's rerank (/v1/rerank, /v2/rerank) scored with e5; Bearer keys and
    managed-identity tokens for https://ml.azure.com are checked."""

    name = "cohere"
    default_key = DEFAULT_KEY

    def error_response(
        self, status: int, message: str, headers: dict[str, str] | None = None
    ) -> Response:
        """Cohere's error format, {"message": ...}, whatever the status."""
        return json_response(status, {"message": message}, headers)

    def route(self, request: Request) -> Endpoint | None:
        if request.method == "GET" and request.path == managed_identity.PATH:
            return Endpoint(self.identity.issue, recorded=True)
        if request.method != "POST" or request.path not in ("/v1/rerank", "/v2/rerank"):
            return None
        request_id = str(uuid.uuid4())
        version = request.path[2]

        def rerank(request: Request) -> Response:
            self._credentials(request)
            return self._rerank(request, version, request_id)

        return Endpoint(rerank, faulty=True, recorded=True,
                        headers={"x-request-id": request_id})  # fmt: skip

    def _credentials(self, request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not (
            self.has_key(token) or self.identity.accepts(token, AZURE_ML)
        ):
            raise HTTPError(401, "invalid api token")

    def _scores(self, query: str, documents: list[str]) -> list[float]:
        """e5's cosine similarity of the query and each document, clamped to [0, 1]."""
        try:
            similarities = self.e5.similarities(query, documents)
        except ModelMissing as missing:
            raise HTTPError(500, str(missing)) from None
        return [round(min(1.0, max(0.0, float(s))), 6) for s in similarities]

    def _rerank(self, request: Request, version: str, request_id: str) -> Response:
        payload = json_object(request, "invalid request: the body is not valid JSON",
                              "invalid request: the body must be a JSON object")  # fmt: skip
        known = V1_FIELDS if version == "1" else V2_FIELDS
        for name in payload:
            if name not in known:
                raise HTTPError(422, f"unknown field: parameter '{name}' is not a valid field. "
                                     "For proper usage, please refer to "
                                     "https://docs.cohere.com/reference/rerank")  # fmt: skip
        model = payload.get("model")
        if version == "2" and (not isinstance(model, str) or not model):
            raise HTTPError(400, "invalid request: model is required")
        if model is not None and not isinstance(model, str):
            raise HTTPError(400, "invalid request: model must be a string")
        query = payload.get("query")
        if not isinstance(query, str) or not query.strip():
            raise HTTPError(400, "invalid request: query must not be empty")
        documents = payload.get("documents")
        if not isinstance(documents, list) or not documents:
            raise HTTPError(400, "invalid request: list of documents must not be empty")
        if len(documents) > MAX_DOCUMENTS:
            raise HTTPError(400, f"invalid request: too many documents, got {len(documents)} "
                                 f"but the limit is {MAX_DOCUMENTS}")  # fmt: skip
        top_n = _integer(payload, "top_n", len(documents), 1)
        return_documents = payload.get("return_documents", False)
        if not isinstance(return_documents, bool):
            raise HTTPError(400, "invalid request: return_documents must be a boolean")
        if version == "1":
            chunks = _integer(payload, "max_chunks_per_doc", DEFAULT_MAX_CHUNKS_PER_DOC, 1)
            if len(documents) * chunks > MAX_CHUNKS:
                raise HTTPError(
                    400,
                    f"invalid request: documents x max_chunks_per_doc must be at most "
                    f"{MAX_CHUNKS}, got {len(documents)} x {chunks}",
                )
            texts, returned = _v1_documents(documents, payload.get("rank_fields"))
        else:
            _integer(payload, "max_tokens_per_doc", DEFAULT_MAX_TOKENS_PER_DOC, 1)
            _integer(payload, "priority", 0, 0)
            for i, document in enumerate(documents):
                if not isinstance(document, str):
                    raise HTTPError(400, f"invalid request: documents[{i}] must be a string")
            texts, returned = documents, [{"text": text} for text in documents]
        scores = self._scores(query, texts)
        ranked = sorted(range(len(texts)), key=lambda i: (-scores[i], i))[:top_n]
        results = [
            {"index": i, "relevance_score": scores[i],
             **({"document": returned[i]} if return_documents else {})}
            for i in ranked
        ]  # fmt: skip
        body = {
            "id": request_id,
            "results": results,
            "meta": {
                "api_version": {"version": version, "is_experimental": False},
                "billed_units": {
                    "search_units": math.ceil(len(documents) / DOCUMENTS_PER_SEARCH_UNIT)
                },
            },
        }
        return json_response(200, body)


def _integer(payload: dict[str, Any], name: str, default: int, minimum: int) -> int:
    value = payload.get(name, default)
    if type(value) is not int or value < minimum:
        raise HTTPError(400, f"invalid request: {name} must be an integer of at least {minimum}"
                             f", got {json.dumps(value)}")  # fmt: skip
    return value


def _v1_documents(documents: list[Any], rank_fields: Any) -> tuple[list[str], list[Any]]:
    """The text ranked for each document and what return_documents answers for it: a string,
    or an object whose "text" (or rank_fields, in their order, as "field: value" lines) is
    ranked and which is returned whole."""
    if rank_fields is not None and (
        not isinstance(rank_fields, list)
        or not rank_fields
        or not all(isinstance(name, str) for name in rank_fields)
    ):
        raise HTTPError(400, "invalid request: rank_fields must be a non-empty list of strings")
    texts: list[str] = []
    returned: list[Any] = []
    for i, document in enumerate(documents):
        if isinstance(document, str):
            texts.append(document)
            returned.append({"text": document})
        elif isinstance(document, dict):
            if rank_fields is None:
                if not isinstance(document.get("text"), str):
                    raise HTTPError(
                        400,
                        f"invalid request: documents[{i}] must have a string field 'text' "
                        "(or name its fields in rank_fields)",
                    )
                texts.append(document["text"])
            else:
                texts.append("\n".join(
                    f"{name}: {_field_text(document[name])}"
                    for name in rank_fields if name in document
                ))  # fmt: skip
            returned.append(document)
        else:
            raise HTTPError(400, f"invalid request: documents[{i}] must be a string or an "
                                 "object with a 'text' field")  # fmt: skip
    return texts, returned


def _field_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
