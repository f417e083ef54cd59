"""Entry points of the aws_ml extension: SageMaker, Comprehend, Bedrock, and settings."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from azure_ai_sim import aws, errors, pg, redaction
from azure_ai_sim.settings import SettingsTable, http_url, pattern, secret

ROLE_ARN = pattern(
    r"arn:aws[a-z-]*:iam::[0-9]{12}:role/[\w+=,.@/-]{1,512}",
    "an IAM role ARN such as arn:aws:iam::123456789012:role/name",
)
MEDIA_TYPE = pattern(r"[\w.+-]+/[\w.+-]+", "a media type")
SETTINGS = SettingsTable(
    "aws_ml.settings",
    {
        "region": pattern("[a-z]{2}(-[a-z]+)+-[0-9]+", "an AWS region such as us-east-1"),
        "sagemaker.endpoint_url": http_url,
        "comprehend.endpoint_url": http_url,
        "bedrock.endpoint_url": http_url,
        "sts.endpoint_url": http_url,
        "sagemaker.role_arn": ROLE_ARN,
        "comprehend.role_arn": ROLE_ARN,
        "bedrock.role_arn": ROLE_ARN,
        "aws_access_key_id": secret,
        "aws_secret_access_key": secret,
        "aws_session_token": secret,
    },
    families={
        "sagemaker.<endpoint>.content_type": MEDIA_TYPE,
        "sagemaker.<endpoint>.accept": MEDIA_TYPE,
    },
)
# SageMaker's request limit: larger inputs fail here, before anything is sent.
MAX_SAGEMAKER_BODY = 6 * 1024 * 1024
# Comprehend's DetectSentiment limit.
MAX_SENTIMENT_TEXT_BYTES = 5000


@pg.sql_function("aws_ml.set_setting")
def set_setting(key: str | None, value: str | None) -> None:
    SETTINGS.set(key, value)


@pg.sql_function("aws_ml.get_setting")
def get_setting(key: str | None) -> str | None:
    return SETTINGS.get(key)


@pg.sql_function("aws_sagemaker.invoke_endpoint")
def invoke_endpoint(
    endpoint_name: str | None, max_rows_per_batch: int | None, fields: list[str | None]
) -> str | None:
    """One CSV record (RFC 4180, NULL as an empty field) in; the response, without its
    final newline, out. A response of several values on one line comes back as a
    row literal, "(a,b)", so that it casts to a composite type."""
    if not endpoint_name:
        raise errors.InvalidParameter("endpoint_name must not be NULL or empty")
    _check_batch_size(max_rows_per_batch)
    body = csv_record(fields).encode()
    if len(body) > MAX_SAGEMAKER_BODY:
        raise errors.InvalidParameter(
            f"model_input is {len(body)} bytes as CSV; SageMaker takes at most 6 MB"
        )
    path = "/endpoints/" + _path_part(endpoint_name) + "/invocations"
    settings = SETTINGS.snapshot()
    accept = settings.get(f"sagemaker.{endpoint_name}.accept", "text/csv")
    headers = {
        "Content-Type": settings.get(f"sagemaker.{endpoint_name}.content_type", "text/csv"),
        "Accept": accept,
    }
    response = aws.call(aws.SAGEMAKER, settings, path, body, headers)
    text = response.body.decode("utf-8", "replace").removesuffix("\n").removesuffix("\r")
    return sagemaker_output(text) if accept == "text/csv" else text


def _check_batch_size(max_rows_per_batch: int | None) -> None:
    """NULL lets the batch size be chosen, as on Aurora; otherwise at least one row."""
    if max_rows_per_batch is not None and max_rows_per_batch < 1:
        raise errors.InvalidParameter(
            f"max_rows_per_batch must be at least 1, not {max_rows_per_batch}"
        )


def csv_record(fields: list[str | None]) -> str:
    """Fields in order; NULL is an empty field; quoted where RFC 4180 asks for it (a CR
    too: the writer quotes what its line terminator holds)."""
    if len(fields) == 1 and not fields[0]:
        return "\n"  # the writer would send "" to tell an empty record from no record
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(["" if f is None else f for f in fields])
    return buffer.getvalue().removesuffix("\r\n") + "\n"


def sagemaker_output(text: str) -> str:
    """A CSV answer as text; one record of several values as a row literal, "(a,b)", so
    that it casts to a composite type."""
    if "\n" in text or "," not in text:
        return text
    try:
        (record,) = csv.reader(io.StringIO(text))
    except (ValueError, csv.Error):
        return text
    if len(record) < 2:
        return text
    return "(" + ",".join(_row_field(field) for field in record) + ")"


def _row_field(field: str) -> str:
    """A field of a row literal: quoted, with quotes and backslashes doubled."""
    return '"' + field.replace("\\", "\\\\").replace('"', '""') + '"'


@pg.sql_function("aws_comprehend.detect_sentiment")
def detect_sentiment(
    input_text: str | None, language_code: str | None, max_rows_per_batch: int | None
) -> tuple[str, float] | None:
    _check_batch_size(max_rows_per_batch)
    if input_text is None or language_code is None:
        return None
    size = len(input_text.encode())
    if size > MAX_SENTIMENT_TEXT_BYTES:
        raise errors.InvalidParameter(
            f"input_text is {size} bytes; Comprehend's DetectSentiment takes at most 5000"
        )
    body = json.dumps({"Text": input_text, "LanguageCode": language_code}).encode()
    headers = {
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": "Comprehend_20171127.DetectSentiment",
    }
    response = aws.call(aws.COMPREHEND, SETTINGS.snapshot(), "/", body, headers)
    return sentiment_and_score(_json(response.body, "Comprehend"))


SENTIMENTS = ("POSITIVE", "NEGATIVE", "NEUTRAL", "MIXED")


def sentiment_and_score(result: Any) -> tuple[str, float]:
    """DetectSentiment's answer as (sentiment, its score), once it is known to hold them."""
    try:
        sentiment = result["Sentiment"]
        score = result["SentimentScore"][sentiment.capitalize()]
        if sentiment not in SENTIMENTS or type(score) not in (int, float):
            raise TypeError
    except (KeyError, TypeError, AttributeError):
        raise errors.InvalidResponse(
            "Comprehend answered DetectSentiment without a Sentiment of "
            + "/".join(SENTIMENTS)
            + " and its SentimentScore: "
            + repr(redaction.excerpt(json.dumps(result), 100))
        ) from None
    return sentiment, float(score)


