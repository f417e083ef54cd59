"""Entry points of the aws_ml extension: SageMaker, Comprehend, Bedrock, and settings."""

from __future__ import annotations

import csv
import functools
import io
import itertools
import json
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from azure_ai_sim import aws, errors, pg, redaction, transport
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
    record = _record(endpoint_name, max_rows_per_batch, fields)
    response = aws.call(aws.SAGEMAKER, SETTINGS.snapshot(), *record.request)
    return record.result(response.body.decode("utf-8", "replace"))


class _Record(NamedTuple):
    """One row of invoke_endpoint: its request, and how its answer becomes the result (a
    named tuple: a batch makes thousands)."""

    endpoint_name: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def request(self) -> tuple[str, bytes, dict[str, str]]:
        return self.path, self.body, self.headers

    @property
    def csv(self) -> bool:
        """CSV in and out, one record per line: what several rows can share a request in."""
        return self.headers["Content-Type"] == self.headers["Accept"] == "text/csv"

    def result(self, text: str) -> str:
        """The row's result from its answer (its line, in a request of several rows)."""
        text = text.removesuffix("\n").removesuffix("\r")
        return sagemaker_output(text) if self.headers["Accept"] == "text/csv" else text


def _record(
    endpoint_name: str | None,
    max_rows_per_batch: int | None,
    fields: Sequence[str | None],
    endpoint: Callable[[str], tuple[str, dict[str, str]]] | None = None,
) -> _Record:
    """The row's checks, then its request. endpoint: _endpoint, or a cache of it."""
    if not endpoint_name:
        raise errors.InvalidParameter("endpoint_name must not be NULL or empty")
    _check_batch_size(max_rows_per_batch)
    body = csv_record(fields).encode()
    if len(body) > MAX_SAGEMAKER_BODY:
        raise errors.InvalidParameter(
            f"model_input is {len(body)} bytes as CSV; SageMaker takes at most 6 MB"
        )
    return _Record(endpoint_name, *(endpoint or _endpoint)(endpoint_name), body)


def _endpoint(endpoint_name: str) -> tuple[str, dict[str, str]]:
    """The endpoint's path and media types."""
    settings = SETTINGS.snapshot()
    return "/endpoints/" + _path_part(endpoint_name) + "/invocations", {
        "Content-Type": settings.get(f"sagemaker.{endpoint_name}.content_type", "text/csv"),
        "Accept": settings.get(f"sagemaker.{endpoint_name}.accept", "text/csv"),
    }


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
    plain = ["" if f is None else f for f in fields]
    line = ",".join(plain)
    if line.count(",") == len(plain) - 1 and not _NEEDS_QUOTES.search(line):
        return line + "\n"
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(plain)
    return buffer.getvalue().removesuffix("\r\n") + "\n"


_NEEDS_QUOTES = re.compile(r'["\r\n]')  # or a comma inside a field


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
    if _sentiment_input(input_text, language_code, max_rows_per_batch) is None:
        return None
    request = _comprehend("DetectSentiment", {"Text": input_text, "LanguageCode": language_code})
    return _sentiment(aws.call(aws.COMPREHEND, SETTINGS.snapshot(), *request))


def _sentiment_input(
    input_text: str | None, language_code: str | None, max_rows_per_batch: int | None
) -> str | None:
    """The row's checks: its text, or None when the result is NULL without a call."""
    _check_batch_size(max_rows_per_batch)
    if input_text is None or language_code is None:
        return None
    size = len(input_text.encode())
    if size > MAX_SENTIMENT_TEXT_BYTES:
        raise errors.InvalidParameter(
            f"input_text is {size} bytes; Comprehend's DetectSentiment takes at most 5000"
        )
    return input_text


def _comprehend(operation: str, payload: dict[str, Any]) -> tuple[str, bytes, dict[str, str]]:
    """Path, body and headers of a Comprehend request (JSON 1.1 protocol)."""
    headers = {
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": f"Comprehend_20171127.{operation}",
    }
    return "/", json.dumps(payload).encode(), headers


