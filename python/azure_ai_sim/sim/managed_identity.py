"""Managed identity as App Service serves it, for simulators of Azure services.

azure-identity's ManagedIdentityCredential uses this protocol when IDENTITY_ENDPOINT and
IDENTITY_HEADER are set: GET <IDENTITY_ENDPOINT>?api-version=2019-08-01&resource=<audience>
with the header X-IDENTITY-HEADER. Pointing IDENTITY_ENDPOINT at <simulator>/msi/token gives
a client real tokens, which the same simulator then accepts for that audience only.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict

from azure_ai_sim.sim.server import Request, Response, json_response

PATH = "/msi/token"
DEFAULT_HEADER_SECRET = "sim-identity-header"
TOKEN_SECONDS = 3600
ISSUED_TOKENS = 10_000


def same_secret(presented: str, expected: str) -> bool:
    """Constant-time comparison of header values and configured secrets."""
    return hmac.compare_digest(
        presented.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


def _audience(resource: str) -> str:
    """https://ml.azure.com and https://ml.azure.com/ name the same audience."""
    return resource.rstrip("/")


class ManagedIdentity:
    """Issues bearer tokens and remembers the newest ISSUED_TOKENS of them until they expire."""

    def __init__(self, header_secret: str = DEFAULT_HEADER_SECRET):
        self.header_secret = header_secret
        self._tokens: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def issue(self, request: Request) -> Response:
        """The token endpoint; client_id and principal_id select an identity and are ignored."""
        if not same_secret(request.headers.get("x-identity-header", ""), self.header_secret):
            return _refusal(401, "missing or wrong X-IDENTITY-HEADER")
        resource = request.query.get("resource", "")
        if not resource:
            return _refusal(400, "the resource query parameter is required")
        token = secrets.token_urlsafe(32)
        expires_on = int(time.time()) + TOKEN_SECONDS
        with self._lock:
            self._tokens[token] = (_audience(resource), expires_on)
            if len(self._tokens) > ISSUED_TOKENS:
                self._tokens.popitem(last=False)
        return json_response(
            200,
            {
                "access_token": token,
                "expires_on": str(expires_on),
                "resource": resource,
                "token_type": "Bearer",
            },
        )

    def accepts(self, token: str, resource: str) -> bool:
        """True for an unexpired token issued here for this resource."""
        with self._lock:
            audience, expires_on = self._tokens.get(token, ("", 0.0))
        return audience == _audience(resource) and time.time() < expires_on


def _refusal(status: int, message: str) -> Response:
    """App Service's error body, whatever the format of the simulator serving the endpoint:
    azure-identity reads its statusCode and message."""
    return json_response(status, {"statusCode": status, "message": message})