@pg.sql_function("aws_bedrock.invoke_model")
def invoke_model(
    model_id: str | None, content_type: str | None, accept_type: str | None,
    model_input: str | None,
) -> str | None:  # fmt: skip
    if model_input is None:
        return None
    return _invoke(model_id, content_type, accept_type, model_input).decode("utf-8", "replace")


@pg.sql_function("aws_bedrock.invoke_model_get_embeddings")
def invoke_model_get_embeddings(
    model_id: str | None, content_type: str | None, json_key: str | None,
    model_input: str | None,
) -> list[float] | None:  # fmt: skip
    if model_input is None:
        return None
    if not json_key:
        raise errors.InvalidParameter("json_key must not be NULL or empty")
    document = _json(_invoke(model_id, content_type, "application/json", model_input), "Bedrock")
    if not isinstance(document, dict) or json_key not in document:
        keys = ", ".join(sorted(document)) if isinstance(document, dict) else "none"
        raise errors.InvalidResponse(
            f'the response has no key "{json_key}"', detail=f"Its keys: {keys}."
        )
    values = document[json_key]
    if values and isinstance(values, list) and isinstance(values[0], list):
        values = values[0]  # one text: Cohere answers a list of embeddings
    if not isinstance(values, list) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    ):
        raise errors.InvalidResponse(f'"{json_key}" of the response is not an array of numbers')
    return [float(v) for v in values]


def _invoke(
    model_id: str | None, content_type: str | None, accept_type: str | None, model_input: str
) -> bytes:
    if not model_id:
        raise errors.InvalidParameter("model_id must not be NULL or empty")
    headers = {
        "Content-Type": content_type or "application/json",
        "Accept": accept_type or "application/json",
    }
    path = "/model/" + _path_part(model_id) + "/invoke"
    return aws.call(aws.BEDROCK, SETTINGS.snapshot(), path, model_input.encode(), headers).body


def _path_part(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


def _json(body: bytes, service: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise errors.InvalidResponse(
            f"{service} answered with a body that is not JSON: "
            + repr(redaction.excerpt(body, 100))
        ) from None