def _sentiment(response: transport.Response) -> tuple[str, float]:
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
    request = _model_request(model_id, content_type, accept_type, model_input)
    if request is None:
        return None
    return _text(aws.call(aws.BEDROCK, SETTINGS.snapshot(), *request))


@pg.sql_function("aws_bedrock.invoke_model_get_embeddings")
def invoke_model_get_embeddings(
    model_id: str | None, content_type: str | None, json_key: str | None,
    model_input: str | None,
) -> list[float] | None:  # fmt: skip
    request = _embeddings_request(model_id, content_type, json_key, model_input)
    if request is None:
        return None
    return _embedding(aws.call(aws.BEDROCK, SETTINGS.snapshot(), *request), json_key or "")


def _text(response: transport.Response) -> str:
    return response.body.decode("utf-8", "replace")


def _embeddings_request(
    model_id: str | None, content_type: str | None, json_key: str | None,
    model_input: str | None,
) -> tuple[str, bytes, dict[str, str]] | None:  # fmt: skip
    """The row's checks, then its request; None when the result is NULL without a call."""
    if model_input is None:
        return None
    if not json_key:
        raise errors.InvalidParameter("json_key must not be NULL or empty")
    return _model_request(model_id, content_type, "application/json", model_input)


def _embedding(response: transport.Response, json_key: str) -> list[float]:
    """The numbers under json_key of the answer."""
    document = _json(response.body, "Bedrock")
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


def _model_request(
    model_id: str | None, content_type: str | None, accept_type: str | None,
    model_input: str | None,
) -> tuple[str, bytes, dict[str, str]] | None:  # fmt: skip
    """The row's checks, then its InvokeModel request; None when the result is NULL
    without a call."""
    if model_input is None:
        return None
    if not model_id:
        raise errors.InvalidParameter("model_id must not be NULL or empty")
    headers = {
        "Content-Type": content_type or "application/json",
        "Accept": accept_type or "application/json",
    }
    path = "/model/" + _path_part(model_id) + "/invoke"
    return path, model_input.encode(), headers


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


# --- batch forms ---------------------------------------------------------------------------
# The batching node (extension/batch.c) calls these with one array per argument of the
# per-row function, one element per row; each returns one result per row, in row order.
# Each row is checked as its own call checks it; the first failing row in row order raises
# its own call's error, and nothing is sent for the rows after it (aws.RowBatch).

# BatchDetectSentiment takes at most 25 documents.
MAX_SENTIMENT_BATCH = 25


@pg.sql_function("aws_comprehend.detect_sentiment")
def detect_sentiment_batch(
    input_text: list[str | None], language_code: list[str | None],
    max_rows_per_batch: list[int | None],
) -> list[tuple[str, float] | None]:  # fmt: skip
    """BatchDetectSentiment: the rows of each language, in row order, 25 to a request
    (Comprehend's limit, and the choice for a NULL max_rows_per_batch), or fewer when a
    row's max_rows_per_batch says so; the requests several at once. A document that the
    answer lists in ErrorList (or leaves out) gets its own DetectSentiment call, so that
    its result or error is exactly its own call's. An endpoint that refuses
    BatchDetectSentiment gets one DetectSentiment per row from then on (see _refused)."""
    batch = aws.RowBatch(input_text, language_code, max_rows_per_batch)
    rows = batch.prepare(_sentiment_input, input_text, language_code, max_rows_per_batch)
    client = _client(batch, aws.COMPREHEND, rows)
    if client is None:
        return batch.outcome()

    def single(row: int) -> aws.Exchange:
        payload = {"Text": input_text[row], "LanguageCode": language_code[row]}
        request = client.request(*_comprehend("DetectSentiment", payload))
        return _exchange(batch, row, request, _sentiment)

    def many(chunk: list[int]) -> aws.Exchange:
        texts = [input_text[row] for row in chunk]
        payload = {"TextList": texts, "LanguageCode": language_code[chunk[0]]}
        request = client.request(*_comprehend("BatchDetectSentiment", payload), rows=len(chunk))
        return aws.Exchange(chunk[0], request, aws.TIMING, lambda answer: spread(chunk, answer))

    def spread(chunk: list[int], response: transport.Response) -> None:
        """Each document's result; the others get their own call."""
        try:
            document = json.loads(response.body)
            items = {item["Index"]: item for item in document["ResultList"]}
        except (ValueError, TypeError, KeyError):
            items = {}
        for index, row in enumerate(chunk):
            try:
                batch.results[row] = sentiment_and_score(items[index])
            except (KeyError, TypeError, errors.Error):
                batch.add(single(row))

    endpoint = ("comprehend", client.url)
    by_language: dict[str, list[int]] = {}
    for row in rows:
        by_language.setdefault(language_code[row], []).append(row)
    for group in by_language.values():
        for chunk in aws.chunks(
            group, functools.partial(_at_most, max_rows_per_batch, MAX_SENTIMENT_BATCH)
        ):
            if len(chunk) == 1 or endpoint in _one_row_per_request:
                for row in chunk:
                    batch.add(single(row))
            else:
                exchange = many(chunk)
                exchange.failed = lambda failure, chunk=chunk: _refused(
                    batch, failure, chunk, single, endpoint,
                    f"aws_comprehend.detect_sentiment: {client.url} does not take "
                    "BatchDetectSentiment",
                )  # fmt: skip
                batch.add(exchange)
    batch.run()
    return batch.outcome()


