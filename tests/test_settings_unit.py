"""The settings checks on their own, without a database."""

import pytest

from azure_ai_sim import errors
from azure_ai_sim.azure_ai import SETTINGS
from azure_ai_sim.settings import http_url, one_of, pattern, secret


@pytest.mark.parametrize(
    "url", ["https://x.example", "http://127.0.0.1:8080/score", "https://h/api/v1/service/s/score"]
)
def test_http_url_accepts(url):
    http_url(url)


@pytest.mark.parametrize(
    "url",
    [
        *("", "x.example", "ftp://x.example", "https://", "https://:80", "https://x:0x1"),
        *(" http://x", "http://x/a b", "http://x/\u00e9", "http://x/%zz", "http://x/#f"),
    ],
)
def test_http_url_rejects(url):
    with pytest.raises(ValueError):
        http_url(url)


@pytest.mark.parametrize("value", ["", " ", "a b", "a\tb", "a\nb", "a\x00b", "a\u200bb"])
def test_secret_rejects_what_cannot_travel_in_a_header(value):
    with pytest.raises(ValueError):
        secret(value)


def test_one_of_and_pattern():
    one_of("a", "b")("b")
    with pytest.raises(ValueError, match="must be one of: a, b"):
        one_of("a", "b")("c")
    pattern("[a-z]+", "lower case")("abc")
    with pytest.raises(ValueError, match="must be lower case"):
        pattern("[a-z]+", "lower case")("abc1")


def test_validate_reports_sqlstates():
    assert SETTINGS.validate("azure_ml.auth_type", None) == "azure_ml.auth_type"
    with pytest.raises(errors.NullValueNotAllowed):
        SETTINGS.validate(None, "x")
    with pytest.raises(errors.InvalidParameter) as caught:
        SETTINGS.validate("azure_ml.auth_type", "token")
    assert caught.value.sqlstate == "22023"
    with pytest.raises(errors.InvalidParameter, match=r"^unknown setting key \(not shown"):
        SETTINGS.validate("nope", "x")
