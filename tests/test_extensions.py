"""CREATE/DROP of the four extensions: dependencies, schemas, roles, settings tables."""

import hashlib

import psycopg
import pytest

import azure_ai_sim
from azure_ai_sim.boot import SQL_VERSIONS
from cluster import ROOT
from conftest import notices


def schemas(conn: psycopg.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT nspname FROM pg_namespace")}


def roles(conn: psycopg.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT rolname FROM pg_roles")}


def extensions(conn: psycopg.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT extname, extversion FROM pg_extension").fetchall())


def test_azure_ai_needs_no_cascade(conn):
    messages = notices(conn)
    conn.execute("CREATE EXTENSION azure_ai")
    try:
        assert messages == []
        assert extensions(conn)["azure_ai"] == SQL_VERSIONS["azure_ai"][-1]
        assert {"azure_ai", "azure_ml"} <= schemas(conn)
        assert "azure_ai_settings_manager" in roles(conn)
        assert conn.execute("SELECT azure_ai.version()").fetchone() == (azure_ai_sim.__version__,)
    finally:
        conn.execute("DROP EXTENSION azure_ai")
    assert not {"azure_ai", "azure_ml"} & schemas(conn)
    assert "azure_ai_settings_manager" in roles(conn)  # roles belong to the cluster


def test_recreating_azure_ai_in_one_session_keeps_settings_working(conn):
    """Queries are prepared once per backend; they must follow a recreated table."""
    for auth_type in ("managed-identity", "subscription-key"):
        conn.execute("CREATE EXTENSION azure_ai")
        conn.execute("SELECT azure_ai.set_setting('azure_ml.auth_type', %s)", (auth_type,))
        got = conn.execute("SELECT azure_ai.get_setting('azure_ml.auth_type')").fetchone()
        conn.execute("DROP EXTENSION azure_ai")
        assert got == (auth_type,)


def test_azure_local_ai_cascade_installs_vector(conn):
    with pytest.raises(psycopg.errors.UndefinedObject, match='"vector" is not installed'):
        conn.execute("CREATE EXTENSION azure_local_ai")
    messages = notices(conn)
    conn.execute("CREATE EXTENSION azure_local_ai CASCADE")
    try:
        assert messages == ['installing required extension "vector"']
        assert {"azure_local_ai", "vector"} <= extensions(conn).keys()
        assert "azure_local_ai" in schemas(conn)
        assert "azure_local_ai_setting_manager" in roles(conn)
        assert conn.execute("SELECT '[1,2,3]'::vector <-> '[1,2,4]'").fetchone() == (1.0,)
    finally:
        conn.execute("DROP EXTENSION azure_local_ai, vector")


def test_aws_ml_cascade_prints_aurora_notice(conn):
    messages = notices(conn)
    conn.execute("CREATE EXTENSION IF NOT EXISTS aws_ml CASCADE")
    try:
        assert messages == ['installing required extension "aws_commons"']
        assert extensions(conn)["aws_ml"] == SQL_VERSIONS["aws_ml"][-1]
        assert extensions(conn)["aws_commons"] == "1.2"
        assert {"aws_sagemaker", "aws_comprehend", "aws_bedrock", "aws_commons"} <= schemas(conn)
        assert "aws_ml" in roles(conn)
        with pytest.raises(psycopg.errors.DependentObjectsStillExist):
            conn.execute("DROP EXTENSION aws_commons")
    finally:
        conn.execute("DROP EXTENSION aws_ml, aws_commons")


def test_aws_ml_schemas_belong_to_the_aws_ml_role(conn, make_role):
    conn.execute("CREATE EXTENSION aws_ml CASCADE")
    try:
        outsider, member = make_role(), make_role("aws_ml")
        for schema in ("aws_sagemaker", "aws_comprehend", "aws_bedrock"):
            query = "SELECT has_schema_privilege(%s, %s, 'USAGE')"
            assert conn.execute(query, (outsider, schema)).fetchone() == (False,)
            assert conn.execute(query, (member, schema)).fetchone() == (True,)
    finally:
        conn.execute("DROP EXTENSION aws_ml, aws_commons")


def test_all_four_together_their_settings_dumped_and_every_object_commented(conn):
    """COMMENT ON for every object of ours, as \\dx+ lists them (not the row and array
    types PostgreSQL makes for tables); aws_commons keeps Aurora's 1.2 as it is."""
    conn.execute("CREATE EXTENSION azure_ai")
    conn.execute("CREATE EXTENSION azure_local_ai CASCADE")
    conn.execute("CREATE EXTENSION aws_ml CASCADE")
    try:
        dumped = conn.execute(
            "SELECT e.extname, c.oid::regclass::text FROM pg_extension e,"
            " unnest(e.extconfig) AS c(oid) ORDER BY 2"
        ).fetchall()
        assert dumped == [
            ("aws_ml", "aws_ml.settings"),
            ("azure_ai", "azure_ai.settings"),
            ("azure_local_ai", "azure_local_ai.models"),
            ("azure_local_ai", "azure_local_ai.models_id_seq"),
            ("azure_local_ai", "azure_local_ai.settings"),
        ]
        silent = conn.execute(
            "SELECT e.extname, pg_describe_object(d.classid, d.objid, 0)"
            " FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid"
            " WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'"
            " AND e.extname IN ('azure_ai', 'azure_local_ai', 'aws_ml')"
            " AND d.classid <> 'pg_type'::regclass"
            " AND obj_description(d.objid, d.classid::regclass::name) IS NULL ORDER BY 1, 2"
        ).fetchall()
        assert silent == []
    finally:
        conn.execute("DROP EXTENSION azure_ai, azure_local_ai, vector, aws_ml, aws_commons")
    assert not {"azure_ai", "azure_local_ai", "aws_ml", "aws_commons", "vector"} & set(
        extensions(conn)
    )


def test_aws_ml_1_0_updates_to_2_0(conn):
    conn.execute("CREATE EXTENSION aws_ml VERSION '1.0' CASCADE")
    try:
        assert "aws_bedrock" not in schemas(conn)
        conn.execute("ALTER EXTENSION aws_ml UPDATE TO '2.0'")
        assert extensions(conn)["aws_ml"] == "2.0"
        assert "aws_bedrock" in schemas(conn)
        functions = conn.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid"
            " JOIN pg_extension e ON e.oid = d.refobjid WHERE e.extname = 'aws_ml'"
            " AND p.pronamespace::regnamespace::text <> 'aws_ml' ORDER BY 1"
        ).fetchall()
        assert [f[0] for f in functions] == [
            "aws_bedrock.invoke_model(character varying,text,text,text)",
            "aws_bedrock.invoke_model_get_embeddings(character varying,text,text,text)",
            "aws_comprehend.detect_sentiment(character varying,character varying,integer)",
            "aws_sagemaker._invoke_endpoint(text,integer,text[])",
            'aws_sagemaker.invoke_endpoint(character varying,integer,"any")',
        ]
    finally:
        conn.execute("DROP EXTENSION aws_ml, aws_commons")


def test_aws_ml_functions_are_not_for_public(conn, make_role):
    conn.execute("CREATE EXTENSION aws_ml CASCADE")
    try:
        outsider, member = make_role(), make_role("aws_ml")
        for function in (
            "aws_comprehend.detect_sentiment(varchar, varchar, int)",
            "aws_bedrock.invoke_model(varchar, text, text, text)",
            'aws_sagemaker.invoke_endpoint(varchar, int, "any")',
            "aws_ml.get_setting(text)",
        ):
            query = "SELECT has_function_privilege(%s, %s, 'EXECUTE')"
            assert conn.execute(query, (outsider, function)).fetchone() == (False,)
            assert conn.execute(query, (member, function)).fetchone() == (True,)
    finally:
        conn.execute("DROP EXTENSION aws_ml, aws_commons")


def test_aws_commons_helpers(conn):
    conn.execute("CREATE EXTENSION aws_commons")
    try:
        uri = conn.execute(
            "SELECT (aws_commons.create_s3_uri('sample_s3_bucket', 'sample.csv', 'us-east-1')).*"
        ).fetchone()
        assert uri == ("sample_s3_bucket", "sample.csv", "us-east-1")
        credentials = conn.execute(
            "SELECT aws_commons.create_aws_credentials("
            "'sample_access_key', 'sample_secret_key', '')::text"
        ).fetchone()
        assert credentials == ('(sample_access_key,sample_secret_key,"")',)
    finally:
        conn.execute("DROP EXTENSION aws_commons")


def test_azure_local_ai_0_1_0_updates_to_0_1_1(conn):
    """A database made by the previous release: its 0.1.0 functions keep working with
    this package, and the update brings 0.1.1's (here: the check of a 2-D ids array)."""
    conn.execute("CREATE EXTENSION azure_local_ai VERSION '0.1.0' CASCADE")
    call = (
        "SELECT count(*) FROM azure_local_ai.create_embeddings("
        "'multilingual-e5-small:v1-int8', ARRAY['a', 'b', 'c', 'd'], ARRAY[[1, 2], [3, 4]])"
    )
    try:
        assert conn.execute(call).fetchone() == (4,)  # 0.1.0: four rows with NULL ids
        conn.execute("ALTER EXTENSION azure_local_ai UPDATE")
        assert extensions(conn)["azure_local_ai"] == SQL_VERSIONS["azure_local_ai"][-1]
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="one-dimensional"):
            conn.execute(call)
    finally:
        conn.execute("DROP EXTENSION azure_local_ai, vector")


def test_released_scripts_never_change():
    """pgvector's contract: a released script stays as it is (databases made with it must
    reach the same state by the update scripts as new ones); a change of SQL goes into a
    new version with its upgrade script. sql/released.sha256 lists every released script."""
    listing = (ROOT / "sql" / "released.sha256").read_text().splitlines()
    released = {name: digest for digest, name in (line.split("  ") for line in listing)}
    for script in sorted((ROOT / "sql").glob("*.sql")):
        assert script.name in released, f"{script.name} is not in sql/released.sha256"
        digest = hashlib.sha256(script.read_bytes()).hexdigest()
        assert digest == released[script.name], f"{script.name} changed after its release"