@pg.sql_function("aws_sagemaker.invoke_endpoint")
def invoke_endpoint_batch(
    endpoint_name: list[str | None], max_rows_per_batch: list[int | None],
    fields: list[str | None], field_counts: list[int],
) -> list[str | None]:  # fmt: skip
    """One multi-record CSV request (a line per row) per run of rows with the same
    endpoint and number of fields, in row order: with a NULL max_rows_per_batch, as many
    rows as fit in SageMaker's 6 MB, at most 1,000, and spread over parallel requests
    (at least 100 rows each) when there are more; otherwise at most max_rows_per_batch
    rows. The answer must have a line per row (a line break inside a quoted field is part
    of its record); line n is row n's result, as its own call would return it. Rows whose
    endpoint is configured for another media type than text/csv, and rows of an empty
    record (which a CSV reader skips), get their own request. An endpoint that refuses
    the multi-record request but answers each row's own gets one request per row from
    then on (see _refused)."""
    if field_counts is None or fields is None or sum(field_counts) != len(fields):
        raise errors.InvalidParameter("field_counts must add up to the number of fields")
    row_fields = _split(fields, field_counts)
    batch = aws.RowBatch(endpoint_name, max_rows_per_batch, row_fields)
    endpoint = functools.cache(_endpoint)  # the rows of a batch share a statement
    records = batch.prepare(
        functools.partial(_record, endpoint=endpoint), endpoint_name, max_rows_per_batch,
        row_fields,
    )  # fmt: skip
    client = _client(batch, aws.SAGEMAKER, records)
    if client is None:
        return batch.outcome()

    def single(row: int) -> aws.Exchange:
        record = records[row]
        request = client.request(*record.request)
        return _exchange(batch, row, request, lambda answer: record.result(_text(answer)))

    def many(chunk: list[int]) -> aws.Exchange:
        first = records[chunk[0]]
        body = b"".join(records[row].body for row in chunk)
        request = client.request(first.path, body, first.headers, rows=len(chunk))
        return aws.Exchange(chunk[0], request, aws.TIMING, lambda answer: spread(chunk, answer))

    def spread(chunk: list[int], response: transport.Response) -> None:
        lines = csv_lines(_text(response), len(chunk))
        if lines is None:
            raise _line_count_mismatch(_text(response), len(chunk))
        for row, line in zip(chunk, lines, strict=True):
            batch.results[row] = records[row].result(line)

    groups: dict[tuple[str, int], list[int]] = {}
    for row, record in records.items():
        endpoint = ("sagemaker", client.url, record.endpoint_name)
        if record.csv and record.body != b"\n" and endpoint not in _one_row_per_request:
            groups.setdefault((record.endpoint_name, field_counts[row]), []).append(row)
        else:
            batch.add(single(row))
    for (name, _), group in groups.items():
        most = functools.partial(_at_most, max_rows_per_batch, aws.rows_per_request(len(group)))
        sizes = {row: len(records[row].body) for row in group}
        for chunk in aws.chunks(group, most, sizes, MAX_SAGEMAKER_BODY):
            if len(chunk) == 1:
                batch.add(single(chunk[0]))
                continue
            exchange = many(chunk)
            exchange.failed = lambda failure, chunk=chunk, name=name: _refused(
                batch, failure, chunk, single, ("sagemaker", client.url, name),
                f'aws_sagemaker.invoke_endpoint: endpoint "{name}" at {client.url} does not '
                "take several CSV records in one request",
            )  # fmt: skip
            batch.add(exchange)
    batch.run()
    return batch.outcome()


