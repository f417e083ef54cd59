"""Calls to AWS services: configuration, credentials and SigV4 signing from botocore, the
HTTP itself through transport.py (so deadlines, retries and cancellation are the same as
for Azure ML).

Configuration comes from botocore's standard chain (AWS_REGION, AWS_ENDPOINT_URL and
AWS_ENDPOINT_URL_<SERVICE>, shared config and credentials files, instance and container
roles); settings in aws_ml.settings override it.
"""

from __future__ import annotations

import bisect
import calendar
import itertools
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlencode
from xml.etree import ElementTree

from azure_ai_sim import errors, pg, redaction, transport

T = TypeVar("T")


@dataclass(frozen=True)
class Service:
    name: str  # as in aws_ml settings: sagemaker, comprehend, bedrock
    signing_name: str
    host: str  # with {region}
    environment: str  # the service-specific endpoint variable of the AWS SDKs


SAGEMAKER = Service(
    "sagemaker", "sagemaker", "runtime.sagemaker.{region}.amazonaws.com",
    "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME",
)  # fmt: skip
COMPREHEND = Service(
    "comprehend", "comprehend", "comprehend.{region}.amazonaws.com", "AWS_ENDPOINT_URL_COMPREHEND"
)
STS = Service("sts", "sts", "sts.{region}.amazonaws.com", "AWS_ENDPOINT_URL_STS")
BEDROCK = Service(
    "bedrock", "bedrock", "bedrock-runtime.{region}.amazonaws.com",
    "AWS_ENDPOINT_URL_BEDROCK_RUNTIME",
)  # fmt: skip

# The paths that name what the usage ledger counts a request under
NAMED_PATH = re.compile(r"/(?:endpoints|model)/([^/]+)/")
DEFAULT_TIMEOUT_SECONDS = 60.0
MAX_RESPONSE_BYTES = 16 * 1024 * 1024

_session: Any = None


def call(
    service: Service,
    settings: dict[str, str],
    path: str,
    body: bytes,
    headers: dict[str, str],
) -> transport.Response:
    """A signed POST to the service; AWS's error code leads the message of a failure."""
    deadline = TIMING.deadline()
    request = client(service, settings, deadline).request(path, body, headers)
    return transport.send(request, deadline, TIMING.policy())


@dataclass(frozen=True)
class Client:
    """What every request to a service shares within one call or one batch of rows: the
    region, the endpoint and the credentials, found once."""

    service: Service
    region: str
    url: str  # the endpoint, without a trailing slash
    credentials: Any

    def request(
        self, path: str, body: bytes, headers: dict[str, str], rows: int = 1
    ) -> transport.Request:
        """A signed POST of body (which carries rows of the caller's) to path."""
        url = self.url + path
        signed = _sign(self.service, self.region, self.credentials, url, body, headers)
        secrets = _secrets(self.credentials, signed)
        named = NAMED_PATH.match(path)  # a SageMaker endpoint's or a Bedrock model's
        return transport.Request(
            "POST", url, signed, body, MAX_RESPONSE_BYTES, secrets=secrets,
            service=self.service.name, endpoint=unquote(named.group(1)) if named else "",
            rows=rows,
        )  # fmt: skip


def client(service: Service, settings: dict[str, str], deadline: transport.Deadline) -> Client:
    """The region, endpoint and credentials of the service (the role's, if one is set)."""
    region = _region(settings)
    url = _endpoint_url(service, settings, region)
    credentials = _credentials(settings, deadline)
    role = settings.get(f"{service.name}.role_arn")
    if role:
        credentials = _assumed(role, credentials, settings, region, deadline)
    return Client(service, region, url, credentials)


def _secrets(credentials: Any, signed: dict[str, str]) -> tuple[str, ...]:
    """What must not be shown of a signed request: the secret key, the session token (AWS
    echoes the canonical request, token included, when a signature does not match) and
    the signature itself. The first two are remembered for every message of the backend."""
    redaction.remember(credentials.secret_key, credentials.token)
    signature = signed.get("Authorization", "").rpartition("Signature=")[2]
    return tuple(filter(None, (credentials.secret_key, credentials.token, signature)))


def _botocore() -> Any:
    global _session
    if _session is None:
        import botocore.session

        _session = botocore.session.get_session()
    return _session


