"""What the AWS simulators share: SigV4 verification and AWS's error formats.

Stock AWS SDKs must work against a simulator with only their endpoint URL changed, so a
simulator checks the same things AWS does before it serves a call: a SigV4 Authorization
header from a known access key, a credential scope for its own service, a date within 15
minutes, and a signature recomputed here over the canonical request. Failures are 403s with
the codes AWS's front end answers (UnrecognizedClientException, InvalidSignatureException,
MissingAuthenticationTokenException), so a client's handling of bad credentials is exercised.

Errors come in the format of the service's protocol, the one botocore parses for it:

    rest-json (SageMaker Runtime, Bedrock Runtime): header x-amzn-ErrorType: <code>,
        body {"message": ...} plus the error shape's members
    json 1.1 (Comprehend): body {"__type": "<code>", "Message": ...}

Signing is implemented here rather than borrowed from botocore, so that the simulators need
nothing beyond the standard library, and a client's signature is checked against an
independent implementation of the specification.
"""

from __future__ import annotations

import argparse
import calendar
import hashlib
import hmac
import json
import re
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote

from azure_ai_sim.sim.server import Endpoint, HTTPError, Request, Response, Simulator

DEFAULT_ACCESS_KEY = "AKIDSIMULATOR"
DEFAULT_SECRET_KEY = "sim-secret"
ACCOUNT_ID = "123456789012"  # the account every simulated resource belongs to
ALGORITHM = "AWS4-HMAC-SHA256"
MAX_CLOCK_SKEW_SECONDS = 15 * 60
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
REST_JSON = "rest-json"
JSON_11 = "json"  # botocore's name for the JSON 1.0/1.1 RPC protocol
JSON_11_CONTENT_TYPE = "application/x-amz-json-1.1"

BAD_SIGNATURE = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. "
    "Consult the service documentation for details."
)
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=([^,\s]+),\s*SignedHeaders=([^,\s]+),\s*Signature=([0-9a-f]+)"
)


class AWSError(HTTPError):
    """An AWS error: its code, message and any other members of its error shape.

    message_key is the message member's name; None takes the simulator's, which follows the
    service model ("Message" for SageMaker and Comprehend shapes, "message" for Bedrock).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: dict[str, Any] | None = None,
        *,
        message_key: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(status, message, headers)
        self.code = code
        self.fields = fields or {}
        self.message_key = message_key


def _front_end_error(status: int, code: str, message: str) -> AWSError:
    """Errors of AWS's shared front end, which spells the member "message" in every service."""
    return AWSError(status, code, message, message_key="message")


@dataclass(frozen=True)
class Caller:
    """Who signed a request, and for which region: what an operation may need of it."""

    access_key: str
    region: str


@dataclass(frozen=True)
class _Authorization:
    access_key: str
    date: str  # YYYYMMDD
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


def _parse_authorization(header: str) -> _Authorization:
    match = _AUTHORIZATION.fullmatch(header.strip())
    if match is None:
        raise _front_end_error(
            400,
            "IncompleteSignatureException",
            "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' "
            f"parameters, {ALGORITHM} as the algorithm, and a comma between parameters.",
        )
    credential, signed_headers, signature = match.groups()
    scope = credential.split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        raise _front_end_error(
            400,
            "IncompleteSignatureException",
            f"Credential should be <access key>/<date>/<region>/<service>/aws4_request, "
            f"not {credential}",
        )
    return _Authorization(*scope[:4], tuple(signed_headers.split(";")), signature)


def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    """The key derived from the secret for one day, region and service."""
    key = ("AWS4" + secret_key).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def _normalized_path(path: str) -> str:
    """The path without empty, "." and ".." segments, as botocore normalises it."""
    segments: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment not in ("", "."):
            segments.append(segment)
    trailing = "/" if path.endswith("/") and segments else ""
    return "/" + "/".join(segments) + trailing


def canonical_request(request: Request, signed_headers: tuple[str, ...], payload: str) -> str:
    """SigV4's canonical request. The path is encoded once more, as for every service but S3:
    a model id's ":" arrives as %3A and is signed as %253A."""
    query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(request.query.items())
    )
    headers = "".join(
        f"{name}:{','.join(' '.join(v.split()) for v in request.headers.get_all(name, []))}\n"
        for name in signed_headers
    )
    path = quote(_normalized_path(request.path), safe="/~")
    return "\n".join([request.method, path, query, headers, ";".join(signed_headers), payload])


