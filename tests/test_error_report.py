"""Errors as a user needs them (extension/error_report.c): our errors lose PL/Python's
traceback and its line for our function (the message names it) from their CONTEXT, for the
client and in the server log, and keep their callers' lines; a role refused one of our
functions gets a HINT that names the role to grant."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from cluster import Cluster

UNKNOWN_KEY = (
    "azure_ai.get_setting: unknown setting key (not shown, in case a secret was given as the key)"
)

# a user's PL/pgSQL function that calls ours: its PERFORM is on line 3
READ_KEY = """
CREATE OR REPLACE FUNCTION public.read_key() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM azure_ai.get_setting('nope');
END
$$"""
READ_KEY_CONTEXT = (
    "SQL statement \"SELECT azure_ai.get_setting('nope')\"\n"
    "PL/pgSQL function read_key() line 3 at PERFORM"
)


@pytest.fixture(scope="module", autouse=True)
def extensions(local_ai: str) -> None:
    with psycopg.connect(local_ai, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION azure_ai")
        conn.execute("CREATE EXTENSION aws_ml CASCADE")
        conn.execute("CREATE EXTENSION plpython3u")
        conn.execute(READ_KEY)


@pytest.fixture
def log(server):
    """What the server logs from now on: log() reads it."""
    if server.log_path is None:
        pytest.skip("the server log is only readable for the private cluster")
    start = server.log_path.stat().st_size
    return lambda: server.log_path.read_bytes()[start:].decode()


def logged_context(log: str, message: str) -> str:
    """The CONTEXT the server logged with the error of this message (its lines joined)."""
    error = rf"ERROR:  (?:[0-9A-Z]{{5}}: )?{re.escape(message)}\n"  # verbose: the SQLSTATE
    found = re.search(error + r"(?:.*\n)*?\S.*CONTEXT:  (.*(?:\n\t.*)*)", log)
    assert found, log
    return found[1].replace("\n\t", "\n")


def error_of(conn: psycopg.Connection, statement: str) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as raised:
        conn.execute(statement)
    return raised.value


# A. Our errors: no context of ours, the callers' kept.


def test_a_direct_call_shows_no_context(conn):
    error = error_of(conn, "SELECT azure_ai.get_setting('nope')")
    assert error.sqlstate == "22023"
    assert error.diag.message_primary == UNKNOWN_KEY
    assert error.diag.context is None


def test_an_sql_function_of_ours_shows_its_documented_name(conn):
    error = error_of(
        conn, "SELECT azure_local_ai.create_embeddings('multilingual-e5-small:v9', 'x')"
    )
    assert error.diag.message_primary == (
        'azure_local_ai.create_embeddings: model "multilingual-e5-small:v9" is not registered'
    )
    assert error.diag.context == 'SQL function "create_embeddings" statement 1'


def test_a_users_plpgsql_function_keeps_its_lines(conn):
    error = error_of(conn, "SELECT public.read_key()")
    assert error.diag.message_primary == UNKNOWN_KEY
    assert error.diag.context == READ_KEY_CONTEXT


def test_a_users_plpython_function_keeps_its_traceback(conn):
    conn.execute(
        "CREATE OR REPLACE FUNCTION public.fails() RETURNS void LANGUAGE plpython3u AS $$\n"
        'plpy.error("mine")\n'
        "$$"
    )
    error = error_of(conn, "SELECT public.fails()")
    assert error.diag.message_primary == "plpy.Error: mine"
    assert error.diag.context == (
        "Traceback (most recent call last):\n"
        '  PL/Python function "fails", line 2, in <module>\n'
        '    plpy.error("mine")\n'
        'PL/Python function "fails"'
    )


def test_a_users_plpython_function_that_calls_ours_keeps_its_traceback(conn):
    conn.execute(
        "CREATE OR REPLACE FUNCTION public.calls_ours() RETURNS void LANGUAGE plpython3u AS $$\n"
        "plpy.execute(\"SELECT azure_ai.get_setting('nope')\")\n"
        "$$"
    )
    error = error_of(conn, "SELECT public.calls_ours()")
    assert error.diag.message_primary == f"spiexceptions.InvalidParameterValue: {UNKNOWN_KEY}"
    assert error.diag.context == (
        "Traceback (most recent call last):\n"
        '  PL/Python function "calls_ours", line 2, in <module>\n'
        "    plpy.execute(\"SELECT azure_ai.get_setting('nope')\")\n"
        'PL/Python function "calls_ours"'
    )
    # and ours, reported again later, still loses its traceback
    assert error_of(conn, "SELECT azure_ai.get_setting('nope')").diag.context is None


def test_a_warning_shows_one_line_of_context(conn):
    """throw_on_error => false: the error is a WARNING (port 9, discard, refuses)."""
    warnings: list[tuple[str, str, str]] = []
    conn.add_notice_handler(
        lambda diag: warnings.append(
            (diag.severity_nonlocalized, diag.message_primary, diag.context)
        )
    )
    conn.execute(
        "SELECT azure_ai.set_setting('azure_ml.scoring_endpoint', 'http://127.0.0.1:9/score')"
    )
    try:
        invoked = conn.execute("SELECT azure_ml.invoke('{}', throw_on_error => false)")
        assert invoked.fetchone() == (None,)
    finally:
        conn.execute("SELECT azure_ai.set_setting('azure_ml.scoring_endpoint', NULL)")
    [(severity, message, context)] = warnings
    assert severity == "WARNING"
    assert message.startswith("azure_ml.invoke: could not connect to ")
    assert context == 'PL/Python function "invoke"'


@pytest.mark.parametrize("verbosity", ["default", "verbose"])
def test_the_server_log_shows_the_same_context(conn, log, verbosity):
    conn.execute(f"SET log_error_verbosity = {verbosity}")
    try:
        error_of(conn, "SELECT azure_ai.get_setting('nope')")
        error_of(conn, "SELECT public.read_key()")
    finally:
        conn.execute("RESET log_error_verbosity")
    logged = log()
    assert "Traceback" not in logged
    direct, through_plpgsql = logged.split("STATEMENT:  SELECT azure_ai.get_setting('nope')\n")
    assert UNKNOWN_KEY in direct
    assert "CONTEXT:" not in direct
    assert logged_context(through_plpgsql, UNKNOWN_KEY) == READ_KEY_CONTEXT
    if verbosity == "verbose":
        assert re.search(r"ERROR:  22023: azure_ai\.get_setting: .*\n(.*\n)*.*LOCATION:  ", direct)


# B. Permission errors: a hint that names the role to grant.


def hint(role: str, function: str, user: str, extension: str, owner: str = "postgres") -> str:
    return (
        f"Grant the role: GRANT {role} TO {user}; (a superuser), or EXECUTE on the function: "
        f"GRANT EXECUTE ON FUNCTION {function} TO {user}; "
        f"(the owner of extension {extension}, {owner})."
    )


@pytest.fixture
def owner(conn):
    """The extensions' owner: the superuser who created them."""
    return conn.execute("SELECT current_user").fetchone()[0]