def _region(settings: dict[str, str]) -> str:
    region = (
        settings.get("region")
        or os.environ.get("AWS_REGION")  # the other SDKs' variable; botocore's is below
        or _botocore().get_config_variable("region")  # AWS_DEFAULT_REGION, config files
    )
    if not region:
        raise errors.SettingMissing(
            "no AWS region: set AWS_REGION for the server, or the aws_ml setting region",
            hint="SELECT aws_ml.set_setting('region', 'us-east-1');",
        )
    return region


def _endpoint_url(service: Service, settings: dict[str, str], region: str) -> str:
    configured = (
        settings.get(f"{service.name}.endpoint_url")
        or os.environ.get(service.environment)
        or os.environ.get("AWS_ENDPOINT_URL")
    )
    return (configured or "https://" + service.host.format(region=region)).rstrip("/")


def _credentials(settings: dict[str, str], deadline: transport.Deadline) -> Any:
    """Settings if the user stored keys, else the standard chain (which may ask the
    instance metadata service, so it runs where a cancel can abandon it)."""
    from botocore.credentials import ReadOnlyCredentials

    if settings.get("aws_access_key_id"):
        if not settings.get("aws_secret_access_key"):
            raise errors.SettingMissing(
                "the aws_ml setting aws_access_key_id is set, but aws_secret_access_key is not"
            )
        return ReadOnlyCredentials(
            settings["aws_access_key_id"],
            settings["aws_secret_access_key"],
            settings.get("aws_session_token"),
        )
    found = transport.run_blocking("aws-credentials", _botocore().get_credentials, deadline)
    if found is None:
        raise errors.SettingMissing(
            "no AWS credentials: the server's environment has none, and no aws_ml setting "
            "aws_access_key_id is set"
        )
    return transport.run_blocking("aws-frozen-credentials", found.get_frozen_credentials, deadline)


_assumed_roles: dict[tuple[str, str, str], tuple[Any, float]] = {}
ASSUMED_ROLE_SECONDS = 3600
RENEW_BEFORE_EXPIRY_SECONDS = 300


def _assumed(
    role: str, base: Any, settings: dict[str, str], region: str, deadline: transport.Deadline
) -> Any:
    """The role's temporary credentials from STS AssumeRole, kept until shortly before they
    expire: Aurora, too, calls each service with the IAM role of its feature."""
    from botocore.credentials import ReadOnlyCredentials

    sts = Client(STS, region, _endpoint_url(STS, settings, region), base)
    key = (role, base.access_key, sts.url + "/")
    cached = _assumed_roles.get(key)
    if cached is not None and cached[1] - time.time() > RENEW_BEFORE_EXPIRY_SECONDS:
        return cached[0]
    body = urlencode({
        "Action": "AssumeRole", "Version": "2011-06-15", "RoleArn": role,
        "RoleSessionName": "azure_ai_sim", "DurationSeconds": str(ASSUMED_ROLE_SECONDS),
    }).encode()  # fmt: skip
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    request = sts.request("/", body, headers)
    reply = transport.send(request, deadline, TIMING.policy())
    try:
        found = {
            e.tag.rsplit("}", 1)[-1]: e.text for e in ElementTree.fromstring(reply.body).iter()
        }
        credentials = ReadOnlyCredentials(
            found["AccessKeyId"], found["SecretAccessKey"], found["SessionToken"]
        )
        expires = calendar.timegm(time.strptime(found["Expiration"][:19], "%Y-%m-%dT%H:%M:%S"))
    except (ElementTree.ParseError, KeyError, ValueError, TypeError):
        raise errors.InvalidResponse(
            "STS answered AssumeRole with no credentials in it: "
            + repr(redaction.excerpt(reply.body, 100, request.secrets))
        ) from None
    _assumed_roles[key] = (credentials, expires)
    return credentials


def _sign(
    service: Service, region: str, credentials: Any, url: str, body: bytes,
    headers: dict[str, str],
) -> dict[str, str]:  # fmt: skip
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    request = AWSRequest(method="POST", url=url, data=body, headers=headers)
    SigV4Auth(credentials, service.signing_name, region).add_auth(request)
    return dict(request.headers.items())


# --- batches of rows ---------------------------------------------------------------------
# What the batch forms of every remote function share (azure_ml's too): each row's checks
# in row order, requests sent several at once, and the error of the first failing row.


