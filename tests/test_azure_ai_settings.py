"""azure_ai.set_setting / get_setting: round trips, validation, privileges, dump/restore."""

import psycopg
import pytest

import azure_ai_sim

VALID = {
    "azure_ml.scoring_endpoint": "https://x.example/score",
    "azure_ml.endpoint_key": "ml-key-123",
    "azure_ml.auth_type": "managed-identity",
    "azure_ml.serverless_ranking_endpoint": "https://rank.example:8443/v1/rerank",
    "azure_ml.serverless_ranking_endpoint_key": "rank-key",
    "azure_ml.swagger_uri": "https://x.example/swagger.json",
    "azure_ml.request_format": "web_service",
    "azure_openai.endpoint": "https://example.openai.azure.com",
    "azure_openai.subscription_key": "0123456789abcdef",
    "azure_openai.auth_type": "subscription-key",
    "azure_openai.api_type": "openai",
    "azure_cognitive.endpoint": "http://127.0.0.1:8080",
    "azure_cognitive.subscription_key": "cog-key",
    "azure_cognitive.auth_type": "subscription-key",
    "azure_cognitive.region": "westeurope",
    "azure_cognitive.translator_resource_id": "/subscriptions/00000000-0000-0000-0000-000000000000"
    "/resourceGroups/rg/providers/Microsoft.CognitiveServices/accounts/translator",
}

INVALID = [
    ("azure_ml.scoring_endpoint", "ftp://x.example/score", "must be an http:// or https:// URL"),
    ("azure_ml.scoring_endpoint", "x.example/score", "must be an http:// or https:// URL"),
    ("azure_ml.scoring_endpoint", "https:/x.example", "must be an http:// or https:// URL"),
    ("azure_openai.endpoint", " https://x.example", "must be a URL of RFC 3986"),
    ("azure_ml.scoring_endpoint", "http://x.example/e200json a b", "must be a URL of RFC 3986"),
    ("azure_ml.scoring_endpoint", "http://x.example/s\tcore", "must be a URL of RFC 3986"),
    ("azure_ml.scoring_endpoint", "http://x.example/sc\x7fore", "must be a URL of RFC 3986"),
    ("azure_ml.scoring_endpoint", "http://x.example/scöre", "must be a URL of RFC 3986"),
    ("azure_ml.scoring_endpoint", "http://x.example/score%2", "must be a URL of RFC 3986"),
    ("azure_ml.scoring_endpoint", "http:///score", "must be an http:// or https:// URL"),
    ("azure_ml.scoring_endpoint", "https://x.example/score#part", "must not have a #fragment"),
    ("azure_openai.endpoint", "https://x.example:99999", "has an invalid port"),
    ("azure_ml.auth_type", "api-key", "must be one of: subscription-key, managed-identity"),
    ("azure_cognitive.auth_type", "", "must be one of: subscription-key, managed-identity"),
    ("azure_cognitive.region", "West Europe", "must be an Azure region name"),
    ("azure_cognitive.translator_resource_id", "my-xlator-7", "must be an Azure resource ID"),
    ("azure_ml.endpoint_key", "", "must not be empty"),
    ("azure_openai.subscription_key", "abc def", "must not contain whitespace"),
    ("azure_openai.subscription_key", "abc\r\nX-Injected: 1", "must not contain whitespace"),
]


@pytest.fixture(scope="module", autouse=True)
def extension(database):
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION azure_ai")


def set_setting(conn, key, value):
    conn.execute("SELECT azure_ai.set_setting(%s, %s)", (key, value))


def get_setting(conn, key):
    return conn.execute("SELECT azure_ai.get_setting(%s)", (key,)).fetchone()[0]


@pytest.mark.parametrize("key", sorted(VALID))
def test_round_trip(conn, key):
    set_setting(conn, key, VALID[key])
    assert get_setting(conn, key) == VALID[key]


def test_overwrite_and_remove_with_null(conn):
    set_setting(conn, "azure_ml.endpoint_key", "first")
    set_setting(conn, "azure_ml.endpoint_key", "second")
    assert get_setting(conn, "azure_ml.endpoint_key") == "second"
    set_setting(conn, "azure_ml.endpoint_key", None)
    assert get_setting(conn, "azure_ml.endpoint_key") is None
    assert conn.execute(
        "SELECT count(*) FROM azure_ai.settings WHERE key = 'azure_ml.endpoint_key'"
    ).fetchone() == (0,)


def test_unknown_key_lists_the_valid_keys(conn):
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        get_setting(conn, "azure_ml.endpoint_keys")
    diag = caught.value.diag
    assert diag.message_primary == (
        "azure_ai.get_setting: unknown setting key (not shown, in case a secret was given "
        "as the key)"
    )
    assert diag.message_detail == "Valid keys: " + ", ".join(sorted(VALID)) + "."
    assert diag.message_hint == 'Did you mean "azure_ml.endpoint_key"?'