def _payload_hash(request: Request) -> str:
    actual = hashlib.sha256(request.body).hexdigest()
    declared = request.headers.get("x-amz-content-sha256")
    if declared is None:
        return actual
    if declared not in (actual, UNSIGNED_PAYLOAD):
        raise _front_end_error(
            400,
            "InvalidSignatureException",
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        )
    return declared


def _amz_time(seconds: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(seconds))


def _check_date(amz_date: str, scope_date: str, now: float) -> None:
    try:
        signed_at = calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        raise _front_end_error(
            400, "IncompleteSignatureException", f"X-Amz-Date must be YYYYMMDDTHHMMSSZ: {amz_date}"
        ) from None
    if scope_date != amz_date[:8]:
        raise _front_end_error(
            403,
            "InvalidSignatureException",
            f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
            f"from HTTP: '{scope_date}' != '{amz_date[:8]}', from 'x-amz-date'.",
        )
    if signed_at < now - MAX_CLOCK_SKEW_SECONDS:
        raise _front_end_error(
            403,
            "InvalidSignatureException",
            f"Signature expired: {amz_date} is now earlier than "
            f"{_amz_time(now - MAX_CLOCK_SKEW_SECONDS)} ({_amz_time(now)} - 15 min.)",
        )
    if signed_at > now + MAX_CLOCK_SKEW_SECONDS:
        raise _front_end_error(
            403,
            "InvalidSignatureException",
            f"Signature not yet current: {amz_date} is still later than "
            f"{_amz_time(now + MAX_CLOCK_SKEW_SECONDS)} ({_amz_time(now)} + 15 min.)",
        )


@dataclass(frozen=True)
class TemporaryCredentials:
    access_key: str
    secret_key: str
    token: str
    expires: float


# Issued by the STS simulator and accepted by every AWS simulator of this process.
TEMPORARY_CREDENTIALS: dict[str, TemporaryCredentials] = {}


def verify_sigv4(
    request: Request,
    service: str,
    access_key: str,
    secret_key: str,
    now: float | None = None,
) -> Caller:
    """Checks the request's SigV4 Authorization header; raises the AWSError AWS would answer.

    Query-string (presigned) authentication and session tokens are not supported: the
    simulators have one long-term key, and no STS to issue temporary ones.
    """
    header = request.headers.get("authorization")
    if not header:
        raise _front_end_error(
            403, "MissingAuthenticationTokenException", "Missing Authentication Token"
        )
    auth = _parse_authorization(header)
    if auth.service != service:
        raise _front_end_error(
            403,
            "InvalidSignatureException",
            f"Credential should be scoped to correct service: '{service}'. ",
        )
    if "host" not in auth.signed_headers:
        raise _front_end_error(
            400,
            "IncompleteSignatureException",
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
        )
    amz_date = request.headers.get("x-amz-date")
    if amz_date is None or "x-amz-date" not in auth.signed_headers:
        raise _front_end_error(
            400, "IncompleteSignatureException", "X-Amz-Date must be present and signed."
        )
    # Every key is compared in constant time, so that timing does not reveal a valid one.
    if not hmac.compare_digest(auth.access_key.encode(), access_key.encode()):
        raise _front_end_error(
            403,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        )
    _check_date(amz_date, auth.date, time.time() if now is None else now)
    canonical = canonical_request(request, auth.signed_headers, _payload_hash(request))
    scope = f"{auth.date}/{auth.region}/{auth.service}/aws4_request"
    string_to_sign = "\n".join(
        [ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = signing_key(secret_key, auth.date, auth.region, auth.service)
    expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), auth.signature.encode()):
        raise _front_end_error(
            403,
            "InvalidSignatureException",
            f"{BAD_SIGNATURE}\n\nThe Canonical String for this request should have been\n"
            f"'{canonical}'\n\nThe String-to-Sign should have been\n'{string_to_sign}'\n",
        )
    return Caller(auth.access_key, auth.region)


def json_11_response(value: Any) -> Response:
    """A successful JSON 1.1 answer."""
    body = json.dumps(value, separators=(",", ":")).encode()
    return Response(200, body, {"content-type": JSON_11_CONTENT_TYPE})


Operation = Callable[[Request, Caller], Response]


