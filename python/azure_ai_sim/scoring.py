"""azure_ml.score: one row's input in, that row's prediction out, as Azure Stream Analytics'
machine-learning functions score a stream. The request takes the shape that the
endpoint's swagger describes (or the azure_ml.request_format setting names), so the caller
passes a row, an array or a JSON object instead of a whole payload; in batch mode the rows
of a batch share requests, and the answers go back to them by position."""

from __future__ import annotations

import bisect
import functools
import json
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from azure_ai_sim import aws, azure_ml, errors, pg, redaction, transport

FORMATS = ("input_data", "input_data_split", "data", "web_service")
# What a swagger type takes, as JSON decodes it (a bool is no number here).
JSON_TYPES = {"number": {int, float}, "integer": {int}, "string": {str}, "boolean": {bool}}
NONE = type(None)
# A request's inputs when max_batch_count is NULL: at most this much (and as many rows as
# aws.rows_per_request says).
MAX_BATCH_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Shape:
    """A request shape: its format, and the columns the swagger declares (name, type)."""

    format: str
    columns: tuple[tuple[str, str], ...] = ()
    input_name: str = "WebServiceInput0"
    output_name: str = "WebServiceOutput0"
    records: bool = False  # each row an object by column name (pandas "records")

    @functools.cached_property
    def _names(self) -> list[str]:
        return [name for name, _ in self.columns]

    @functools.cached_property
    def _typed(self) -> tuple[tuple[int, str, str, set[type]], ...]:
        """The columns whose values are checked: position, name, type, Python types."""
        return tuple(
            (i, name, kind, JSON_TYPES[kind])
            for i, (name, kind) in enumerate(self.columns)
            if kind in JSON_TYPES
        )

    def row(self, value: Any) -> list[Any] | dict[str, Any]:
        """One row's input, checked against the columns before anything is sent: an
        object maps to them by name, an array by position."""
        names = self._names
        if isinstance(value, dict):
            if not self.columns:
                if self.records:
                    return value
                raise errors.InvalidParameter(
                    "input_data is a row or an object, but the endpoint's swagger names no "
                    "columns to map it to: pass an array"
                )
            missing = [name for name in names if name not in value]
            extra = sorted(set(value) - set(names))
            if missing or extra:
                raise errors.InvalidParameter(
                    f"input_data does not match the endpoint's columns ({', '.join(names)}):"
                    + (f" missing {', '.join(missing)}" if missing else "")
                    + (";" if missing and extra else "")
                    + (f" not a column: {', '.join(extra)}" if extra else "")
                )
            values = [value[name] for name in names]
        elif isinstance(value, list):
            values = value
            if self.columns and len(values) != len(self.columns):
                raise errors.InvalidParameter(
                    f"input_data has {len(values)} values; the endpoint takes "
                    f"{len(self.columns)} ({', '.join(names)})"
                )
        else:
            raise errors.InvalidParameter(
                "input_data must be a row, an array or a JSON object, not a JSON "
                + type(value).__name__.replace("str", "string").replace("NoneType", "null")
            )
        for i, name, kind, accepted in self._typed:
            item = values[i]
            if item is not None and type(item) not in accepted:
                raise errors.InvalidParameter(
                    f"input_data's {name} is {json.dumps(item)}; the endpoint takes a {kind}"
                )
        return self._as_sent([values])[0]

    def rows(self, values: list[Any]) -> tuple[list[Any], tuple[int, errors.Error] | None, bool]:
        """row() of each value, up to the first that does not fit: the rows before it, and
        its index and error (None if all fit); and whether the rows are the values as
        given, so that their JSON text is what the request carries. A table's rows are
        all alike, so they are checked a column at a time, many times faster than row by
        row."""
        fitting = self._in_bulk(values)
        if fitting is not None:
            return fitting[0], None, fitting[1]
        converted = []
        for index, value in enumerate(values):
            try:
                converted.append(self.row(value))
            except errors.InvalidParameter as error:
                return converted, (index, error), False
        return converted, None, False

    def _in_bulk(self, values: list[Any]) -> tuple[list[Any], bool] | None:
        """The rows as sent, and whether they are the values as given, if they are all
        arrays, or all objects of exactly the columns, and each typed column holds its
        type; else None."""
        names = self._names
        kinds = set(map(type, values))
        if kinds == {dict} and self.records and not self.columns:
            return values, True
        if kinds == {dict} and self.columns:
            if set(map(len, values)) != {len(names)}:
                return None
            pick = operator.itemgetter(*names)
            try:
                table = [pick(value) for value in values] if len(names) > 1 else [
                    (value[names[0]],) for value in values
                ]  # fmt: skip
            except KeyError:
                return None
            # objects sent as objects, their keys already in the columns' order
            as_given = self.records and all(map(tuple(names).__eq__, map(tuple, values)))
        elif kinds == {list}:
            if self.columns and set(map(len, values)) != {len(names)}:
                return None
            table, as_given = values, not (self.records and self.columns)
        else:
            return None
        for i, _, _, accepted in self._typed:
            if not set(map(type, map(operator.itemgetter(i), table))) <= accepted | {NONE}:
                return None
        return (values, True) if as_given else (self._as_sent(table), False)

    def _as_sent(self, table: list[Any]) -> list[Any]:
        """Rows of the columns' values, as the request carries them."""
        if self.records and self.columns:
            return [dict(zip(self._names, values, strict=True)) for values in table]
        return table

    def payload(self, rows: list[Any], as_text: bool = False) -> str:
        """The request for rows: their values, or (as_text) each one's JSON text."""
        data = "[" + ",".join(rows) + "]" if as_text else json.dumps(rows, separators=(",", ":"))
        if self.format == "web_service":
            head = '{"Inputs":{' + json.dumps(self.input_name) + ":"
            tail = '},"GlobalParameters":{}}'
        elif self.format == "input_data_split":
            split = {"columns": self._names, "index": list(range(len(rows)))}
            head = '{"input_data":' + json.dumps(split, separators=(",", ":"))[:-1] + ',"data":'
            tail = "}}"
        else:
            head, tail = "{" + json.dumps(self.format) + ":", "}"
        return head + data + tail

    def predictions(self, answer: Any, count: int) -> list[Any]:
        """The answer's prediction for each row of the request, in order."""
        if self.format == "web_service":
            answer = (answer.get("Results") or {}).get(self.output_name) if isinstance(
                answer, dict
            ) else None  # fmt: skip
        if not isinstance(answer, list) or len(answer) != count:
            found = f"{len(answer)} predictions" if isinstance(answer, list) else "no list"
            raise errors.InvalidResponse(
                f"the endpoint answered {found} for {count} rows"
                + (
                    f" (expected Results.{self.output_name})"
                    if self.format == "web_service"
                    else ""
                )
            )
        return answer