@pytest.fixture
def session(database, make_role):
    """A session of a new role that was granted nothing."""
    role = make_role()
    with psycopg.connect(make_conninfo(database, user=role), autocommit=True) as session:
        yield session, role


def refused(session: psycopg.Connection, statement: str) -> psycopg.Error:
    error = error_of(session, statement)
    assert isinstance(error, psycopg.errors.InsufficientPrivilege)
    return error


@pytest.mark.parametrize(
    ("statement", "message", "role", "function", "extension"),
    [
        (
            "SELECT azure_ai.get_setting('azure_ml.scoring_endpoint')",
            "permission denied for function get_setting",
            "azure_ai_settings_manager",
            "azure_ai.get_setting(text)",
            "azure_ai",
        ),
        (
            "SELECT azure_ai.set_setting('azure_ml.auth_type', NULL)",
            "permission denied for function set_setting",
            "azure_ai_settings_manager",
            "azure_ai.set_setting(text, text)",
            "azure_ai",
        ),
        (
            "SELECT azure_local_ai.set_setting('intra_op_parallelism', NULL)",
            "permission denied for function set_setting",
            "azure_local_ai_setting_manager",
            "azure_local_ai.set_setting(text, text, integer)",
            "azure_local_ai",
        ),
        (
            "SELECT azure_local_ai.set_setting(ARRAY['intra_op_parallelism'], ARRAY[NULL])",
            "permission denied for function set_setting",
            "azure_local_ai_setting_manager",
            "azure_local_ai.set_setting(text[], text[], integer)",
            "azure_local_ai",
        ),
        (
            "SELECT azure_local_ai.model_unregister('nothing')",
            "permission denied for function model_unregister",
            "azure_local_ai_setting_manager",
            "azure_local_ai.model_unregister(text, integer)",
            "azure_local_ai",
        ),
    ],
    ids=[
        "azure_ai.get_setting",
        "azure_ai.set_setting",
        "azure_local_ai.set_setting",
        "azure_local_ai.set_setting[]",
        "azure_local_ai.model_unregister",
    ],
)
def test_a_refused_function_names_the_role(
    conn, session, owner, statement, message, role, function, extension
):
    session, user = session
    error = refused(session, statement)
    assert error.diag.message_primary == message
    assert error.diag.message_hint == hint(role, function, user, extension, owner)
    # what the hint says works: the GRANT EXECUTE lets the role call the function
    grant = re.search(r"GRANT EXECUTE ON FUNCTION [^;]*", error.diag.message_hint)[0]
    conn.execute(grant)
    try:
        session.execute(statement)
    except psycopg.Error as other:  # model_unregister: no such model
        assert not isinstance(other, psycopg.errors.InsufficientPrivilege)
    finally:
        conn.execute(grant.replace("GRANT", "REVOKE", 1).replace(" TO ", " FROM "))


