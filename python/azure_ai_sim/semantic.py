"""azure_ai's semantic operators: generate, is_true, extract and rank put a language model
(or a reranker) in a query.

generate, is_true and extract are chat completions of an Azure OpenAI deployment (or, with
azure_openai.api_type 'openai', of any server with OpenAI's API), through azure_openai's
endpoint and credential. Those that need a structured answer ask for it with a JSON schema
(structured outputs) rather than by parsing prose. rank goes to a Cohere reranker
(azure_ml.serverless_ranking_endpoint) when its model is one ("rerank" in its name), and
otherwise asks the chat deployment for each document's relevance.

The operators have no timeout or retry arguments: each request gets three attempts (429s
and 5xx retried, Retry-After honoured) within what statement_timeout leaves, or within an
hour, azure_openai.create_embeddings' default timeout.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from azure_ai_sim import aws, azure_ml, errors, pg, redaction, transport
from azure_ai_sim.azure_ai import SETTINGS, credential, required
from azure_ai_sim.azure_openai import DEFAULT_TIMEOUT_MS, USER_AGENT, Target, target_for

TIMING = aws.Timing(3, 1.0, None, DEFAULT_TIMEOUT_MS / 1000)
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
MAX_DOCUMENTS = 1000  # Cohere's recommended most (its v1 counts 10 chunks a document)
LABEL_TYPES = ("string", "number", "integer", "boolean")
TYPED = re.compile(r"(\w+)\b\s*-?\s*(.*)", re.S)  # "type - description"


@dataclass(frozen=True)
class Chat:
    """One chat completion: the question, and how to read the model's answer."""

    model: str
    system: str | None
    user: str
    schema: dict | None  # response_format's json_schema: {"name", "schema", "strict"}
    read: Callable[[Any], Any]  # the answer (text, or the JSON it holds) -> the result

    def request(self, target: Target) -> transport.Request:
        messages = [{"role": "system", "content": self.system}] if self.system else []
        body: dict = {"messages": [*messages, {"role": "user", "content": self.user}]}
        if self.schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": self.schema}
        return target.request(self.model, "chat/completions", body, 1, MAX_RESPONSE_BYTES)

    def answer(self, response: transport.Response) -> Any:
        """The result the model's answer means; an answer that is not one is an error."""
        try:
            choice = json.loads(response.body)["choices"][0]
            message = choice["message"]
            refusal, content = message.get("refusal"), message.get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise _invalid(response, "a body without a chat completion") from None
        if refusal:
            raise _invalid(response, f"a refusal: {_excerpt(str(refusal))!r}")
        if choice.get("finish_reason") in ("length", "content_filter"):
            raise _invalid(response, f"an answer cut short ({choice['finish_reason']})")
        if not isinstance(content, str):
            raise _invalid(response, "a message without content")
        try:
            if self.schema is None:
                return self.read(content)
            return self.read(json.loads(content, parse_constant=_no_constant))
        except (ValueError, KeyError, TypeError, OverflowError):
            what = (
                "an answer PostgreSQL cannot hold" if self.schema is None
                else "an answer that does not follow the JSON schema"
            )  # fmt: skip
            raise _invalid(response, f"{what}: {_excerpt(content)!r}") from None


def _excerpt(text: str) -> str:
    return redaction.excerpt(text.encode("utf-8", "backslashreplace"), 100)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _text(answer: str) -> str:
    if "\x00" in answer:
        raise ValueError("a NUL character, which PostgreSQL's text cannot hold")
    return answer


def _json(answer: Any) -> str:
    """The answer as jsonb's text; \\u0000, which jsonb refuses, is refused here."""
    text = json.dumps(answer)
    if "\\u0000" in text:
        raise ValueError("a NUL character, which jsonb cannot hold")
    return text


def _object(answer: Any) -> str:
    if not isinstance(answer, dict):
        raise TypeError("not a JSON object")
    return _json(answer)


def _invalid(response: transport.Response, what: str) -> errors.InvalidResponse:
    return errors.InvalidResponse(f"the chat completions endpoint answered {what}",
                                  request_id=response.request_id)  # fmt: skip


def _strict(name: str, properties: dict[str, dict]) -> dict:
    """A strict json_schema of an object with these properties, all of them required."""
    schema = {"type": "object", "properties": properties, "required": list(properties),
              "additionalProperties": False}  # fmt: skip
    return {"name": name, "strict": True, "schema": schema}


def _model(model: str | None) -> str:
    if not model:
        raise errors.InvalidParameter("model must not be NULL or empty")
    return model


# --- the questions -------------------------------------------------------------------


def _generate(prompt: str | None, model: str | None, system_prompt: str | None) -> Chat | None:
    if prompt is None:
        return None
    return Chat(_model(model), system_prompt, prompt, None, _text)