@dataclass(frozen=True)
class Timing:
    """The retries and the deadline of one row's call; a batch gives each of its requests
    the same, counted from when that request starts."""

    max_attempts: int
    delay_seconds: float
    seconds: float | None  # the call's own limit; None: the statement's, else the default
    default_seconds: float

    def policy(self) -> transport.RetryPolicy:
        return transport.RetryPolicy(self.max_attempts, self.delay_seconds)

    def seconds_allowed(self) -> float:
        """The limit, and never more than what statement_timeout leaves of the statement."""
        left = transport.statement_seconds_left()
        if self.seconds is None:
            return left if left is not None else self.default_seconds
        return min(self.seconds, left) if left is not None else self.seconds

    def deadline(self) -> transport.Deadline:
        return transport.Deadline(self.seconds_allowed())


# Every AWS request: three attempts, as botocore's standard retry mode makes, within a
# minute (botocore's read timeout) or what statement_timeout leaves.
TIMING = Timing(3, 1.0, DEFAULT_TIMEOUT_SECONDS, DEFAULT_TIMEOUT_SECONDS)


@dataclass(eq=False)
class Exchange:
    """One request of a batch of rows, and what its outcome means for them."""

    row: int  # the first row it answers for: requests start in this order
    request: transport.Request
    timing: Timing
    finish: Callable[[transport.Response], None]  # may raise errors.Error
    failed: Callable[[errors.Error], None] | None = None  # None: the request's row fails


# The error of a batch's first failing row, with its arguments: raised by the call the
# batching node makes for that row alone, instead of sending its request again.
_deferred: tuple[tuple, errors.Error] | None = None


# Rows of a request that rows share (SageMaker's multi-record CSV, azure_ml.score's
# payload), when the caller does not say: at most SHARED_REQUEST_ROWS, spread over the
# parallel requests, at least SPREAD_ROWS each.
SHARED_REQUEST_ROWS = 1000
SPREAD_ROWS = 100


