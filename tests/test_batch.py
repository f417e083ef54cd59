"""Batch mode (extension/batch.c): per-row calls in a query's SELECT list are gathered into
batches and sent as batch requests, as Aurora does. Every query must give exactly what it
gives with batching off; EXPLAIN shows the Batch node and Aurora's "Batch Processing" line."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

import psycopg
import pytest

from azure_ai_sim.sim import AzureMLSimulator, ComprehendSimulator, SageMakerSimulator
from conftest import INT8, point_aws_at

ALIASES = {"sagemaker_model_endpoint_name": "field-count", "ep": "echo",
           "multiple_output_endpoint": "housing-multi"}  # fmt: skip
BATCH_LINE = re.compile(
    r"Batch Processing: num batches=(\d+) avg/min/max batch size=(\d+\.\d{3})/(\d+\.\d{3})/"
    r"(\d+\.\d{3}) avg/min/max batch call time=\d+\.\d{3}/\d+\.\d{3}/\d+\.\d{3}$"
)
TEXTS = [
    "The support team was wonderful, thank you!",
    "The product broke after one day. Terrible.",
    "I received the parcel.",
    "Le patient va très bien, excellent progrès.",
    "",
    None,
]


@pytest.fixture(scope="module")
def simulators() -> Iterator[dict]:
    with (
        ComprehendSimulator() as comprehend,
        SageMakerSimulator() as sagemaker,
        AzureMLSimulator() as azureml,
    ):
        sagemaker.aliases = ALIASES
        yield {"comprehend": comprehend, "sagemaker": sagemaker, "azureml": azureml}


@pytest.fixture(scope="module")
def db(database: str, simulators: dict) -> str:
    """The three extensions, pointed at the simulators, and tables of 40 rows."""
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION azure_ai")
        conn.execute("CREATE EXTENSION azure_local_ai CASCADE")
        conn.execute("CREATE EXTENSION aws_ml CASCADE")
        point_aws_at(conn, {name: simulators[name].url for name in ("comprehend", "sagemaker")})
        azureml = simulators["azureml"]
        conn.execute(
            "SELECT azure_ai.set_setting('azure_ml.scoring_endpoint', %s)",
            (azureml.url + "/score",),
        )
        conn.execute("SELECT azure_ai.set_setting('azure_ml.endpoint_key', %s)", (azureml.keys[0],))
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, x text, lang text, n real)")
        conn.execute(
            "INSERT INTO t SELECT g, (%s::text[])[1 + g %% 6], (ARRAY['en', 'fr'])[1 + g %% 2],"
            " g * 1.5 FROM generate_series(1, 40) g",
            (TEXTS,),
        )
        conn.execute("CREATE TABLE u (id int, w text)")
        conn.execute("INSERT INTO u SELECT g, 'w' || g FROM generate_series(1, 40, 3) g")
    return database


def rows(conn: psycopg.Connection, query: str, batching: bool) -> list:
    conn.execute(f"SET azure_ai_sim.enable_batch_mode = {'on' if batching else 'off'}")
    return conn.execute(query).fetchall()


def batch_lines(conn: psycopg.Connection, query: str) -> list[tuple[int, float, float]]:
    """(num batches, min size, max size) of each Batch node in EXPLAIN ANALYZE."""
    conn.execute("SET azure_ai_sim.enable_batch_mode = on")
    plan = "\n".join(r[0] for r in conn.execute(f"EXPLAIN (ANALYZE, COSTS OFF) {query}"))
    return [
        (int(m[1]), float(m[3]), float(m[4]))
        for m in (BATCH_LINE.search(line.strip()) for line in plan.splitlines())
        if m
    ]


@pytest.fixture
def conn(db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(db, autocommit=True) as conn:
        yield conn


# --- Aurora's examples, verbatim ----------------------------------------------------------

SENTIMENT = (
    "SELECT id, (aws_comprehend.detect_sentiment(x, lang)).sentiment,"
    " (aws_comprehend.detect_sentiment(x, lang)).confidence FROM t WHERE x <> '' ORDER BY id"
)


def test_detect_sentiment_in_a_select_list_is_one_batch(conn):
    assert batch_lines(conn, SENTIMENT) == [(1, 27.0, 27.0)]
    assert rows(conn, SENTIMENT, True) == rows(conn, SENTIMENT, False)


def test_the_batch_size_bounds_each_batch(conn):
    conn.execute("SET azure_ai_sim.batch_size = 7")
    try:
        assert batch_lines(conn, SENTIMENT) == [(4, 6.0, 7.0)]
        assert rows(conn, SENTIMENT, True) == rows(conn, SENTIMENT, False)
    finally:
        conn.execute("RESET azure_ai_sim.batch_size")


def test_each_function_chooses_its_batch_size_unless_the_setting_does(conn):
    sentiment = "SELECT aws_comprehend.detect_sentiment('good', 'en') FROM generate_series(1, 2500)"
    csv = "SELECT aws_sagemaker.invoke_endpoint('echo', NULL, g) FROM generate_series(1, 2500) g"
    both = (
        "SELECT aws_sagemaker.invoke_endpoint('echo', NULL, g), azure_ml.invoke(jsonb_build_object("
        "'input_data', jsonb_build_array(jsonb_build_array(g, 2, 3, 4, 5, 6, 7, 8))),"
        " deployment_name => 'Housingprediction')"
    )
    assert batch_lines(conn, sentiment) == [(3, 500.0, 1000.0)]
    # SageMaker and azure_ml.score: 1,000 rows for each request in flight
    assert batch_lines(conn, csv) == [(1, 2500.0, 2500.0)]
    scored = "SELECT azure_ml.score(ARRAY[g, 2, 3, 4, 5, 6, 7, 8]) FROM generate_series(1, 2500) g"
    assert batch_lines(conn, scored) == [(1, 2500.0, 2500.0)]
    conn.execute("SET azure_ai_sim.max_parallel_requests = 2")
    try:
        assert batch_lines(conn, csv) == [(2, 500.0, 2000.0)]
        # a node batching both takes the smaller choice
        assert batch_lines(conn, both + " FROM generate_series(1, 1500) g") == [(2, 500.0, 1000.0)]
        conn.execute("SET azure_ai_sim.batch_size = 300")
        assert batch_lines(conn, csv) == [(9, 100.0, 300.0)]
    finally:
        conn.execute("RESET azure_ai_sim.max_parallel_requests")
        conn.execute("RESET azure_ai_sim.batch_size")
    assert rows(conn, csv, True) == rows(conn, csv, False)


def test_rows_and_arguments_of_a_call_take_at_most_work_mem(conn, simulators):
    """Rows of large values are gathered, and their arguments sent, in fewer rows."""
    sagemaker = simulators["sagemaker"]
    wide = (
        "SELECT id, aws_sagemaker.invoke_endpoint('echo', NULL, id, y) FROM (SELECT g AS id,"
        " repeat('y', 10000) AS y FROM generate_series(1, {rows}) g OFFSET 0) w ORDER BY id"
    )
    large = wide.replace(", y)", ", repeat(y, 10))").format(rows=5)
    wide = wide.format(rows=30)
    conn.execute("SET work_mem = '64kB'")
    try:
        # a row of w takes 10 kB: 7 rows reach 64 kB
        assert batch_lines(conn, wide) == [(5, 2.0, 7.0)]
        # five rows gathered at once, but each row's 100 kB argument is a request alone
        assert batch_lines(conn, large) == [(1, 5.0, 5.0)]
        sagemaker.reset_counts()
        assert rows(conn, large, True) == rows(conn, large, False)
        assert sagemaker.served == 5 + 5
    finally:
        conn.execute("RESET work_mem")


def test_calls_below_aggregates_windows_and_in_each_branch_of_a_union_are_batched(conn):
    call = "aws_sagemaker.invoke_endpoint('ep', NULL, id, x)"
    below = f"(SELECT id, {call} AS r FROM t OFFSET 0) s"
    queries = {
        f"SELECT count(r), min(r) FROM {below}": [(1, 40.0, 40.0)],
        f"SELECT id, r, lead(r) OVER (ORDER BY id) FROM {below}": [(1, 40.0, 40.0)],
        f"SELECT {call} FROM t WHERE id < 10 UNION ALL SELECT {call} FROM t WHERE id > 35": [
            (1, 9.0, 9.0),
            (1, 5.0, 5.0),
        ],  # fmt: skip
    }
    for query, batches in queries.items():
        assert batch_lines(conn, query) == batches, query
        assert rows(conn, query, True) == rows(conn, query, False)


def test_explain_verbose_names_the_batched_calls(conn):
    conn.execute("SET azure_ai_sim.enable_batch_mode = on")
    plan = [r[0] for r in conn.execute(f"EXPLAIN (VERBOSE, COSTS OFF) {SENTIMENT}")]
    assert plan[0] == "Custom Scan (Batch)"
    assert (
        "  Batched Calls: aws_comprehend.detect_sentiment"
        "(character varying,character varying,integer)" in plan
    )
    conn.execute("SET azure_ai_sim.enable_batch_mode = off")
    plan = [r[0] for r in conn.execute(f"EXPLAIN (COSTS OFF) {SENTIMENT}")]
    assert not any("Batch" in line for line in plan)


def test_update_set_from_detect_sentiment_as_aurora_shows(conn):
    conn.execute(
        "CREATE TEMP TABLE clinician_notes AS SELECT id, x AS french_notes,"
        " NULL::varchar AS sentiment, NULL::real AS confidence FROM t"
    )
    update = (
        "UPDATE clinician_notes SET sentiment = (aws_comprehend.detect_sentiment (french_notes,"
        " 'fr')).sentiment, confidence = (aws_comprehend.detect_sentiment (french_notes,"
        " 'fr')).confidence WHERE clinician_notes.french_notes IS NOT NULL AND"
        " LENGTH(TRIM(clinician_notes.french_notes)) > 0 AND clinician_notes.sentiment IS NULL"
    )
    assert batch_lines(conn, update) == [(1, 27.0, 27.0)]
    batched = conn.execute("SELECT * FROM clinician_notes ORDER BY id").fetchall()
    conn.execute("UPDATE clinician_notes SET sentiment = NULL, confidence = NULL")
    conn.execute("SET azure_ai_sim.enable_batch_mode = off")
    conn.execute(update)
    assert conn.execute("SELECT * FROM clinician_notes ORDER BY id").fetchall() == batched


AURORA_WRAPPERS = """
CREATE FUNCTION classify_event (IN arg1 INT, IN arg2 DATE, OUT category INT)
AS $$
    SELECT aws_sagemaker.invoke_endpoint (
        'sagemaker_model_endpoint_name', NULL,
        arg1, arg2                        -- model inputs are separate arguments
        )::INT                            -- cast the output to INT