def _generate_json(
    prompt: str | None, json_schema: str | None, model: str | None, system_prompt: str | None
) -> Chat | None:
    if prompt is None:
        return None
    if json_schema is None:
        return Chat(_model(model), system_prompt, prompt, None, lambda text: _json(_text(text)))
    schema = json.loads(json_schema)
    if not isinstance(schema, dict):
        raise errors.InvalidParameter(
            'json_schema must be a JSON object: {"name", "schema", "strict"} as in OpenAI\'s '
            "structured outputs, or a JSON schema"
        )
    if "schema" not in schema:  # a bare JSON schema
        schema = {"schema": schema}
    schema = {"name": "generate_response", **schema}
    return Chat(_model(model), system_prompt, prompt, schema, _json)


IS_TRUE = _strict("is_true", {"result": {
    "type": ["boolean", "null"],
    "description": "whether the statement is true; null if that cannot be determined",
}})  # fmt: skip
IS_TRUE_PROMPT = ("Decide whether the user's statement is true. Answer true or false, or null "
                  "if the statement does not allow a conclusion.")  # fmt: skip


def _result(answer: Any) -> bool | None:
    result = answer["result"]
    if result is not None and not isinstance(result, bool):
        raise TypeError("not a boolean")
    return result


def _is_true(statement: str | None, model: str | None) -> Chat | None:
    if statement is None:
        return None
    return Chat(_model(model), IS_TRUE_PROMPT, statement, IS_TRUE, _result)


EXTRACT_PROMPT = ("Extract the requested data from the user's document. Use null for what "
                  "the document does not say.")  # fmt: skip


def label_property(label: Any, position: int) -> tuple[str, dict]:
    """One of extract's labels as a property of the answer's schema: "name", or "name:"
    then a type (string, number, integer, boolean) and a description, either optional
    ("sentiment: number - 1 (lowest) to 5 (highest)", "rating: 1 to 5"). Without a type,
    a string."""
    if isinstance(label, list):
        raise errors.InvalidParameter("data must be a one-dimensional array of labels")
    if label is None:
        raise errors.InvalidParameter(f"data[{position}] is NULL")
    name, _, rest = (part.strip() for part in label.partition(":"))
    if not name:
        raise errors.InvalidParameter(
            f"data[{position}] has no name: {label!r}",
            hint="A label is 'name', or 'name: type - description'.",
        )
    kind, description = "string", rest
    typed = TYPED.fullmatch(rest)
    if typed and typed[1].lower() in LABEL_TYPES:
        kind, description = typed[1].lower(), typed[2]
    prop: dict = {"type": [kind, "null"]}
    if description:
        prop["description"] = description
    return name, prop


def _extract(document: str | None, data: str | None, model: str | None) -> Chat | None:
    if document is None:
        return None
    labels = json.loads(data) if data is not None else None
    if not labels:
        raise errors.InvalidParameter("data must be an array of at least one label")
    properties: dict[str, dict] = {}
    for position, label in enumerate(labels, 1):
        name, prop = label_property(label, position)
        if name in properties:
            raise errors.InvalidParameter(f"data has the label {name!r} twice")
        properties[name] = prop
    return Chat(_model(model), EXTRACT_PROMPT, document, _strict("extract", properties),
                _object)  # fmt: skip


# --- calls, one row or a batch of rows ---------------------------------------------------


def _chats(question: Callable[..., Chat | None], *columns: list[Any]) -> list:
    """The operator's result for each row: one chat request a row, several in flight."""
    batch = aws.RowBatch(*columns)
    chats = batch.prepare(question, *columns)
    if chats:
        try:
            target: Target | errors.Error = target_for(TIMING)
        except errors.Error as failure:
            target = failure
        for row, chat in chats.items():
            if isinstance(target, errors.Error):
                batch.fail(row, target)
                break
            finish = functools.partial(_finish, batch.results, row, chat)
            batch.add(aws.Exchange(row, chat.request(target), TIMING, finish))
        batch.run()
    return batch.outcome()


def _finish(results: list, row: int, chat: Chat, response: transport.Response) -> None:
    results[row] = chat.answer(response)


@pg.sql_function("azure_ai.generate")
def generate(
    prompt: list[str | None], model: list[str | None], system_prompt: list[str | None]
) -> list[str | None]:
    return _chats(_generate, prompt, model, system_prompt)


@pg.sql_function("azure_ai.generate")
def generate_json(
    prompt: list[str | None], json_schema: list[str | None], model: list[str | None],
    system_prompt: list[str | None],
) -> list[str | None]:  # fmt: skip
    return _chats(_generate_json, prompt, json_schema, model, system_prompt)


@pg.sql_function("azure_ai.is_true")
def is_true(statement: list[str | None], model: list[str | None]) -> list[bool | None]:
    return _chats(_is_true, statement, model)


@pg.sql_function("azure_ai.extract")
def extract(
    document: list[str | None], data: list[str | None], model: list[str | None]
) -> list[str | None]:
    return _chats(_extract, document, data, model)


