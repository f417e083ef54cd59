"""azure_ml.score: one row's input in, that row's prediction out, as Azure Stream Analytics'
machine-learning functions score a stream. The request takes the shape that the
endpoint's swagger describes (or the azure_ml.request_format setting names), so the caller
passes a row, an array or a JSON object instead of a whole payload; in batch mode the rows
of a batch share requests, and the answers go back to them by position."""

from __future__ import annotations

import functools
import json
import operator
import re
from dataclasses import dataclass
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

    def rows(self, values: list[Any]) -> tuple[list[Any], tuple[int, errors.Error] | None]:
        """row() of each value, up to the first that does not fit: the rows before it,
        and its index and error (None if all fit). A table's rows are all alike, so they
        are checked a column at a time, which is many times faster than row by row."""
        fitting = self._in_bulk(values)
        if fitting is not None:
            return fitting, None
        converted = []
        for index, value in enumerate(values):
            try:
                converted.append(self.row(value))
            except errors.InvalidParameter as error:
                return converted, (index, error)
        return converted, None

    def _in_bulk(self, values: list[Any]) -> list[Any] | None:
        """The rows as sent, if they are all arrays, or all objects of exactly the
        columns, and each typed column holds its type; else None."""
        names = self._names
        kinds = set(map(type, values))
        if kinds == {dict} and self.records and not self.columns:
            return values
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
        elif kinds == {list}:
            if self.columns and set(map(len, values)) != {len(names)}:
                return None
            table = values
        else:
            return None
        for i, _, _, accepted in self._typed:
            if not set(map(type, map(operator.itemgetter(i), table))) <= accepted | {NONE}:
                return None
        return self._as_sent(table)

    def _as_sent(self, table: list[Any]) -> list[Any]:
        """Rows of the columns' values, as the request carries them."""
        if self.records and self.columns:
            return [dict(zip(self._names, values, strict=True)) for values in table]
        return table

    def payload(self, rows: list[Any]) -> bytes:
        if self.format == "web_service":
            document: Any = {"Inputs": {self.input_name: rows}, "GlobalParameters": {}}
        elif self.format == "input_data_split":
            names = [name for name, _ in self.columns]
            split = {"columns": names, "index": list(range(len(rows))), "data": rows}
            document = {"input_data": split}
        else:
            document = {self.format: rows}
        return json.dumps(document, separators=(",", ":")).encode()

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
    return _score(
        [input_data], [timeout_ms], [throw_on_error], [deployment_name], [max_attempts],
        [retry_delay_ms], [max_batch_count],
    )[0]  # fmt: skip