def test_aws_ml_names_its_role_for_its_schemas_and_functions(conn, session, owner):
    """aws_ml's schemas are not open to PUBLIC: a role without USAGE is refused the
    schema first; with USAGE, the function."""
    session, user = session
    error = refused(session, "SELECT aws_ml.get_setting('region')")
    assert error.diag.message_primary == "permission denied for schema aws_ml"
    assert error.diag.message_hint == f"Grant the role: GRANT aws_ml TO {user}; (a superuser)."

    conn.execute(f"GRANT USAGE ON SCHEMA aws_ml, aws_comprehend TO {user}")
    error = refused(session, "SELECT aws_ml.get_setting('region')")
    assert error.diag.message_primary == "permission denied for function get_setting"
    assert error.diag.message_hint == hint(
        "aws_ml", "aws_ml.get_setting(text)", user, "aws_ml", owner
    )
    error = refused(session, "SELECT * FROM aws_comprehend.detect_sentiment('Great!', 'en')")
    assert error.diag.message_hint == hint(
        "aws_ml",
        "aws_comprehend.detect_sentiment(character varying, character varying, integer)",
        user,
        "aws_ml",
        owner,
    )


def test_the_hint_reaches_the_server_log_and_callers_keep_their_context(session, owner, log):
    session, user = session
    error = refused(session, "SELECT public.read_key()")
    expected = hint(
        "azure_ai_settings_manager", "azure_ai.get_setting(text)", user, "azure_ai", owner
    )
    assert error.diag.message_hint == expected
    assert error.diag.context == (
        "SQL statement \"SELECT azure_ai.get_setting('nope')\"\n"
        "PL/pgSQL function read_key() line 3 at PERFORM"
    )
    assert "ERROR:  permission denied for function get_setting\n" in log()
    assert f"HINT:  {expected}\n" in log()


def test_a_plpgsql_expression_gets_the_hint_when_the_name_is_unique(session, owner):
    """v := f(x) is checked outside the executor: the name alone must tell the function."""
    session, user = session
    error = refused(
        session,
        "DO $$ DECLARE n bigint; BEGIN n := azure_local_ai.model_register('x', 'y'); END $$",
    )
    assert error.diag.message_hint == hint(
        "azure_local_ai_setting_manager",
        "azure_local_ai.model_register(text, text, text, integer)",
        user,
        "azure_local_ai",
        owner,
    )
    # get_setting is azure_ai's and aws_ml's too, both refused: no hint rather than a guess
    error = refused(session, "DO $$ DECLARE v text; BEGIN v := azure_ai.get_setting('x'); END $$")
    assert error.diag.message_hint is None


