"""A database owner who is not a superuser, as the admin user of Azure or Aurora: creates
the three extensions (they are trusted), uses and delegates them in their database, and
gains nothing beyond it (README, "Security model"): no Python of their own, no server
file outside the model directory, no settings of another database, no cluster role."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from azure_ai_sim.boot import SQL_VERSIONS
from cluster import Server
from conftest import FP32, model_files


@dataclass
class Owned:
    owner: str
    dsn: str  # the owner's connection to their database
    model_directory: str  # where make install put the built-in models

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.dsn, autocommit=True)


@pytest.fixture(scope="module")
def owned(server: Server) -> Iterator[Owned]:
    """A role with only LOGIN, owner of a database in which it created the extensions.
    pgvector is not trusted (its authors leave that to each DBA): a superuser created it
    there first, as README says, and CASCADE finds it."""
    owner = f"owner_{secrets.token_hex(4)}"
    with server.connect() as conn:
        conn.execute(f"CREATE ROLE {owner} LOGIN")
        conn.execute(f"CREATE DATABASE {owner} OWNER {owner}")
    with server.connect(owner) as conn:
        conn.execute("CREATE EXTENSION vector")
    dsn = make_conninfo(server.dsn_for(owner), user=owner)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for extension in ("azure_ai", "azure_local_ai", "aws_ml"):
                conn.execute(f"CREATE EXTENSION {extension} CASCADE")
        with server.connect(owner) as conn:
            model_path, _ = model_files(conn, FP32)  # <dir>/multilingual-e5-small/v1/...
        yield Owned(owner, dsn, str(Path(model_path).parents[2]))
    finally:
        with server.connect() as conn:
            conn.execute(f"DROP DATABASE {owner} WITH (FORCE)")
            conn.execute(f"DROP ROLE {owner}")


def test_the_owner_created_them_all(owned, server):
    with server.connect() as conn:
        (superuser,) = conn.execute("SELECT current_user").fetchone()
    with owned.connect() as conn:
        rows = conn.execute(
            "SELECT extname, extversion, extowner::regrole::text FROM pg_extension"
            " WHERE extname <> 'plpgsql' ORDER BY 1"
        ).fetchall()
    assert rows == [
        ("aws_commons", "1.2", owned.owner),
        ("aws_ml", SQL_VERSIONS["aws_ml"][-1], owned.owner),
        ("azure_ai", SQL_VERSIONS["azure_ai"][-1], owned.owner),
        ("azure_local_ai", SQL_VERSIONS["azure_local_ai"][-1], owned.owner),
        ("vector", "0.8.0", superuser),
    ]


def test_without_pgvector_a_superuser_must_create_it_first(owned, server):
    with server.database("no_vector") as dsn, server.connect() as conn:
        conn.execute(f"GRANT CREATE ON DATABASE {conninfo_to_dict(dsn)['dbname']} TO {owned.owner}")
        with (
            psycopg.connect(make_conninfo(dsn, user=owned.owner)) as as_owner,
            pytest.raises(psycopg.errors.InsufficientPrivilege, match='extension "vector"'),
        ):
            as_owner.execute("CREATE EXTENSION azure_local_ai CASCADE")


def test_the_owner_uses_settings_embeddings_and_models(owned):
    with owned.connect() as conn:
        conn.execute("SELECT azure_ai.set_setting('azure_ml.scoring_endpoint', 'http://h/score')")
        assert conn.execute(
            "SELECT azure_ai.get_setting('azure_ml.scoring_endpoint')"
        ).fetchone() == ("http://h/score",)
        conn.execute("SELECT aws_ml.set_setting('region', 'eu-west-1')")
        assert conn.execute("SELECT aws_ml.get_setting('region')").fetchone() == ("eu-west-1",)
        conn.execute("SELECT azure_local_ai.set_setting('intra_op_parallelism', '1')")
        (dimensions,) = conn.execute(
            "SELECT array_length(azure_local_ai.create_embeddings(%s, 'query: hi'), 1)", (FP32,)
        ).fetchone()
        assert dimensions == 384
        # A model of the model directory: the built-in files, under another name.
        int8 = f"{owned.model_directory}/multilingual-e5-small/v1/model-int8.onnx"
        conn.execute("SELECT azure_local_ai.model_register('mine:v1', %s)", (int8,))
        (dimensions,) = conn.execute(
            "SELECT array_length(azure_local_ai.create_embeddings('mine:v1', 'x'), 1)"
        ).fetchone()
        conn.execute("SELECT azure_local_ai.model_unregister('mine:v1')")
    assert dimensions == 384


def test_the_owner_delegates_in_their_database(owned, server):
    colleague = f"colleague_{secrets.token_hex(4)}"
    with server.connect() as conn:
        conn.execute(f"CREATE ROLE {colleague} LOGIN")
    try:
        with owned.connect() as conn:
            conn.execute(f"GRANT EXECUTE ON FUNCTION azure_ai.get_setting(text) TO {colleague}")
            conn.execute(f"GRANT USAGE ON SCHEMA aws_ml TO {colleague}")
            conn.execute(f"GRANT EXECUTE ON FUNCTION aws_ml.get_setting(text) TO {colleague}")
        dsn = make_conninfo(owned.dsn, user=colleague)
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute("SELECT aws_ml.get_setting('region')").fetchone() is not None
            conn.execute("SELECT azure_ai.get_setting('azure_ml.scoring_endpoint')")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT azure_ai.set_setting('azure_ml.scoring_endpoint', NULL)")
    finally:  # the owner's grants: only the owner revokes them (the grantor)
        with owned.connect() as conn:
            conn.execute(f"REVOKE ALL ON FUNCTION azure_ai.get_setting(text) FROM {colleague}")
            conn.execute(f"REVOKE ALL ON SCHEMA aws_ml FROM {colleague}")
            conn.execute(f"REVOKE ALL ON FUNCTION aws_ml.get_setting(text) FROM {colleague}")
        with server.connect() as conn:
            conn.execute(f"DROP ROLE {colleague}")


def test_the_owner_dumps_and_restores_their_database(owned, server):
    """pg_dump as the owner works and carries the settings; restored by the owner into a
    new database of theirs, the settings come back. Registry rows are not the owner's to
    write (a row names files the server reads): the registry's COPY fails, the rest goes on."""
    with owned.connect() as conn:
        conn.execute("SELECT azure_ai.set_setting('azure_ml.endpoint_key', 'dump-me')")
        conn.execute("SELECT aws_ml.set_setting('region', 'eu-west-1')")
        conn.execute("SELECT azure_local_ai.set_setting('spin_control', 'false')")
    dump = server.run("pg_dump", "-d", owned.dsn)
    assert dump.returncode == 0, dump.stderr
    copy = f"{owned.owner}_copy"
    with server.connect() as conn:
        conn.execute(f"CREATE DATABASE {copy} OWNER {owned.owner}")
    try:
        with server.connect(copy) as conn:
            conn.execute("CREATE EXTENSION vector")
        as_owner = make_conninfo(server.dsn_for(copy), user=owned.owner)
        restore = server.run("psql", "-X", "-q", "-d", as_owner, input=dump.stdout)
        errors = [line for line in restore.stderr.splitlines() if "ERROR" in line]
        assert errors == [
            "ERROR:  must be owner of extension vector",  # pg_dump's COMMENT ON EXTENSION
            "ERROR:  permission denied for table models",
            "ERROR:  permission denied for sequence models_id_seq",
        ], restore.stderr
        with psycopg.connect(as_owner) as conn:
            assert conn.execute(
                "SELECT azure_ai.get_setting('azure_ml.endpoint_key'),"
                " aws_ml.get_setting('region'), azure_local_ai.get_setting('spin_control')"
            ).fetchone() == ("dump-me", "eu-west-1", "false")
    finally:
        with server.connect() as conn:
            conn.execute(f"DROP DATABASE {copy} WITH (FORCE)")