def _split(fields: list[str | None], field_counts: list[int]) -> list[tuple[str | None, ...]]:
    """Each row's fields, from all rows' fields in a row and each row's count."""
    if len(set(field_counts)) == 1 and field_counts[0] > 0:  # the usual case, in C
        return list(zip(*[iter(fields)] * field_counts[0], strict=True))
    ends = itertools.accumulate(field_counts)
    return [tuple(fields[end - n : end]) for end, n in zip(ends, field_counts, strict=True)]


def _at_most(max_rows_per_batch: list[int | None], most: int, row: int) -> int:
    """A row's limit of rows per request: its max_rows_per_batch, and at most `most`."""
    return min(most, max_rows_per_batch[row] or most)


@pg.sql_function("aws_bedrock.invoke_model")
def invoke_model_batch(
    model_id: list[str | None], content_type: list[str | None],
    accept_type: list[str | None], model_input: list[str | None],
) -> list[str | None]:  # fmt: skip
    """Each row's own request, several at once (Bedrock has no batch form of
    InvokeModel that answers at once): max_parallel_requests in flight."""
    batch = aws.RowBatch(model_id, content_type, accept_type, model_input)
    requests = batch.prepare(_model_request, model_id, content_type, accept_type, model_input)
    return _each_row(batch, aws.BEDROCK, requests, lambda row, answer: _text(answer))


@pg.sql_function("aws_bedrock.invoke_model_get_embeddings")
def invoke_model_get_embeddings_batch(
    model_id: list[str | None], content_type: list[str | None], json_key: list[str | None],
    model_input: list[str | None],
) -> list[tuple[list[float]] | None]:  # fmt: skip
    """Each row's own request, several at once, as invoke_model_batch; each result an
    aws_ml_internal.embedding, (embedding float8[])."""
    batch = aws.RowBatch(model_id, content_type, json_key, model_input)
    requests = batch.prepare(_embeddings_request, model_id, content_type, json_key, model_input)
    return _each_row(
        batch, aws.BEDROCK, requests, lambda row, answer: (_embedding(answer, json_key[row]),)
    )


def _client(batch: aws.RowBatch, service: aws.Service, rows: dict[int, Any]) -> aws.Client | None:
    """The service's region, endpoint and credentials, which every row's call would find
    first: if that fails, the first row that makes a call fails with it."""
    if not rows:
        return None
    try:
        return aws.client(service, SETTINGS.snapshot(), aws.TIMING.deadline())
    except errors.Error as error:
        batch.fail(min(rows), error)
        return None


def _exchange(
    batch: aws.RowBatch, row: int, request: transport.Request,
    result: Callable[[transport.Response], Any],
) -> aws.Exchange:  # fmt: skip
    """A row's own request: its answer is the row's result, its failure the row's error."""

    def finish(response: transport.Response) -> None:
        batch.results[row] = result(response)

    return aws.Exchange(row, request, aws.TIMING, finish)


def _each_row(
    batch: aws.RowBatch, service: aws.Service,
    requests: dict[int, tuple[str, bytes, dict[str, str]]],
    result: Callable[[int, transport.Response], Any],
) -> list[Any]:  # fmt: skip
    """Every row's own request, several at once; the results in row order."""
    client = _client(batch, service, requests)
    if client is not None:
        for row, request in requests.items():
            answer = functools.partial(result, row)
            batch.add(_exchange(batch, row, client.request(*request), answer))
        batch.run()
    return batch.outcome()