def rows_per_request(rows: int) -> int:
    """How many of a group of rows go in one request, so that the group fills the
    parallel requests without making requests of a few rows."""
    spread = -(-rows // transport.max_parallel_requests())
    return min(SHARED_REQUEST_ROWS, max(spread, SPREAD_ROWS))


def chunks(
    rows: Sequence[int], limit: int | Callable[[int], int], sizes: dict[int, int] | None = None,
    max_bytes: float = math.inf,
) -> list[list[int]]:  # fmt: skip
    """The rows, in row order, in runs of no more than any of their rows' limit (the same
    for every row, or limit(row)) rows, and of at most max_bytes of their sizes (a
    single row may have more). A run at a time, by slices: 1,000 rows in microseconds."""
    runs: list[list[int]] = []
    start = 0
    while start < len(rows):
        if isinstance(limit, int):
            end = start + limit
        else:
            end, most = start + 1, limit(rows[start])
            while end < len(rows):
                most = min(most, limit(rows[end]))
                if end - start >= most:
                    break
                end += 1
        run = list(rows[start:end])
        if sizes:
            totals = itertools.accumulate(map(sizes.__getitem__, run))
            run = run[: max(bisect.bisect_right(list(totals), max_bytes), 1)]
        runs.append(run)
        start += len(run)
    return runs


class RowBatch:
    """The rows of one call of a batch form: their results in row order, and the first
    failure. Its error is the one the first failing row's own call would have raised, and
    nothing is sent for the rows after it: the requests go out as they are added, the
    first row first (transport.Sending); once a row has failed, none for a later row
    starts and those in flight are abandoned. Each request gets its row's deadline from
    its own start."""

    def __init__(self, *columns: Sequence[Any] | None):
        """One array per argument of the per-row function, one element per row."""
        global _deferred
        self.columns: list[list[Any]] = [[] for _ in columns]  # per argument, every row
        self.results: list[Any] = []
        self.failure: tuple[int, errors.Error] | None = None
        self.warnings: dict[int, errors.Error] = {}  # rows NULL by throw_on_error false
        self._sending = transport.Sending(stop_on_error=False)
        self._exchanges: dict[int, Exchange] = {}  # by their index in _sending
        self.extend(*columns)
        deferred, _deferred = _deferred, None
        if deferred is not None and deferred[0] == self._row(0):
            self.failure = (0, deferred[1])  # this row's call failed in the batch before

    def extend(self, *columns: Sequence[Any] | None) -> None:
        """More rows: the next part of a batch that comes in parts."""
        lengths = {len(column) for column in columns if column is not None}
        if None in columns or len(lengths) > 1 or len(columns) != len(self.columns):
            raise errors.InvalidParameter(
                "the arguments of a batch form must be arrays with one element per row"
            )
        for mine, more in zip(self.columns, columns, strict=True):
            mine.extend(more)  # type: ignore[arg-type]
        self.results.extend([None] * (lengths.pop() if lengths else 0))

    def _row(self, row: int) -> tuple | None:
        """The arguments of a row, when this call is for that one row only."""
        if len(self.results) != 1:
            return None
        return tuple(column[row] for column in self.columns)

    @property
    def limit(self) -> int:
        """The first row that no longer matters: the failed row, or past the last."""
        return len(self.results) if self.failure is None else self.failure[0]

    def fail(self, row: int, error: errors.Error) -> None:
        if row < self.limit:
            self.failure = (row, error)
            self._sending.stop_after(row)

    def failed(
        self, rows: Sequence[int], failure: errors.Error, throw_on_error: Sequence[bool | None]
    ) -> None:
        """The rows' call failed: a row with throw_on_error false is NULL with a WARNING if
        the service or the network failed it; the first other row fails the batch."""
        for row in rows:
            if throw_on_error[row] is False and isinstance(failure, errors.CallFailed):
                self.warnings[row] = failure
            else:
                self.fail(row, failure)
                return

    def warn(self, source: str) -> None:
        """The WARNINGs of the rows before the first failing one, in row order."""
        for row in sorted(self.warnings):
            if row < self.limit:
                pg.warning(self.warnings[row], source)

    def prepare(self, check: Callable[..., T | None], *columns: Sequence[Any]) -> dict[int, T]:
        """Runs each row's own checks, check(row's element of each column), in row order
        until one raises: that row fails. Returns what the checks returned, by row, but
        None: a row whose result is NULL without a call."""
        prepared: dict[int, T] = {}
        for row, arguments in enumerate(zip(*columns, strict=True)):
            try:
                value = check(*arguments)
            except errors.Error as error:
                self.fail(row, error)
                break
            if value is not None:
                prepared[row] = value
        return prepared

    def add(self, exchange: Exchange) -> None:
        """Queues a request; it starts when send or run is next called."""
        if exchange.row < self.limit:
            index = self._sending.add(
                exchange.request, exchange.timing.deadline, exchange.timing.policy(),
                order=exchange.row,
            )  # fmt: skip
            self._exchanges[index] = exchange

    def send(self) -> None:
        """Starts the requests that may start, and takes the answers that have come,
        without waiting: the batch goes on preparing while they are on their way."""
        self._sending.step()
        self._take()

    def run(self) -> None:
        """Sends what was added, and what their outcomes add, until nothing that matters
        is left."""
        sending = self._sending
        try:
            # an outcome may add requests (a refused batch's rows, one by one)
            while sending.turn(wait=True) or sending.ended:
                self._take()
        finally:
            sending.abandon()

    def abandon(self) -> None:
        """Gives up the requests in flight: the batch will not be asked for its results."""
        self._sending.abandon()

    def _take(self) -> None:
        """What the requests that ended mean for their rows."""
        sending = self._sending
        while sending.ended:
            index = sending.ended.popleft()
            exchange = self._exchanges.pop(index)
            outcome, sending.results[index] = sending.results[index], None
            if exchange.row >= self.limit:
                continue
            try:
                if isinstance(outcome, errors.Error):
                    raise outcome
                assert outcome is not None
                exchange.finish(outcome)
            except errors.Error as error:
                if exchange.failed is None:
                    self.fail(exchange.row, error)
                else:
                    exchange.failed(error)

    def outcome(self) -> list[Any]:
        """The results of the rows before the first failing one. The batching node asks
        for each later row alone when its query needs that row (a LIMIT may never), and
        the failing row's error is kept for that call; if the first row fails, its error
        is raised now: the node needs that row first."""
        global _deferred
        if self.failure is None:
            return self.results
        row, error = self.failure
        if row == 0:
            raise error
        _deferred = (tuple(column[row] for column in self.columns), error)
        return self.results[:row]