# --- what the owner cannot do -------------------------------------------------------------


@pytest.mark.parametrize("language", ["azure_ai_plpython", "azure_local_ai_plpython",
                                      "aws_ml_plpython", "plpython3u"])  # fmt: skip
def test_no_python_of_their_own(owned, language):
    with owned.connect() as conn:
        exists = conn.execute("SELECT count(*) FROM pg_language WHERE lanname = %s", (language,))
        if exists.fetchone() == (0,):
            with pytest.raises(psycopg.errors.UndefinedObject):
                conn.execute(f"CREATE FUNCTION f() RETURNS int LANGUAGE {language} AS 'return 1'")
            return
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
            conn.execute(f"CREATE FUNCTION f() RETURNS int LANGUAGE {language} AS 'return 1'")


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE OR REPLACE FUNCTION azure_ai.version() RETURNS text LANGUAGE sql RETURN 'x'",
        "ALTER FUNCTION azure_ml.invoke(jsonb, text) SET search_path = public",
        "ALTER FUNCTION azure_local_ai.model_metadata(text) OWNER TO CURRENT_USER",
        "INSERT INTO azure_local_ai.models (model_uri, model_path, tokenizer_path, metadata,"
        " builtin) VALUES ('x:v1', '/etc/passwd', '/etc/passwd', '{}', true)",
        "UPDATE azure_local_ai.models SET model_path = '/etc/passwd'",
        "UPDATE azure_ai.settings SET value = 'http://h'",
        "DELETE FROM aws_ml.settings",
        "GRANT azure_ai_settings_manager TO CURRENT_USER",
        "GRANT aws_ml TO CURRENT_USER",
        "ALTER EXTENSION azure_ai DROP FUNCTION azure_ai.version()",
    ],
)
def test_nothing_of_ours_changes_but_through_our_functions(owned, statement):
    with owned.connect() as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement)


