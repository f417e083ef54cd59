"""Simulator of AWS STS's AssumeRole, so that the other AWS simulators can be called with
a role's temporary credentials, as Aurora calls each service with the role of its feature.

Query protocol: POST / with a form body Action=AssumeRole&Version=2011-06-15&RoleArn=…&
RoleSessionName=…, SigV4 signing name "sts", XML answers. Any role ARN of the right shape is
assumable; the credentials it issues are accepted by the AWS simulators of this process
until they expire.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

from azure_ai_sim.sim.aws import (
    TEMPORARY_CREDENTIALS,
    AWSError,
    AWSSimulator,
    Caller,
    Operation,
    TemporaryCredentials,
)
from azure_ai_sim.sim.server import Request, Response

ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::[0-9]{12}:role/[\w+=,.@/-]{1,512}")
XMLNS = "https://sts.amazonaws.com/doc/2011-06-15/"


class StsSimulator(AWSSimulator):
    """STS AssumeRole: temporary credentials for any well-formed role ARN."""

    name = "sts"
    signing_name = "sts"

    def operation(self, request: Request) -> Operation | None:
        if request.method != "POST" or request.path != "/":
            return None
        return self.assume_role

    def assume_role(self, request: Request, caller: Caller) -> Response:
        form = {k: v[0] for k, v in parse_qs(request.body.decode(), keep_blank_values=True).items()}
        if form.get("Action") != "AssumeRole":
            raise AWSError(400, "InvalidAction", f"Could not find operation {form.get('Action')}")
        role = form.get("RoleArn", "")
        session = form.get("RoleSessionName", "")
        if not ROLE_ARN.fullmatch(role) or not session:
            raise AWSError(400, "ValidationError", f"{role!r} is not a valid role ARN")
        seconds = int(form.get("DurationSeconds", "3600"))
        issued = TemporaryCredentials(
            "ASIA" + secrets.token_hex(8).upper(),
            secrets.token_urlsafe(30),
            secrets.token_urlsafe(60),
            time.time() + seconds,
        )
        TEMPORARY_CREDENTIALS[issued.access_key] = issued
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(issued.expires))
        account, name = role.split(":")[4], role.split("/", 1)[1]
        body = (
            f'<AssumeRoleResponse xmlns="{XMLNS}"><AssumeRoleResult><Credentials>'
            f"<AccessKeyId>{issued.access_key}</AccessKeyId>"
            f"<SecretAccessKey>{issued.secret_key}</SecretAccessKey>"
            f"<SessionToken>{issued.token}</SessionToken><Expiration>{expires}</Expiration>"
            "</Credentials><AssumedRoleUser>"
            f"<Arn>arn:aws:sts::{account}:assumed-role/{escape(name)}/{escape(session)}</Arn>"
            f"<AssumedRoleId>AROA{secrets.token_hex(8).upper()}:{escape(session)}</AssumedRoleId>"
            "</AssumedRoleUser></AssumeRoleResult>"
            f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>"
            "</AssumeRoleResponse>"
        )
        return Response(200, body.encode(), {"content-type": "text/xml"})