def csv_lines(text: str, count: int) -> list[str] | None:
    """The answer to a request of `count` CSV records as `count` lines, one per record (a
    line break inside a quoted field belongs to its record); None if it has not that many."""
    lines = text.removesuffix("\n").split("\n")
    if len(lines) == count or '"' not in text:
        return lines if len(lines) == count else None
    records: list[str] = []
    pending: str | None = None
    for line in lines:
        pending = line if pending is None else pending + "\n" + line
        if pending.count('"') % 2 == 0:
            records.append(pending)
            pending = None
    return records if pending is None and len(records) == count else None


def _line_count_mismatch(text: str, count: int) -> errors.Error:
    lines = text.removesuffix("\n").count("\n") + 1
    return errors.InvalidResponse(
        f"the endpoint answered {count} CSV records (one per row) with {lines} "
        f"line{'s' if lines != 1 else ''}; it must answer a line per record",
        sqlstate="22000",
        detail="The rows of a batch go to SageMaker as one CSV request of a record per row, "
        "and line n of the answer is row n's result.",
        hint="max_rows_per_batch => 1 sends each row in a request of its own.",
    )


# Endpoints that refused a batch request, by service, URL (and SageMaker endpoint name):
# each row gets its own request there for the rest of the session.
_one_row_per_request: set[tuple[str, ...]] = set()
# The failure of a batch request that says the service lacks the operation: 501, AWS's
# UnknownOperationException, or an emulator's "not implemented" (moto answers 500).
LACKS_OPERATION = re.compile(
    r"^HTTP 501 |UnknownOperation|InvalidAction|not (yet |been )?implemented", re.IGNORECASE
)
# Statuses that say nothing about the rows of the request: the caller's credentials,
# throttling, the service's own trouble.
NOT_THE_ROWS = frozenset({401, 403, 407, *transport.RETRY_STATUSES})


def _refused(
    batch: aws.RowBatch, failure: errors.Error, chunk: list[int],
    single: Callable[[int], aws.Exchange], endpoint: tuple[str, ...], why: str,
) -> None:  # fmt: skip
    """A batch request failed. If the service may have refused it for its rows (a 4xx
    other than for credentials or throttling, or the service lacks the operation), each
    row gets its own request, whose result or error is that row's. When the service
    lacks the operation, or every row's own request then succeeds, the endpoint takes no
    batches: it is remembered for the session, with one NOTICE. Otherwise (a timeout, a
    5xx after retries, ...) the failure is the first row's, as its own call would have
    failed alike."""
    status = re.match(r"HTTP (\d{3}) ", failure.message)
    lacks = LACKS_OPERATION.search(failure.message) is not None
    rows_may_cause = (
        status is not None
        and 400 <= int(status[1]) < 500
        and int(status[1]) not in NOT_THE_ROWS
        and failure.sqlstate != "53400"  # AWS's throttling codes come with 400
    )
    if not (lacks or rows_may_cause):
        batch.fail(chunk[0], failure)
        return

    def refuses_batches() -> None:
        if endpoint not in _one_row_per_request:
            _one_row_per_request.add(endpoint)
            _notice(
                f"{why} ({failure.message}); this session sends each row its own request "
                "there from now on, several at once"
            )

    if lacks:
        refuses_batches()
    waiting = set(chunk)
    for row in chunk:
        exchange = single(row)
        exchange.finish = functools.partial(_then, exchange.finish, waiting, row, refuses_batches)
        batch.add(exchange)


def _then(
    finish: Callable[[transport.Response], None], waiting: set[int], row: int,
    last: Callable[[], None], response: transport.Response,
) -> None:  # fmt: skip
    """finish(response), then last() once every row of `waiting` has succeeded."""
    finish(response)
    waiting.discard(row)
    if not waiting:
        last()


def _notice(message: str) -> None:
    import plpy

    plpy.notice(redaction.scrub(message))