# --- rank ------------------------------------------------------------------------------

RELEVANCE = _strict("relevance", {"relevance_score": {
    "type": "number",
    "description": "how relevant the document is to the query, from 0 (not at all) to 1 "
                   "(fully)",
}})  # fmt: skip
RELEVANCE_PROMPT = "Rate how relevant the document is to the query."


@pg.sql_function("azure_ai.rank")
def rank(
    query: str | None, documents: list[Any] | None, model: str | None,
    id_shape: list[int | None] | None,
) -> list[tuple[int, int, float]]:  # fmt: skip
    """(place in documents from 1, rank from 1, relevance score), best first. id_shape:
    the dimensions and number of the document_ids (NULL: none given)."""
    count = len(documents or [])
    if id_shape is not None:
        dimensions, ids = id_shape
        if ids is None:
            raise errors.InvalidParameter("document_ids is NULL",
                                          hint="Leave it out to have each document's place as "
                                          "its id.")  # fmt: skip
        if ids and dimensions != 1:
            raise errors.InvalidParameter("document_ids must be a one-dimensional array")
        if ids != count:
            raise errors.InvalidParameter(f"document_ids must have one id per document: {ids} "
                                          f"ids for {count} documents")  # fmt: skip
    if query is None or not documents:
        return []
    if count > MAX_DOCUMENTS:
        raise errors.InvalidParameter(f"rank takes at most {MAX_DOCUMENTS} documents, not "
                                      f"{count}")  # fmt: skip
    for place, document in enumerate(documents, 1):
        if not isinstance(document, str):
            raise errors.InvalidParameter(
                "document_contents must be a one-dimensional array of texts"
                if isinstance(document, list) else f"document_contents[{place}] is NULL"
            )  # fmt: skip
    texts: list[str] = documents
    name = _model(model)
    scores = _rerank(name, query, texts) if "rerank" in name.lower() else _rate(name, query, texts)
    ranked = sorted(range(len(texts)), key=lambda i: -scores[i])  # stable: ties keep order
    return [(i + 1, place, scores[i]) for place, i in enumerate(ranked, 1)]


def _score(answer: Any) -> float:
    return _finite(answer["relevance_score"])


def _finite(value: Any) -> float:
    if isinstance(value, bool) or not math.isfinite(score := float(value)):
        raise ValueError(f"{value!r} is not a score")
    return score


def _rate(model: str, query: str, documents: list[str]) -> list[float]:
    """Each document's relevance, asked of a chat deployment, all requests in flight."""
    target = target_for(TIMING)
    chats = [
        Chat(model, RELEVANCE_PROMPT, f"Query: {query}\nDocument: {document}", RELEVANCE, _score)
        for document in documents
    ]
    outcomes = transport.send_many([chat.request(target) for chat in chats], TIMING.deadline,
                                   TIMING.policy())  # fmt: skip
    scores = []
    for chat, outcome in zip(chats, outcomes, strict=True):
        if isinstance(outcome, errors.Error):
            raise outcome
        assert outcome is not None  # a request not sent comes after a failure, raised
        scores.append(chat.answer(outcome))
    return scores


def _rerank(model: str, query: str, documents: list[str]) -> list[float]:
    """Cohere's rerank (v1 or v2, as the endpoint's route says) of the documents."""
    if pg.in_parallel_mode():
        raise errors.ParallelMode()
    settings = SETTINGS.snapshot()
    endpoint = required(settings, "azure_ml.serverless_ranking_endpoint",
                        "https://<deployment>.<region>.models.ai.azure.com/v2/rerank")  # fmt: skip
    parts = urlsplit(endpoint)
    if not parts.path.rstrip("/").endswith("/rerank"):
        parts = parts._replace(path=f"{parts.path.rstrip('/')}/v2/rerank")
    url = urlunsplit(parts)
    secret, _ = credential(settings, "azure_ml.auth_type",
                           "azure_ml.serverless_ranking_endpoint_key", azure_ml.AUDIENCE,
                           TIMING.deadline)  # fmt: skip
    body = {"model": model, "query": query, "documents": documents}
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
               "Authorization": f"Bearer {secret}"}  # fmt: skip
    request = transport.Request(
        "POST", url, headers, json.dumps(body).encode(), MAX_RESPONSE_BYTES, secrets=(secret,),
        service="azure_ml", endpoint=url, rows=len(documents),
    )  # fmt: skip
    response = transport.send(request, TIMING.deadline(), TIMING.policy())
    try:
        results = json.loads(response.body)["results"]
        scores = {int(item["index"]): _finite(item["relevance_score"]) for item in results}
        return [scores[i] for i in range(len(documents))]
    except (ValueError, KeyError, TypeError, OverflowError):
        raise errors.InvalidResponse(
            f"the ranking endpoint answered a body without a score for each of the "
            f"{len(documents)} documents: {redaction.excerpt(response.body, 100)!r}",
            request_id=response.request_id,
        ) from None
