"""set_setting calls stay out of the server log and pg_stat_activity, even when they fail
before the function runs, and with statement logging on (extension/log_filter.c)."""

import re
import secrets

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

HIDDEN = "[a set_setting call, hidden by azure_ai_sim]"

# a set_setting function and a key it takes
FUNCTIONS = {
    "azure_ai": ("azure_ai.set_setting", "azure_ml.endpoint_key"),
    "aws_ml": ("aws_ml.set_setting", "aws_secret_access_key"),
}


@pytest.fixture(scope="module", autouse=True)
def extensions(database, server):
    if server.log_path is None:
        pytest.skip("the server log is only readable for the private cluster")
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION azure_ai")
        conn.execute("CREATE EXTENSION aws_ml CASCADE")


@pytest.fixture(params=FUNCTIONS)
def function(request):
    return FUNCTIONS[request.param]


@pytest.fixture
def secret():
    return f"sk-{secrets.token_hex(8)}"


@pytest.fixture
def log(server):
    """What the server logs from now on: log() reads it."""
    start = server.log_path.stat().st_size
    return lambda: server.log_path.read_bytes()[start:].decode()


def activity(conn, session):
    """pg_stat_activity.query of the other session, which is idle."""
    row = conn.execute(
        "SELECT query, state FROM pg_stat_activity WHERE pid = %s", (session.info.backend_pid,)
    ).fetchone()
    assert row[1] == "idle"
    return row[0]


def assert_hidden(conn, session, log, secret):
    assert secret not in log()
    assert secret not in activity(conn, session)


def test_a_non_manager_is_refused_without_the_key_in_the_log(
    conn, database, make_role, function, secret, log
):
    name, key = function
    with psycopg.connect(make_conninfo(database, user=make_role()), autocommit=True) as session:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            session.execute(f"SELECT {name}('{key}', '{secret}')")
        assert "ERROR:  permission denied for " in log()  # aws_ml: for schema aws_ml
        assert "HINT:  Grant the role: GRANT " in log()  # error_report.c
        assert_hidden(conn, session, log, secret)


def test_a_wrong_argument_count_keeps_the_key_out_of_the_log(conn, database, function, secret, log):
    name, key = function
    with psycopg.connect(database, autocommit=True) as session:
        with pytest.raises(psycopg.errors.UndefinedFunction):
            session.execute(f"SELECT {name}('{key}', '{secret}', 'x')")
        assert f"ERROR:  function {name}(unknown, unknown, unknown) does not exist" in log()
        assert_hidden(conn, session, log, secret)


@pytest.mark.parametrize(
    ("template", "error"),
    [
        ("SELECT {name}('{key}', '{secret}'))", 'syntax error at or near ")"'),
        # a forgotten comma: the parser names the key as the token where it stopped
        (
            "SELECT {name}('{key}' '{secret}')",
            'syntax error at or near "[a string, hidden by azure_ai_sim]"',
        ),
    ],
    ids=["parenthesis", "comma"],
)
def test_a_syntax_error_keeps_the_key_out_of_the_log(
    conn, database, function, secret, log, template, error
):
    name, key = function
    with psycopg.connect(database, autocommit=True) as session:
        with pytest.raises(psycopg.errors.SyntaxError):
            session.execute(template.format(name=name, key=key, secret=secret))
        assert f"ERROR:  {error}" in log()
        assert_hidden(conn, session, log, secret)


@pytest.mark.parametrize(
    ("setting", "line"),
    [
        ("log_statement = 'all'", r"LOG:  statement: "),
        ("log_min_duration_statement = 0", r"LOG:  duration: [0-9.]+ ms  statement: "),
    ],
    ids=["log_statement", "log_min_duration_statement"],
)
def test_statement_logging_shows_a_placeholder(
    conn, database, function, secret, log, setting, line
):
    name, key = function
    with psycopg.connect(database, autocommit=True) as session:
        session.execute(f"SET {setting}")
        session.execute(f"SELECT {name}('{key}', '{secret}')")
        session.execute(f"SELECT {name}('{key}', NULL)")
        assert re.search(line + re.escape(HIDDEN), log())
        assert_hidden(conn, session, log, secret)


@pytest.mark.parametrize("how", ["prepared", "binary"])
def test_extended_protocol_parameters_are_hidden(conn, database, function, secret, log, how):
    name, key = function
    with psycopg.connect(database, autocommit=True) as session:
        session.execute("SET log_statement = 'all'")
        session.execute("SET log_min_duration_statement = 0")
        if how == "prepared":
            session.execute(f"SELECT {name}(%s, %s)", (key, secret), prepare=True)
        else:
            session.execute(f"SELECT {name}(%b, %b)", (key, secret))
        session.execute(f"SELECT {name}(%s, NULL)", (key,))
        assert re.search(r"LOG:  execute \S+: " + re.escape(HIDDEN), log())
        assert f"DETAIL:  {HIDDEN}" in log()  # was "parameters: $1 = ..."
        assert_hidden(conn, session, log, secret)


def test_a_bad_parameter_keeps_the_key_out_of_the_log(conn, database, function, secret, log):
    """With log_parameter_max_length_on_error, a failing bind names its parameters."""
    name, key = function
    with psycopg.connect(database, autocommit=True) as session:
        session.execute("SET log_parameter_max_length_on_error = -1")
        with pytest.raises(psycopg.errors.DivisionByZero):
            session.execute(f"SELECT {name}(%s, (%s::text || 1 / 0))", (key, secret))
        assert "ERROR:  division by zero" in log()
        assert_hidden(conn, session, log, secret)
