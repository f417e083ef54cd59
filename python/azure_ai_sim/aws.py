"""Calls to AWS services: configuration, credentials and SigV4 signing from botocore, the
HTTP itself through transport.py (so deadlines, retries and cancellation are the same as
for Azure ML).

Configuration comes from botocore's standard chain (AWS_REGION, AWS_ENDPOINT_URL and
AWS_ENDPOINT_URL_<SERVICE>, shared config and credentials files, instance and container
roles); settings in aws_ml.settings override it.
"""

from __future__ import annotations

import calendar
import os
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode
from xml.etree import ElementTree

from azure_ai_sim import errors, redaction, transport


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
    deadline = transport.Deadline(_seconds_allowed())
    region = _region(settings)
    url = _endpoint_url(service, settings, region) + path
    credentials = _credentials(settings, deadline)
    role = settings.get(f"{service.name}.role_arn")
    if role:
        credentials = _assumed(role, credentials, settings, region, deadline)
    signed = _sign(service, region, credentials, url, body, headers)
    request = transport.Request(
        "POST", url, signed, body, MAX_RESPONSE_BYTES, secrets=_secrets(credentials, signed)
    )
    return transport.send(request, deadline, transport.RetryPolicy(max_attempts=3))


def _secrets(credentials: Any, signed: dict[str, str]) -> tuple[str, ...]:
    """What must not be shown of a signed request: the secret key, the session token (AWS
    echoes the canonical request, token included, when a signature does not match) and
    the signature itself. The first two are remembered for every message of the backend."""
    redaction.remember(credentials.secret_key, credentials.token)
    signature = signed.get("Authorization", "").rpartition("Signature=")[2]
    return tuple(filter(None, (credentials.secret_key, credentials.token, signature)))


def _seconds_allowed() -> float:
    left = transport.statement_seconds_left()
    return min(DEFAULT_TIMEOUT_SECONDS, left) if left is not None else DEFAULT_TIMEOUT_SECONDS


def _botocore() -> Any:
    global _session
    if _session is None:
        import botocore.session

        _session = botocore.session.get_session()
    return _session


def _region(settings: dict[str, str]) -> str:
    region = settings.get("region") or _botocore().get_config_variable("region")
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

    url = _endpoint_url(STS, settings, region) + "/"
    key = (role, base.access_key, url)
    cached = _assumed_roles.get(key)
    if cached is not None and cached[1] - time.time() > RENEW_BEFORE_EXPIRY_SECONDS:
        return cached[0]
    body = urlencode({
        "Action": "AssumeRole", "Version": "2011-06-15", "RoleArn": role,
        "RoleSessionName": "azure_ai_sim", "DurationSeconds": str(ASSUMED_ROLE_SECONDS),
    }).encode()  # fmt: skip
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    signed = _sign(STS, region, base, url, body, headers)
    request = transport.Request(
        "POST", url, signed, body, MAX_RESPONSE_BYTES, secrets=_secrets(base, signed)
    )
    reply = transport.send(request, deadline, transport.RetryPolicy(max_attempts=3))
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
