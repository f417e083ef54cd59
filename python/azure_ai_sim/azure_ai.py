"""Entry points of the azure_ai extension (schemas azure_ai and azure_ml)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import azure_ai_sim
from azure_ai_sim import errors, pg, redaction
from azure_ai_sim.settings import SettingsTable, http_url, one_of, pattern, secret

if TYPE_CHECKING:  # the settings' functions do without the network's modules
    from azure_ai_sim import transport

AUTH_TYPE = one_of("subscription-key", "managed-identity")

SETTINGS = SettingsTable(
    "azure_ai.settings",
    {
        "azure_ml.scoring_endpoint": http_url,
        "azure_ml.endpoint_key": secret,
        "azure_ml.auth_type": AUTH_TYPE,
        # azure_ml.score: where the endpoint's swagger is, or the request shape instead
        "azure_ml.swagger_uri": http_url,
        "azure_ml.request_format": one_of("input_data", "input_data_split", "data", "web_service"),
        "azure_ml.serverless_ranking_endpoint": http_url,
        "azure_ml.serverless_ranking_endpoint_key": secret,
        "azure_openai.endpoint": http_url,
        "azure_openai.subscription_key": secret,
        "azure_openai.auth_type": AUTH_TYPE,
        # 'openai': the endpoint speaks OpenAI's API (OpenAI, Ollama, vLLM, llama.cpp)
        "azure_openai.api_type": one_of("azure", "openai"),
        "azure_cognitive.endpoint": http_url,
        "azure_cognitive.subscription_key": secret,
        "azure_cognitive.auth_type": AUTH_TYPE,
        "azure_cognitive.region": pattern(
            "[a-z][a-z0-9]*", "an Azure region name such as eastus or westeurope"
        ),
        "azure_cognitive.translator_resource_id": pattern(
            "(?i)/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
            "Microsoft.CognitiveServices/accounts/[^/]+",
            "an Azure resource ID of a Translator account (/subscriptions/.../accounts/<name>)",
        ),
    },
)


def required(settings: Mapping[str, str], key: str, example: str, otherwise: str = "") -> str:
    """A setting the call cannot do without; missing, an error whose HINT sets it."""
    value = settings.get(key)
    if not value:
        raise errors.SettingMissing(
            f'setting "{key}" is not set',
            hint=f"SELECT azure_ai.set_setting('{key}', '{example}');{otherwise}",
        )
    return value


def credential(
    settings: Mapping[str, str], auth_type: str, key: str, audience: str,
    deadline: Callable[[], transport.Deadline],
) -> tuple[str, bool]:  # fmt: skip
    """The secret a call sends as its service asks, and whether it is an Entra ID token:
    under auth_type managed-identity, the host identity's token for audience (fetched
    within a deadline); otherwise the key setting, which the call cannot do without."""
    if settings.get(auth_type) == "managed-identity":
        from azure_ai_sim import identity

        return identity.bearer_token(audience, deadline()), True
    secret = required(settings, key, "<key>", f" or set {auth_type} to managed-identity.")
    redaction.remember(secret)  # again: the remembered secrets are a bounded set
    return secret, False


@pg.sql_function("azure_ai.set_setting")
def set_setting(key: str | None, value: str | None) -> None:
    SETTINGS.set(key, value)


@pg.sql_function("azure_ai.get_setting")
def get_setting(key: str | None) -> str | None:
    return SETTINGS.get(key)


def version() -> str:
    return azure_ai_sim.__version__