@pytest.mark.parametrize(
    ("model_path", "tokenizer_path"),
    [
        ("/etc/passwd", None),
        ("{models}/../../../../../etc/passwd", None),
        ("{models}-other/model.onnx", None),
        ("{models}/multilingual-e5-small/v1/model.onnx", "/etc/passwd"),
    ],
)
def test_no_server_file_outside_the_model_directory(owned, server, model_path, tokenizer_path):
    model_path = model_path.format(models=owned.model_directory)
    with owned.connect() as conn, pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
        conn.execute(
            "SELECT azure_local_ai.model_register('stolen:v1', %s, %s)",
            (model_path, tokenizer_path),
        )
    what = "tokenizer_path" if tokenizer_path else "model_path"
    assert caught.value.diag.message_primary == (
        f"azure_local_ai.model_register: {what} {tokenizer_path or model_path} is outside the"
        f" model directory {owned.model_directory}"
    )
    assert "pg_read_server_files" in caught.value.diag.message_hint
    with server.connect(owned.owner) as conn:
        assert conn.execute(
            "SELECT count(*) FROM azure_local_ai.models WHERE model_uri = 'stolen:v1'"
        ).fetchone() == (0,)


def test_no_settings_of_another_database(owned, server):
    """The owner may connect to another database (CONNECT is PUBLIC's by default) where a
    superuser created the extensions: none of their functions there are the owner's."""
    with server.database("other") as other:
        with psycopg.connect(other, autocommit=True) as conn:
            for extension in ("azure_ai", "azure_local_ai", "aws_ml"):
                conn.execute(f"CREATE EXTENSION {extension} CASCADE")
        as_owner = make_conninfo(other, user=owned.owner)
        for statement in (
            "SELECT azure_ai.set_setting('azure_ml.scoring_endpoint', 'http://mine/score')",
            "SELECT azure_ai.get_setting('azure_ml.endpoint_key')",
            "SELECT azure_local_ai.set_setting('intra_op_parallelism', '999')",
            "SELECT aws_ml.set_setting('sagemaker.endpoint_url', 'http://mine')",
            f"SELECT azure_local_ai.model_register('x:v1', '{owned.model_directory}/x.onnx')",
        ):
            with (
                psycopg.connect(as_owner, autocommit=True) as conn,
                pytest.raises(psycopg.errors.InsufficientPrivilege),
            ):
                conn.execute(statement)


def test_an_earlier_azure_local_ai_lets_only_file_readers_register(server, owned):
    """0.1.0 and 0.1.1 name no model directory: their managers who may not read every
    server file are refused, and told to update."""
    int8 = f"{owned.model_directory}/multilingual-e5-small/v1/model-int8.onnx"
    manager = f"manager_{secrets.token_hex(4)}"
    with server.database("local_ai_old") as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION azure_local_ai VERSION '0.1.1' CASCADE")
        conn.execute(f"CREATE ROLE {manager} IN ROLE azure_local_ai_setting_manager")
        try:
            conn.execute(f"SET ROLE {manager}")
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
                conn.execute("SELECT azure_local_ai.model_register('x:v1', %s)", (int8,))
        finally:
            conn.execute("RESET ROLE")
            conn.execute(f"DROP ROLE {manager}")
    assert "with this version of azure_local_ai" in caught.value.diag.message_primary
    assert caught.value.diag.message_hint.startswith("ALTER EXTENSION azure_local_ai UPDATE")