class AWSSimulator(Simulator):
    """A simulated AWS service: subclasses map requests to operations, this class signs them.

    Every operation is faulty and recorded, and runs after the signature is verified; every
    response carries an x-amzn-RequestId, as botocore reports it in ResponseMetadata.
    """

    signing_name = ""  # the service in the credential scope
    protocol = REST_JSON
    message_key = "message"  # the message member of the service's modeled errors
    # The error code the service answers with a bare status (faults, timeouts): from the
    # httpStatusCode of the error shapes in botocore's service model, plus AWS's throttling.
    status_codes: ClassVar[dict[int, str]] = {429: "ThrottlingException"}

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        access_key: str = DEFAULT_ACCESS_KEY,
        secret_key: str = DEFAULT_SECRET_KEY,
        request_timeout_ms: int | None = None,
        tls: ssl.SSLContext | None = None,
        latency_ms: float = 0,
    ):
        super().__init__(
            host, port, request_timeout_ms=request_timeout_ms, tls=tls, latency_ms=latency_ms
        )
        self.access_key = access_key
        self.secret_key = secret_key

    def operation(self, request: Request) -> Operation | None:
        """The operation this request calls, or None for UnknownOperationException."""
        raise NotImplementedError

    def route(self, request: Request) -> Endpoint | None:
        operation = self.operation(request)
        if operation is None:
            raise _front_end_error(
                404,
                "UnknownOperationException",
                f"the {self.name} simulator has no operation at {request.method} {request.path}",
            )
        return Endpoint(
            lambda request: operation(request, self.authenticate(request)),
            faulty=True,
            recorded=True,
        )

    def authenticate(self, request: Request) -> Caller:
        """The long-term key, or temporary credentials the STS simulator issued."""
        header = request.headers.get("authorization", "")
        temporary = TEMPORARY_CREDENTIALS.get(
            _parse_authorization(header).access_key if header else ""
        )
        if temporary is None or temporary.expires < time.time():
            return verify_sigv4(request, self.signing_name, self.access_key, self.secret_key)
        if not hmac.compare_digest(
            request.headers.get("x-amz-security-token", "").encode(), temporary.token.encode()
        ):
            raise _front_end_error(
                403,
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )
        return verify_sigv4(request, self.signing_name, temporary.access_key, temporary.secret_key)

    def handle(self, request: Request) -> Response:
        response = super().handle(request)
        response.headers.setdefault("x-amzn-requestid", str(uuid.uuid4()))
        return response

    # Errors in the service's format.

    def _error(self, error: HTTPError) -> Response:
        """Overrides the base class's hook so that an AWSError keeps its code and members."""
        if isinstance(error, AWSError):
            return self.aws_error_response(error)
        return super()._error(error)

    def error_response(
        self, status: int, message: str, headers: dict[str, str] | None = None
    ) -> Response:
        """A bare status (a fault, a timeout, a simulator failure) with the service's code."""
        code = self.status_codes.get(status)
        if code is None:  # no AWS error has this status: the body a gateway in front sends
            return self._error_body(status, {"message": message}, headers or {})
        return self.aws_error_response(AWSError(status, code, message, headers=headers))

    def aws_error_response(self, error: AWSError) -> Response:
        body = {error.message_key or self.message_key: error.message, **error.fields}
        headers = dict(error.headers)
        if self.protocol == JSON_11:
            body = {"__type": error.code, **body}
        else:
            headers["x-amzn-errortype"] = error.code
        return self._error_body(error.status, body, headers)

    def _error_body(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> Response:
        content_type = JSON_11_CONTENT_TYPE if self.protocol == JSON_11 else "application/json"
        encoded = json.dumps(body, separators=(",", ":")).encode()
        return Response(status, encoded, {"content-type": content_type, **headers})

    # Command line.

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--access-key",
            default=DEFAULT_ACCESS_KEY,
            help=f"the accepted AWS access key id (default: {DEFAULT_ACCESS_KEY})",
        )
        parser.add_argument(
            "--secret-key",
            default=DEFAULT_SECRET_KEY,
            help=f"its secret access key, which signatures are checked with "
            f"(default: {DEFAULT_SECRET_KEY})",
        )

    @classmethod
    def options(cls, args: argparse.Namespace) -> dict[str, Any]:
        """The constructor's keyword arguments from the command line; subclasses add theirs."""
        return {
            "access_key": args.access_key,
            "secret_key": args.secret_key,
            "request_timeout_ms": args.request_timeout_ms,
            "latency_ms": args.latency_ms,
        }

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AWSSimulator:
        return cls(args.host, args.port, **cls.options(args))