@pytest.mark.parametrize(
    "key", ["sk-Secret/Key+1==", "d41d8cd98f00b204e9800998ecf8427e", "abcdefghijklmnop"]
)
def test_a_secret_given_as_key_is_not_echoed(conn, key):
    """Key and value swapped: lowercase hex, the shape of Azure keys, looks like a key name."""
    for call in (
        lambda: set_setting(conn, key, "azure_openai.subscription_key"),
        lambda: get_setting(conn, key),
    ):
        with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
            call()
        diag = caught.value.diag
        assert "unknown setting key (not shown" in diag.message_primary
        shown = f"{diag.message_primary} {diag.message_detail} {diag.message_hint}"
        assert key[:8] not in shown and key[-8:] not in shown


def test_null_key(conn):
    with pytest.raises(psycopg.errors.NullValueNotAllowed, match="key must not be NULL"):
        set_setting(conn, None, "x")


@pytest.mark.parametrize(("key", "value", "reason"), INVALID)
def test_invalid_value_names_the_key_and_not_the_value(conn, key, value, reason):
    set_setting(conn, key, VALID[key])
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        set_setting(conn, key, value)
    message = caught.value.diag.message_primary
    assert message.startswith(f'azure_ai.set_setting: invalid value for setting "{key}": ')
    assert reason in message
    if value.strip():
        assert value.strip() not in str(caught.value)
    assert get_setting(conn, key) == VALID[key]  # the failed call changed nothing


def test_only_managers_and_superusers_may_read_or_write(conn, make_role):
    set_setting(conn, "azure_openai.subscription_key", "top-secret")
    outsider, manager = make_role(), make_role("azure_ai_settings_manager")

    conn.execute(f"SET ROLE {outsider}")
    for call in ("azure_ai.get_setting('azure_openai.subscription_key')",
                 "azure_ai.set_setting('azure_openai.subscription_key', 'mine')"):  # fmt: skip
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
            conn.execute(f"SELECT {call}")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT * FROM azure_ai.settings")
    assert conn.execute("SELECT azure_ai.version()").fetchone() == (azure_ai_sim.__version__,)

    conn.execute(f"SET ROLE {manager}")
    assert get_setting(conn, "azure_openai.subscription_key") == "top-secret"
    set_setting(conn, "azure_openai.subscription_key", "rotated")
    conn.execute("RESET ROLE")
    assert get_setting(conn, "azure_openai.subscription_key") == "rotated"


def test_functions_ignore_the_callers_search_path(conn, make_role):
    """SECURITY DEFINER with a pinned search_path: a caller's objects cannot interpose."""
    manager = make_role("azure_ai_settings_manager")
    conn.execute(f"CREATE SCHEMA trap AUTHORIZATION {manager}")
    try:
        conn.execute(f"SET ROLE {manager}")
        conn.execute("CREATE TABLE trap.settings (key text PRIMARY KEY, value text)")
        conn.execute("SET search_path = trap, public")
        set_setting(conn, "azure_ml.auth_type", "subscription-key")
        assert conn.execute("SELECT count(*) FROM trap.settings").fetchone() == (0,)
        assert get_setting(conn, "azure_ml.auth_type") == "subscription-key"
    finally:
        conn.execute("RESET ROLE")
        conn.execute("RESET search_path")
        conn.execute("DROP SCHEMA trap CASCADE")


def test_failed_calls_keep_secrets_out_of_the_server_log(conn, server):
    if server.log_path is None:
        pytest.skip("the server log is only readable for the private cluster")
    secret = "sk-ThisMustNotBeLogged42"
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        set_setting(conn, "azure_openai.subscriptionkey", secret)  # a typo in the key
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute(f"SELECT azure_ai.set_setting('azure_ml.endpoint_key', ' {secret}')")
    conn.execute("SELECT pg_catalog.pg_sleep(0)")  # the log is written by the failing backend
    log = server.log_path.read_text()
    assert "unknown setting key" in log
    assert secret not in log


def test_dump_and_restore_keep_the_settings(conn, server, database):
    set_setting(conn, "azure_ml.scoring_endpoint", "https://restored.example/score")
    set_setting(conn, "azure_ml.endpoint_key", "restored-key")
    dump = server.run("pg_dump", "--format=custom", f"--dbname={database}", text=False)
    assert dump.returncode == 0, dump.stderr
    with server.database("restored") as restored_dsn:
        restore = server.run("pg_restore", "--exit-on-error", f"--dbname={restored_dsn}",
                             input=dump.stdout, text=False)  # fmt: skip
        assert restore.returncode == 0, restore.stderr
        with psycopg.connect(restored_dsn, autocommit=True) as restored:
            assert get_setting(restored, "azure_ml.scoring_endpoint") == (
                "https://restored.example/score"
            )
            assert get_setting(restored, "azure_ml.endpoint_key") == "restored-key"
