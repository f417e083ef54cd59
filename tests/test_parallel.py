"""Parallel query: users wrap our functions in PARALLEL SAFE functions, as Aurora's docs say.

SPI inside a parallel plan errors and, through PL/Python, has crashed the server. Our
functions must work there without SPI or refuse cleanly, and leave the backend healthy.
"""

import psycopg
import pytest

import azure_ai_sim
from conftest import force_parallel

# name: (definition, whether force_parallel() runs it in a worker under a Gather)
WRAPPERS = {
    # inlined into the query, then run by the worker
    "sql_safe": ("LANGUAGE sql PARALLEL SAFE AS $$ SELECT azure_ai.get_setting(k) $$", True),
    # not inlined: the call itself happens in the worker
    "plpgsql_safe": (
        "LANGUAGE plpgsql PARALLEL SAFE AS $$ BEGIN RETURN azure_ai.get_setting(k); END $$",
        True,
    ),
    # no Gather: the leader runs it, but still in parallel mode
    "plpgsql_restricted": (
        "LANGUAGE plpgsql PARALLEL RESTRICTED AS $$ BEGIN RETURN azure_ai.get_setting(k); END $$",
        False,
    ),
}


@pytest.fixture(scope="module", autouse=True)
def extension(database):
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION azure_ai")
        conn.execute("SELECT azure_ai.set_setting('azure_ml.auth_type', 'managed-identity')")
        for name, (body, _) in WRAPPERS.items():
            conn.execute(f"CREATE FUNCTION {name}(k text) RETURNS text {body}")


def server_start_time(conn):
    return conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0]


@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
def test_settings_refuse_cleanly_in_parallel_mode(conn, wrapper):
    started, pid = server_start_time(conn), conn.info.backend_pid
    force_parallel(conn)
    query = f"SELECT {wrapper}('azure_ml.auth_type') FROM generate_series(1, 3)"
    plan = "\n".join(row[0] for row in conn.execute(f"EXPLAIN {query}"))
    assert ("Gather" in plan) == WRAPPERS[wrapper][1]
    for _ in range(3):  # repeated failures must not corrupt the backend's Python
        with pytest.raises(psycopg.errors.InvalidTransactionState) as caught:
            conn.execute(query)
        assert caught.value.diag.message_primary == (
            "azure_ai.get_setting: cannot run inside a parallel query: "
            "it needs SQL, which PL/Python cannot run there"
        )
        assert "PARALLEL UNSAFE" in caught.value.diag.message_hint

    force_parallel(conn, on=False)
    assert conn.execute(query).fetchall() == [("managed-identity",)] * 3
    assert (conn.info.backend_pid, server_start_time(conn)) == (pid, started)


def test_version_works_in_parallel_workers(conn):
    force_parallel(conn)
    query = "SELECT azure_ai.version() FROM generate_series(1, 3)"
    plan = "\n".join(row[0] for row in conn.execute(f"EXPLAIN VERBOSE {query}"))
    assert "Gather" in plan and "Output: azure_ai.version()" in plan
    assert conn.execute(query).fetchall() == [(azure_ai_sim.__version__,)] * 3
