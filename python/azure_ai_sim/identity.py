"""Entra ID tokens from the host's own identity, for auth_type = managed-identity.

azure-identity's chain finds the identity: environment (service principal), workload
identity, then managed identity (IMDS, App Service, Arc). Developer tools (Azure CLI,
PowerShell, VS Code) are left out: a database server must not shell out to them.
Tokens are cached per backend until shortly before they expire.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from azure_ai_sim import errors, redaction, transport

REFRESH_BEFORE_EXPIRY_SECONDS = 300

_credential: Any = None
_tokens: dict[str, Any] = {}


def bearer_token(audience: str, deadline: transport.Deadline) -> str:
    scope = audience.rstrip("/") + "/.default"
    token = _tokens.get(scope)
    if token is None or token.expires_on - time.time() < REFRESH_BEFORE_EXPIRY_SECONDS:
        try:
            token = transport.run_blocking(("token", scope), lambda: _get_token(scope), deadline)
        except errors.TimedOut:
            raise errors.TimedOut(
                f"no managed-identity token for {audience} within {deadline.seconds * 1000:.0f} ms"
            ) from None
        _tokens[scope] = token
    redaction.remember(token.token)
    return token.token


def _get_token(scope: str) -> Any:
    """On the I/O thread: the import is slow and the token request is network I/O."""
    global _credential
    from azure.core.exceptions import ClientAuthenticationError

    if _credential is None:
        from azure.identity import DefaultAzureCredential

        # Its warnings would reach the server log through logging's last-resort handler.
        logging.getLogger("azure").addHandler(logging.NullHandler())

        _credential = DefaultAzureCredential(
            exclude_cli_credential=True,
            exclude_developer_cli_credential=True,
            exclude_powershell_credential=True,
            exclude_visual_studio_code_credential=True,
            exclude_shared_token_cache_credential=True,
        )
    try:
        return _credential.get_token(scope)
    except ClientAuthenticationError as error:
        reason = transport.service_message(_reasons(str(error.message or error)).encode())
        raise errors.CallFailed(
            f"could not get a managed-identity token for {scope}: {reason}", sqlstate="28000"
        ) from None


def _reasons(message: str) -> str:
    """azure-identity lists every credential it tried, each with troubleshooting links,
    and the managed identity's reason comes last, where a shortened message loses it. So:
    each credential's reason, the managed identity's first, without the links."""
    attempts = re.findall(r"^\t(\w+Credential): (.*)$", message, re.MULTILINE)
    if not attempts:
        return message
    attempts.sort(key=lambda attempt: attempt[0] != "ManagedIdentityCredential")
    return "; ".join(f"{name}: {_without_links(reason)}" for name, reason in attempts)


def _without_links(reason: str) -> str:
    sentences = re.split(r"(?<=\.) ", reason)
    return " ".join(sentence for sentence in sentences if "://" not in sentence).strip()