def shape_of(document: Any) -> Shape:
    """The request shape a swagger (2.0, or OpenAPI 3) describes for POST .../score."""
    body = _resolved(document, _body_schema(document))
    properties = body.get("properties") or {}
    if "Inputs" in properties:
        inputs = _resolved(document, properties["Inputs"]).get("properties") or {}
        input_name = next(iter(inputs), "WebServiceInput0")
        output_name = next(iter(_results(document)), "WebServiceOutput0")
        rows = _resolved(document, _resolved(document, inputs.get(input_name, {})).get("items"))
        return Shape("web_service", _columns(rows), input_name, output_name, records=True)
    for key in ("input_data", "data"):
        if key in properties:
            schema = _resolved(document, properties[key])
            if "columns" in (schema.get("properties") or {}):  # pandas "split"
                example = schema.get("example") or (body.get("example") or {}).get(key) or {}
                data = _resolved(document, schema["properties"].get("data"))
                kind = _resolved(document, _resolved(document, data.get("items")).get("items"))
                names = example.get("columns") or []
                return Shape("input_data_split", tuple((n, kind.get("type", "")) for n in names))
            rows = _resolved(document, schema.get("items"))
            return Shape(key, _columns(rows), records=rows.get("type") == "object")
    raise errors.InvalidResponse(
        "the endpoint's swagger describes no request shape azure_ml.score knows (input_data, "
        "data, Inputs)",
        hint="Set azure_ml.request_format to one of: " + ", ".join(FORMATS) + ".",
    )


def _resolved(document: Any, schema: Any) -> dict[str, Any]:
    """A schema, its local $ref (#/definitions/..., #/components/schemas/...) followed."""
    for _ in range(10):  # a chain of references; a loop is not followed forever
        if not isinstance(schema, dict) or "$ref" not in schema:
            break
        target: Any = document
        for part in str(schema["$ref"]).removeprefix("#/").split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        schema = target
    return schema if isinstance(schema, dict) else {}