@pytest.fixture
def users_get_setting(conn):
    """A user's own get_setting in schema public, which PUBLIC may not execute."""
    conn.execute(
        "CREATE FUNCTION public.get_setting(key text) RETURNS text LANGUAGE sql AS 'SELECT key'"
    )
    conn.execute("REVOKE EXECUTE ON FUNCTION public.get_setting(text) FROM PUBLIC")
    yield
    conn.execute("DROP FUNCTION public.get_setting(text)")


def test_a_users_own_function_of_the_same_name_gets_no_hint(session, users_get_setting):
    session, _ = session
    error = refused(session, "SELECT public.get_setting('x')")
    assert error.diag.message_primary == "permission denied for function get_setting"
    assert error.diag.message_hint is None
    # ours, refused too, is told apart by the statement's plan
    assert error_of(session, "SELECT azure_ai.get_setting('x')").diag.message_hint is not None


def test_in_a_database_owners_extension_the_owner_is_told_to_grant(server):
    """A trusted extension created by a database owner who is not a superuser: its owner
    may grant EXECUTE (with the grant option the extension gives it), and does."""
    owner, user = (f"{who}_{secrets.token_hex(4)}" for who in ("owner", "user"))
    with server.connect() as conn:
        conn.execute(f"CREATE ROLE {owner} LOGIN")
        conn.execute(f"CREATE ROLE {user} LOGIN")
        conn.execute(f"CREATE DATABASE {owner} OWNER {owner}")
    try:
        dsn = server.dsn_for(owner)
        with (
            psycopg.connect(make_conninfo(dsn, user=owner), autocommit=True) as as_owner,
            psycopg.connect(make_conninfo(dsn, user=user), autocommit=True) as as_user,
        ):
            as_owner.execute("CREATE EXTENSION azure_ai")
            error = refused(as_user, "SELECT azure_ai.get_setting('azure_ml.auth_type')")
            assert error.diag.message_hint == hint(
                "azure_ai_settings_manager", "azure_ai.get_setting(text)", user, "azure_ai", owner
            )
            as_owner.execute(
                re.search(r"GRANT EXECUTE ON FUNCTION [^;]*", error.diag.message_hint)[0]
            )
            assert as_user.execute(
                "SELECT azure_ai.get_setting('azure_ml.auth_type')"
            ).fetchone() == (None,)
    finally:
        with server.connect() as conn:
            conn.execute(f"DROP DATABASE {owner} WITH (FORCE)")
            conn.execute(f"DROP ROLE {owner}")
            conn.execute(f"DROP ROLE {user}")


# Without shared_preload_libraries


class _ClusterWithoutPreload(Cluster):
    def start(self) -> None:
        super().start()
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("shared_preload_libraries = ''\n")
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-w", "restart")


@pytest.fixture(scope="module")
def without_preload() -> Iterator[str]:
    """A database of a server that does not preload the library, with azure_ai."""
    with _ClusterWithoutPreload() as cluster, cluster.database("no_preload") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute("SHOW shared_preload_libraries").fetchone() == ("",)
            conn.execute("CREATE EXTENSION azure_ai")
            conn.execute("CREATE ROLE refused LOGIN")
        yield dsn


def test_without_preload_our_first_error_loses_its_traceback_too(without_preload):
    with psycopg.connect(without_preload, autocommit=True) as conn:
        for _ in range(2):
            error = error_of(conn, "SELECT azure_ai.get_setting('nope')")
            assert error.diag.context is None


def test_without_preload_the_hint_comes_once_our_code_ran(without_preload):
    with psycopg.connect(make_conninfo(without_preload, user="refused"), autocommit=True) as conn:
        # PostgreSQL refuses before any code of ours ran in this session: no hooks yet
        assert error_of(conn, "SELECT azure_ai.get_setting('x')").diag.message_hint is None
        conn.execute("SELECT azure_ai.version()")
        assert error_of(conn, "SELECT azure_ai.get_setting('x')").diag.message_hint == (
            hint("azure_ai_settings_manager", "azure_ai.get_setting(text)", "refused", "azure_ai")
        )