$$ LANGUAGE SQL PARALLEL SAFE COST 5000;
CREATE FUNCTION regression_model (params REAL[], OUT estimate REAL)
AS $$
    SELECT aws_sagemaker.invoke_endpoint(
        'sagemaker_model_endpoint_name', NULL, params)::REAL
$$ LANGUAGE SQL PARALLEL SAFE COST 5000;
CREATE TYPE company_forecasts AS (six_month_forecast REAL, twelve_month_forecast REAL);
CREATE FUNCTION analyze_company (IN p1 REAL, IN p2 REAL, IN p3 REAL, IN p4 REAL,
                                 IN p5 REAL, IN p6 REAL, IN p7 REAL, IN p8 REAL,
                                 OUT forecasts company_forecasts)
AS $$
    SELECT (aws_sagemaker.invoke_endpoint('multiple_output_endpoint', NULL,
            p1, p2, p3, p4, p5, p6, p7, p8))::company_forecasts
$$ LANGUAGE SQL PARALLEL SAFE COST 5000;
"""


@pytest.mark.parametrize(
    ("query", "batches"),
    [
        ("SELECT id, classify_event(id, DATE '2024-01-01' + id) FROM t ORDER BY id", [(1, 40, 40)]),
        ("SELECT regression_model(ARRAY[n, n * 2, 3.0]::real[]) FROM t ORDER BY id", [(1, 40, 40)]),
        ("SELECT (analyze_company(n, 41, 6.984, 1.024, 322, 2.556, 37.88, -122.23)).*"
         " FROM t ORDER BY id", [(1, 40, 40)]),
        ("SELECT aws_sagemaker.invoke_endpoint('ep', NULL, COALESCE(x, 'none')) FROM t"
         " ORDER BY id", [(1, 40, 40)]),
        ("SELECT COALESCE(aws_sagemaker.invoke_endpoint('ep', NULL, x), 'none') FROM t"
         " ORDER BY id", [(1, 40, 40)]),
    ],
)  # fmt: skip
def test_aurora_sql_wrappers_are_inlined_and_batched(conn, query, batches):
    conn.execute("BEGIN")
    try:
        conn.execute(AURORA_WRAPPERS)
        assert batch_lines(conn, query) == [(n, float(a), float(b)) for n, a, b in batches]
        assert rows(conn, query, True) == rows(conn, query, False)
    finally:
        conn.execute("ROLLBACK")


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TEMP TABLE scored AS SELECT id, aws_sagemaker.invoke_endpoint('ep', NULL, x)"
        " AS r FROM t",
        "CREATE MATERIALIZED VIEW scored AS SELECT id, aws_sagemaker.invoke_endpoint('ep',"
        " NULL, x) AS r FROM t",
        "CREATE TEMP TABLE scored AS SELECT id, NULL::varchar AS r FROM t WHERE false;"
        " INSERT INTO scored SELECT id, aws_sagemaker.invoke_endpoint('ep', NULL, x) FROM t",
    ],
)
def test_writes_from_a_select_are_batched(conn, statement):
    def run(batching: bool) -> list:
        conn.execute("BEGIN")
        try:
            conn.execute(f"SET LOCAL azure_ai_sim.enable_batch_mode = {batching}")
            conn.execute(statement)
            return conn.execute("SELECT * FROM scored ORDER BY id").fetchall()
        finally:
            conn.execute("ROLLBACK")

    last = statement.split(";")[-1]
    if not last.lstrip().startswith("CREATE"):
        conn.execute("BEGIN")
        try:
            conn.execute(statement.split(";")[0])
            assert batch_lines(conn, last) == [(1, 40.0, 40.0)]
        finally:
            conn.execute("ROLLBACK")
    assert run(True) == run(False)


def test_local_embeddings_per_row_are_one_batch(conn):
    query = (
        f"SELECT id, azure_local_ai.create_embeddings('{INT8}', coalesce(x, 'nothing'))"
        " FROM t ORDER BY id"
    )
    assert batch_lines(conn, query) == [(1, 40.0, 40.0)]
    assert rows(conn, query, True) == rows(conn, query, False)


def test_without_exact_batches_int8_rows_are_embedded_as_the_array_form_does(conn):
    per_row = (
        f"SELECT azure_local_ai.create_embeddings('{INT8}', coalesce(x, 'nothing'))"
        " FROM t ORDER BY id"
    )
    array_form = (
        f"SELECT azure_local_ai.create_embeddings('{INT8}',"
        " (SELECT array_agg(coalesce(x, 'nothing') ORDER BY id) FROM t))"
    )
    exact = rows(conn, per_row, True)
    conn.execute("SET azure_ai_sim.exact_batches = off")
    try:
        shared = rows(conn, per_row, True)
    finally:
        conn.execute("RESET azure_ai_sim.exact_batches")
    assert shared == conn.execute(array_form).fetchall()
    # what the setting gives up: the int8 model's runs change the last bits
    assert shared != exact
    assert max(abs(a - b) for x, y in zip(shared, exact, strict=True)
               for a, b in zip(x[0], y[0], strict=True)) < 0.05  # fmt: skip


def test_limit_sends_one_batch(conn):
    query = "SELECT aws_sagemaker.invoke_endpoint('ep', NULL, id) FROM t LIMIT 10"
    conn.execute("SET azure_ai_sim.batch_size = 16")
    try:
        assert batch_lines(conn, query) == [(1, 16.0, 16.0)]
    finally:
        conn.execute("RESET azure_ai_sim.batch_size")


def test_the_privilege_to_call_is_still_checked(conn, make_role):
    role = make_role()
    conn.execute(f"GRANT SELECT ON t TO {role}")
    conn.execute(f"GRANT USAGE ON SCHEMA aws_comprehend TO {role}")
    conn.execute(f"SET ROLE {role}")
    try:
        conn.execute("SET azure_ai_sim.enable_batch_mode = on")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="detect_sentiment"):
            conn.execute(SENTIMENT)
    finally:
        conn.execute("RESET ROLE")
        conn.execute(f"REVOKE ALL ON t FROM {role}")
        conn.execute(f"REVOKE ALL ON SCHEMA aws_comprehend FROM {role}")


def test_a_scrollable_cursor_is_left_per_row(conn):
    conn.execute("SET azure_ai_sim.enable_batch_mode = on")
    with conn.transaction():
        conn.execute(
            "DECLARE c SCROLL CURSOR FOR SELECT id, aws_sagemaker.invoke_endpoint('ep', NULL, id)"
            " FROM t ORDER BY id"
        )
        forward = conn.execute("FETCH 5 FROM c").fetchall()
        assert conn.execute("FETCH BACKWARD 2 FROM c").fetchall() == forward[3::-1][:2]


# --- differential: many query shapes, batching on against off ----------------------------

CALLS = [
    "(aws_comprehend.detect_sentiment(x, lang)).sentiment",
    "aws_comprehend.detect_sentiment(coalesce(x, 'x'), 'en')::text",
    "aws_sagemaker.invoke_endpoint('ep', NULL, id, x, n)",
    "aws_sagemaker.invoke_endpoint('ep', 5, VARIADIC ARRAY[x, lang])",
    "azure_ml.invoke(jsonb_build_object('input_data', jsonb_build_array(jsonb_build_array("
    "n, 2, 3, 4, 5, 6, 7, 8))), deployment_name => 'Housingprediction')::text",
    f"md5(azure_local_ai.create_embeddings('{INT8}', coalesce(x, ''))::text)",
]
SHAPES = [
    "SELECT id, {f} FROM t ORDER BY id",
    "SELECT {f} AS r FROM t WHERE id % 3 = 0 ORDER BY id",
    "SELECT DISTINCT {f} AS r FROM t ORDER BY 1",
    "SELECT id, {f} FROM t ORDER BY id LIMIT 5 OFFSET 3",
    "SELECT * FROM (SELECT id, {f} AS r FROM t) s WHERE id > 10 ORDER BY id",
    "WITH c AS MATERIALIZED (SELECT id, {f} AS r FROM t) SELECT * FROM c ORDER BY id DESC",
    "SELECT t.id, u.w, {f} FROM t JOIN u ON t.id = u.id ORDER BY 1",
    "SELECT id, {f}, row_number() OVER (ORDER BY id DESC) FROM t ORDER BY id",
    "SELECT id, CASE WHEN id % 2 = 0 THEN {f} END FROM t ORDER BY id",
    "SELECT id, COALESCE(x, {f}) FROM t ORDER BY id",
    "SELECT {f} AS r FROM t WHERE id < 5 UNION ALL SELECT {f} FROM t WHERE id > 35 ORDER BY 1",
    "SELECT t.id, l.r FROM t, LATERAL (SELECT {f} AS r) l ORDER BY t.id",
    "SELECT {f} FROM t WHERE false",
    "SELECT id, {f} FROM t WHERE x IS NULL ORDER BY id",
    "SELECT lang, count(*), max({f}) FROM t GROUP BY lang HAVING count(*) > 1 ORDER BY 1",
    "SELECT lang, {f} FROM (SELECT lang, min(x) AS x, min(id) AS id, min(n) AS n FROM t"
    " GROUP BY lang) g ORDER BY 1",
    "SELECT id, ({f}) IS NULL, length(({f})::text) FROM t ORDER BY id",
    "SELECT id, (SELECT {f} FROM t t2 WHERE t2.id = t.id) FROM t ORDER BY id",
    "SELECT id, {f} FROM t WHERE id IN (SELECT id FROM u) ORDER BY id",
    "SELECT array_agg(r ORDER BY id) FROM (SELECT id, {f} AS r FROM t) s",
    "SELECT id, {f}, random() < 2 FROM t ORDER BY id FOR UPDATE",
    "SELECT * FROM (SELECT id, {f} AS r FROM t ORDER BY id LIMIT 12) s ORDER BY id DESC",
    "SELECT id, {f} FROM t UNION SELECT id, {f} FROM t ORDER BY 1, 2",
    "SELECT g, (SELECT {f} FROM t WHERE id = g) FROM generate_series(1, 5) g ORDER BY g",
    "SELECT id, {f} FROM t ORDER BY {f}, id",
    "SELECT id, {f} FROM t WHERE id BETWEEN 1 AND 1",
    "SELECT count({f}) FROM t",
    "SELECT id, {f} FROM t ORDER BY id FETCH FIRST 3 ROWS ONLY",
    "SELECT n, {f} FROM t WHERE n > 0 AND lang = 'fr' ORDER BY n",
    "SELECT id, {f} FROM t t1 WHERE EXISTS (SELECT 1 FROM u WHERE u.id = t1.id + 1) ORDER BY id",
    "SELECT id, {f} FROM t ORDER BY id OFFSET 38",
    "SELECT id, {f}, {f} FROM t ORDER BY id",
    "SELECT id, NULLIF({f}, '') FROM t ORDER BY id",
    "SELECT id, ARRAY[{f}] FROM t ORDER BY id",
    "SELECT id, ROW(id, {f}) FROM t ORDER BY id",
    "SELECT count(*), count(r) FROM (SELECT {f} AS r FROM t OFFSET 0) s",
    "SELECT r IS NULL, count(*) FROM (SELECT {f} AS r FROM t OFFSET 2) s GROUP BY 1 ORDER BY 1",
    "SELECT id, r, lag(r) OVER (ORDER BY id) FROM (SELECT id, {f} AS r FROM t OFFSET 0) s",
    "SELECT {f} AS r FROM t WHERE id < 9 INTERSECT SELECT {f} FROM t WHERE id > 30 ORDER BY 1",
]
QUERIES = [shape.format(f=call) for shape, call in itertools.product(SHAPES, CALLS)]


def test_there_are_enough_generated_queries():
    assert len(QUERIES) >= 200


@pytest.mark.parametrize("query", QUERIES)
def test_batching_changes_no_result(conn, query):
    def run(batching: bool):
        try:
            return ("rows", rows(conn, query, batching))
        except psycopg.Error as error:
            return ("error", error.sqlstate, error.diag.message_primary)

    on = run(True)
    assert on == run(False)
    assert conn.execute("SELECT 1").fetchone() == (1,)  # the backend lives on


def test_cursors_prepared_statements_and_plpgsql_loops(conn):
    query = "SELECT id, aws_sagemaker.invoke_endpoint('ep', NULL, id, x) FROM t ORDER BY id"
    expected = rows(conn, query, False)
    conn.execute("SET azure_ai_sim.enable_batch_mode = on")
    with conn.transaction():
        conn.execute(f"DECLARE c CURSOR FOR {query}")
        fetched = conn.execute("FETCH 7 FROM c").fetchall()
        fetched += conn.execute("FETCH 100 FROM c").fetchall()
    assert fetched == expected
    conn.execute(f"PREPARE p (int) AS {query.replace('FROM t', 'FROM t WHERE id > $1')}")
    try:
        for _ in range(7):  # past the plan cache's five custom plans to its generic plan
            assert conn.execute("EXECUTE p(10)").fetchall() == expected[10:]
    finally:
        conn.execute("DEALLOCATE p")
    conn.execute(
        "CREATE OR REPLACE FUNCTION looped() RETURNS SETOF text LANGUAGE plpgsql AS $$"
        " DECLARE r record; BEGIN"
        f" FOR r IN {query} LOOP RETURN NEXT r.invoke_endpoint; END LOOP; END $$"
    )
    assert [r[0] for r in conn.execute("SELECT * FROM looped()")] == [e[1] for e in expected]