def _body_schema(document: Any) -> dict[str, Any]:
    """The JSON schema of the scoring operation's body."""
    try:
        operation = next(
            path["post"] for name, path in document["paths"].items()
            if name.endswith("/score") and "post" in path
        )  # fmt: skip
        if "requestBody" in operation:  # OpenAPI 3
            return operation["requestBody"]["content"]["application/json"]["schema"]
        return next(p["schema"] for p in operation["parameters"] if p.get("in") == "body")
    except (KeyError, TypeError, StopIteration, AttributeError):
        raise errors.InvalidResponse("the endpoint's swagger has no POST .../score body") from None


def _results(document: Any) -> dict[str, Any]:
    """The named outputs of a designer-style answer (Results), if the swagger says."""
    try:
        operation = next(p["post"] for n, p in document["paths"].items() if n.endswith("/score"))
        ok = operation["responses"]["200"]
        schema = ok.get("schema") or ok["content"]["application/json"]["schema"]
        schema = _resolved(document, schema)
        return _resolved(document, schema["properties"]["Results"]).get("properties") or {}
    except (KeyError, TypeError, StopIteration):
        return {}


def _columns(items: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The columns of a row schema: an object's properties in order, with their types."""
    properties = items.get("properties") or {}
    return tuple((name, (schema or {}).get("type", "")) for name, schema in properties.items())


# --- where the swagger is, and fetching it once -------------------------------------------

_shapes: dict[tuple[str, str | None, str], Shape] = {}


def swagger_url(settings: dict[str, str], endpoint: str) -> str:
    """azure_ml.swagger_uri, or swagger.json beside the scoring URI (as Azure ML serves it)."""
    configured = settings.get("azure_ml.swagger_uri")
    if configured:
        return configured
    if not re.search(r"/score/?$", endpoint.split("?")[0]):
        raise errors.SettingMissing(
            "the scoring endpoint does not end in /score, so its swagger.json is not beside "
            "it, and azure_ml.swagger_uri is not set",
            hint="SELECT azure_ai.set_setting('azure_ml.swagger_uri', '<swagger URI>');",
        )
    return re.sub(r"/score/?$", "/swagger.json", endpoint.split("?")[0])


def shape_for(call: azure_ml._Call, secret: str | None) -> Shape:
    """The request shape for a call: the setting's, or its endpoint's swagger's (fetched
    once per backend, endpoint and deployment)."""
    configured = call.settings.get("azure_ml.request_format")
    if configured:
        return Shape(configured, records=configured == "web_service")
    url = swagger_url(call.settings, call.endpoint)
    key = (url, call.deployment_name, call.endpoint)
    if key not in _shapes:
        request = call.request(secret)
        fetch = transport.Request(
            "GET", url, {k: v for k, v in request.headers.items() if k != "Content-Type"}, b"",
            max_response_bytes=request.max_response_bytes, secrets=request.secrets,
            service=request.service, rows=0,
        )  # fmt: skip
        deadline = call.timing.deadline()
        response = transport.send(fetch, deadline, call.timing.policy())
        try:
            document = json.loads(response.body)
        except ValueError:
            raise errors.InvalidResponse(
                f"{url} is not JSON: " + repr(redaction.excerpt(response.body, 100))
            ) from None
        _shapes[key] = shape_of(document)
    return _shapes[key]


@pg.sql_function("azure_ml.score")
def score(
    input_data: str | None,
    timeout_ms: int | None = None,
    throw_on_error: bool | None = True,
    deployment_name: str | None = None,
    max_attempts: int | None = 1,
    retry_delay_ms: int | None = 1000,
    max_batch_count: int | None = None,
) -> str | None:
    """One row scored: its request in the endpoint's shape, its prediction as JSON."""
    columns = (
        [input_data], [timeout_ms], [throw_on_error], [deployment_name], [max_attempts],
        [retry_delay_ms], [max_batch_count],
    )  # fmt: skip
    return _Scoring(columns, 1).answer()[0]


# The batches that come in parts, by their number (extension/batch.c), with the statement
# each began in: one that an error or a cancel ended early is given up once a batch of
# another statement begins.
_batches: dict[int, tuple[int, _Scoring]] = {}


@pg.sql_function("azure_ml.score")
def score_batch(
    input_data: list[str | None],
    timeout_ms: list[int | None],
    throw_on_error: list[bool | None],
    deployment_name: list[str | None],
    max_attempts: list[int | None],
    retry_delay_ms: list[int | None],
    max_batch_count: list[int | None],
    batch: int,
    batch_rows: int,
    last: bool,
) -> list[str | None]:
    """Many rows scored, a part of a batch at a time: each part's rows are checked, and
    the requests they fill go out at once; the last part answers for all of them."""
    columns = (
        input_data, timeout_ms, throw_on_error, deployment_name, max_attempts, retry_delay_ms,
        max_batch_count,
    )  # fmt: skip
    if batch in _batches:
        _batches[batch][1].extend(columns)
    else:
        statement = pg.statement_id()[0]
        for number, (begun, stale) in list(_batches.items()):
            if begun != statement:
                stale.rows.abandon()
                del _batches[number]
        _batches[batch] = (statement, _Scoring(columns, batch_rows))
    if not last:
        return []
    return _batches.pop(batch)[1].answer()


class _Scoring:
    """The rows of one batch: the rows of one deployment and the same retry arguments
    share a request, up to max_batch_count rows (NULL: up to 1,000 rows or 1 MB, spread
    over the parallel requests as aws.rows_per_request says), the requests several at
    once. A failing request fails each of its rows: with throw_on_error false they are
    NULL with a WARNING each; otherwise the first of them raises.

    Each row's checks are a per-row call's, in its order (arguments, swagger, input), and
    the first failing row's error is its own; but they run a group of rows at a time, as
    a table's rows are alike."""

    def __init__(self, columns: tuple[list[Any], ...], batch_rows: int):
        self.rows = aws.RowBatch(*columns)
        (
            self.input_data, self.timeout_ms, self.throw_on_error, self.deployment_name,
            self.max_attempts, self.retry_delay_ms, self.max_batch_count,
        ) = self.rows.columns  # fmt: skip
        self.most = aws.rows_per_request(batch_rows)
        self.calls: dict[tuple, azure_ml._Call] = {}  # by the group's arguments
        self.secrets: dict[str | None, str | None] = {}
        self.shapes: dict[str | None, Shape | errors.Error] = {}
        self.waiting: dict[tuple, _Waiting] = {}  # checked rows not yet sent, by group
        self._check(0)

    def extend(self, columns: tuple[list[Any], ...]) -> None:
        """The next part's rows."""
        first = len(self.rows.results)
        self.rows.extend(*columns)
        self._check(first)

    def answer(self) -> list[str | None]:
        """Sends what is left, and waits: the results of the rows up to the first that
        failed (aws.RowBatch.outcome)."""
        for group in list(self.waiting):
            self._send(group, everything=True)
        self.rows.run()
        self.rows.warn("azure_ml.score")
        return self.rows.outcome()

    def _check(self, first: int) -> None:
        """Checks the rows from first on, and sends the requests that they fill."""
        rows, input_data = self.rows, self.input_data
        # json's text, all rows parsed at once (one call of the C parser, not one per row)
        texts = input_data[first:]
        if None in texts:
            texts = ["null" if text is None else text for text in texts]
        parsed = json.loads("[" + ",".join(texts) + "]")
        groups = self._groups(first)
        for group, members in groups.items():
            if group not in self.calls:
                try:
                    deployment, timeout, attempts, delay = group
                    self.calls[group] = azure_ml._call(
                        input_data[members[0]], timeout, deployment, attempts, delay
                    )
                except errors.Error as error:
                    rows.fail(members[0], error)
        for row, most in enumerate(self.max_batch_count[first:], first):
            if most is not None and most < 1 and input_data[row] is not None:
                error = errors.InvalidParameter(f"max_batch_count must be at least 1, not {most}")
                rows.fail(row, error)
                break
        for group, members in groups.items():
            members = members[: bisect.bisect_left(members, rows.limit)]
            if not members or group not in self.calls:
                continue
            shape = self._shape(self.calls[group])
            if isinstance(shape, errors.Error):
                rows.failed(members, shape, self.throw_on_error)
                continue
            inputs, bad, as_given = shape.rows([parsed[row - first] for row in members])
            if bad is not None:
                rows.fail(members[bad[0]], bad[1])
            waiting = self.waiting.setdefault(group, _Waiting())
            waiting.rows += members[: len(inputs)]
            waiting.values += inputs
            waiting.as_given += [as_given] * len(inputs)
        for group in list(self.waiting):
            self._send(group, everything=False)
        rows.send()

    def _shape(self, call: azure_ml._Call) -> Shape | errors.Error:
        """The deployment's request shape, found once per batch, even when it fails."""
        deployment = call.deployment_name
        if deployment not in self.shapes:
            try:
                secret = azure_ml._credential(call.settings, call.timing.deadline())
                self.secrets[deployment] = secret
                self.shapes[deployment] = shape_for(call, secret)
            except errors.Error as failure:
                self.shapes[deployment] = failure
        return self.shapes[deployment]

    def _groups(self, first: int) -> dict[tuple, list[int]]:
        """The rows from first on that call, by the arguments of their call."""
        inputs = self.input_data[first:]
        calling = [row for row, value in enumerate(inputs, first) if value is not None]
        if not calling:
            return {}
        columns = [
            column[first:]
            for column in (
                self.deployment_name, self.timeout_ms, self.max_attempts, self.retry_delay_ms
            )
        ]  # fmt: skip
        if all(column.count(column[0]) == len(column) for column in columns):
            return {tuple(column[0] for column in columns): calling}  # a table's rows, mostly
        groups: dict[tuple, list[int]] = {}
        for row in calling:
            groups.setdefault(tuple(column[row - first] for column in columns), []).append(row)
        return groups

    def _send(self, group: tuple, everything: bool) -> None:
        """Requests of a group's waiting rows: those that are full, or all of them."""
        waiting = self.waiting.pop(group)
        waiting.forget(self.rows.limit)
        texts = [self.input_data[row] for row in waiting.rows]
        sizes = None  # their inputs' JSON text, if that may pass MAX_BATCH_BYTES
        if sum(map(len, texts)) > MAX_BATCH_BYTES:
            sizes = dict(zip(waiting.rows, map(len, texts), strict=True))
        limit: int | Callable[[int], int] = self.most
        counts = list(map(self.max_batch_count.__getitem__, waiting.rows))
        if counts.count(None) != len(counts):
            limit = functools.partial(_limit, self.max_batch_count, self.most)
        runs = aws.chunks(waiting.rows, limit, sizes, MAX_BATCH_BYTES)
        if runs and not everything:
            tail = runs[-1]
            if len(tail) < (limit if isinstance(limit, int) else min(map(limit, tail))):
                runs.pop()  # not full: it waits for the next part's rows
                self.waiting[group] = waiting.after(len(waiting.rows) - len(tail))
        call = self.calls[group]
        shape = self.shapes[call.deployment_name]
        assert isinstance(shape, Shape)
        start = 0
        for run in runs:
            end = start + len(run)
            if all(waiting.as_given[start:end]):
                payload = shape.payload(texts[start:end], as_text=True)
            else:
                payload = shape.payload(waiting.values[start:end])
            start = end
            request = azure_ml._Call(
                payload, call.deployment_name, call.timing, call.settings, call.endpoint
            ).request(self.secrets[call.deployment_name], rows=len(run))
            finish = functools.partial(self._finish, run, shape)
            exchange = aws.Exchange(run[0], request, call.timing, finish)
            exchange.failed = functools.partial(
                self.rows.failed, run, throw_on_error=self.throw_on_error
            )
            self.rows.add(exchange)

    def _finish(self, run: list[int], shape: Shape, response: transport.Response) -> None:
        predictions = shape.predictions(azure_ml.json_answer(response)[1], len(run))
        results = self.rows.results
        for row, text in zip(run, map(_json, predictions), strict=True):
            results[row] = text


@dataclass
class _Waiting:
    """A group's rows that are checked and not yet sent, in row order: their values as
    the request carries them, and whether each is the value as given (its JSON text is
    then the request's)."""

    rows: list[int] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)
    as_given: list[bool] = field(default_factory=list)

    def forget(self, limit: int) -> None:
        """Drops the rows from limit on: a row before them failed."""
        keep = bisect.bisect_left(self.rows, limit)
        del self.rows[keep:], self.values[keep:], self.as_given[keep:]

    def after(self, start: int) -> _Waiting:
        return _Waiting(self.rows[start:], self.values[start:], self.as_given[start:])


def _json(prediction: Any) -> str:
    """A prediction's JSON text; a float's repr is its JSON (the answer has no NaN:
    json_answer refuses it)."""
    return repr(prediction) if type(prediction) is float else json.dumps(prediction)


def _limit(max_batch_count: list[int | None], most: int, row: int) -> int:
    """A row's limit of rows per request: its max_batch_count, else `most`."""
    return max_batch_count[row] or most