def _score(
    input_data: list[str | None],
    timeout_ms: list[int | None],
    throw_on_error: list[bool | None],
    deployment_name: list[str | None],
    max_attempts: list[int | None],
    retry_delay_ms: list[int | None],
    max_batch_count: list[int | None],
) -> list[str | None]:
    """Many rows scored: the rows of one deployment and the same retry arguments share a
    request, up to max_batch_count rows (NULL: up to 1,000 rows or 1 MB, spread over the
    parallel requests, at least 100 rows each), the requests several at once. A failing
    request fails each of its rows: with throw_on_error false they are NULL with a
    WARNING each; otherwise the first of them raises.

    Each row's checks are a per-row call's, in its order (arguments, swagger, input), and
    the first failing row's error is its own; but they run a group of rows at a time,
    as a table's rows are alike."""
    batch = aws.RowBatch(
        input_data, timeout_ms, throw_on_error, deployment_name, max_attempts, retry_delay_ms,
        max_batch_count,
    )  # fmt: skip
    warnings: dict[int, errors.Error] = {}
    # jsonb's text, all rows parsed at once (one call of the C parser, not one per row)
    parsed = json.loads("[" + ",".join("null" if v is None else v for v in input_data) + "]")

    groups: dict[tuple, list[int]] = {}  # rows by the arguments of their call
    arguments = zip(deployment_name, timeout_ms, max_attempts, retry_delay_ms, strict=True)
    for row, (value, group) in enumerate(zip(input_data, arguments, strict=True)):
        if value is not None:  # NULL without a call
            groups.setdefault(group, []).append(row)
    calls: dict[tuple, azure_ml._Call] = {}
    for group, rows in groups.items():
        try:
            deployment, timeout, attempts, delay = group
            calls[group] = azure_ml._call(input_data[rows[0]], timeout, deployment, attempts, delay)
        except errors.Error as error:
            batch.fail(rows[0], error)
    for row, most in enumerate(max_batch_count):
        if most is not None and most < 1 and input_data[row] is not None:
            batch.fail(
                row, errors.InvalidParameter(f"max_batch_count must be at least 1, not {most}")
            )
            break

    secrets: dict[str | None, str | None] = {}
    shapes: dict[str | None, Shape | errors.Error] = {}
    checked: dict[tuple, tuple[list[int], Shape, list[Any]]] = {}
    for group, call in calls.items():
        rows = [row for row in groups[group] if row < batch.limit]
        if not rows:
            continue
        deployment = call.deployment_name
        if deployment not in shapes:  # once per batch, even when it fails
            try:
                secrets[deployment] = azure_ml._credential(call.settings, call.timing.deadline())
                shapes[deployment] = shape_for(call, secrets[deployment])
            except errors.Error as failure:
                shapes[deployment] = failure
        shape = shapes[deployment]
        if isinstance(shape, errors.Error):
            _failed(batch, warnings, throw_on_error, rows, shape)
            continue
        inputs, bad = shape.rows([parsed[row] for row in rows])
        if bad is not None:
            batch.fail(rows[bad[0]], bad[1])
        checked[group] = (rows[: len(inputs)], shape, inputs)

    def finish(chunk: list[int], shape: Shape, response: transport.Response) -> None:
        predictions = shape.predictions(azure_ml.json_answer(response)[1], len(chunk))
        for row, text in zip(chunk, map(_json, predictions), strict=True):
            batch.results[row] = text

    for group, (rows, shape, inputs) in checked.items():
        call = calls[group]
        by_row = dict(zip(rows, inputs, strict=True))
        rows = [row for row in rows if row < batch.limit]
        most = aws.rows_per_request(len(rows))
        sizes = {row: len(input_data[row]) for row in rows}  # their inputs' JSON text
        limit = functools.partial(_limit, max_batch_count, most)
        for chunk in aws.chunks(rows, limit, sizes, MAX_BATCH_BYTES):
            payload = shape.payload([by_row[row] for row in chunk])
            request = azure_ml._Call(
                payload.decode(), call.deployment_name, call.timing, call.settings, call.endpoint
            ).request(secrets[call.deployment_name])
            exchange = aws.Exchange(
                chunk[0],
                request,
                call.timing,
                lambda answer, c=chunk, s=shape: finish(c, s, answer),
            )
            exchange.failed = functools.partial(_failed, batch, warnings, throw_on_error, chunk)
            batch.add(exchange)
    batch.run()
    for row in sorted(warnings):
        if row < batch.limit:
            pg.warning(warnings[row], "azure_ml.score")
    return batch.outcome()


def _failed(
    batch: aws.RowBatch, warnings: dict[int, errors.Error], throw_on_error: list[bool | None],
    rows: list[int], failure: errors.Error,
) -> None:  # fmt: skip
    """The rows' call failed: a row with throw_on_error false is NULL with a WARNING if
    the service or the network failed it; the first other row fails the batch."""
    for row in rows:
        if throw_on_error[row] is False and isinstance(failure, errors.CallFailed):
            warnings[row] = failure
        else:
            batch.fail(row, failure)
            return


def _json(prediction: Any) -> str:
    """A prediction's JSON text; a float's repr is its JSON (the answer has no NaN:
    json_answer refuses it)."""
    return repr(prediction) if type(prediction) is float else json.dumps(prediction)


# score for many rows: the batch form the batching node calls
score_batch = pg.sql_function("azure_ml.score")(_score)


def _limit(max_batch_count: list[int | None], most: int, row: int) -> int:
    """A row's limit of rows per request: its max_batch_count, else `most`."""
    return max_batch_count[row] or most
