"""aws_ml against the SageMaker, Comprehend and Bedrock simulators: Aurora's SQL examples
verbatim, the CSV contract, AWS errors, signatures, cancellation, parallel query."""

from __future__ import annotations

import psycopg
import pytest

from azure_ai_sim.sim import (
    BedrockSimulator,
    ComprehendSimulator,
    Fault,
    SageMakerSimulator,
    StsSimulator,
)
from conftest import assert_interrupted, force_parallel, point_aws_at, run_in_thread

# Endpoint names of Aurora's examples, served by the simulator's endpoints.
ALIASES = {
    "ep": "echo",
    "sagemaker_model_endpoint_name": "field-count",
    "multiple_output_endpoint": "housing-multi",
}


@pytest.fixture(scope="module")
def simulators():
    with (
        SageMakerSimulator() as sagemaker,
        ComprehendSimulator() as comprehend,
        BedrockSimulator() as bedrock,
    ):
        sagemaker.aliases = ALIASES
        yield {"sagemaker": sagemaker, "comprehend": comprehend, "bedrock": bedrock}


@pytest.fixture(scope="module", autouse=True)
def extension(database, simulators):
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS aws_ml CASCADE")
        point_aws_at(conn, {name: sim.url for name, sim in simulators.items()})


@pytest.fixture
def sagemaker(simulators):
    simulators["sagemaker"].faults.clear()
    simulators["sagemaker"].recorded.clear()
    return simulators["sagemaker"]


def one(conn, statement, *params):
    return conn.execute(statement, params or None).fetchone()[0]


# --- SageMaker -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "record"),
    [
        ("aws_sagemaker.invoke_endpoint('ep', NULL, 1, '2024-01-01'::date, 2.5::real)",
         "1,2024-01-01,2.5\n"),
        ("aws_sagemaker.invoke_endpoint('ep', NULL, ARRAY[1.0,2.0]::real[])", "1,2\n"),
        ("aws_sagemaker.invoke_endpoint('ep', 10, 'text', NULL::int)", "text,\n"),
        ("aws_sagemaker.invoke_endpoint('ep', NULL, 'a,b', 'say \"hi\"', true, NULL::text,"
         " 12.50::numeric, E'two\\nlines')", '"a,b","say ""hi""",t,,12.50,"two\nlines"\n'),
    ],
)  # fmt: skip
def test_the_csv_record_sagemaker_gets(conn, sagemaker, call, record):
    one(conn, f"SELECT {call}")
    (request,) = sagemaker.recorded.snapshot()
    assert request["body"] == record
    assert request["headers"]["content-type"] == "text/csv"
    assert request["headers"]["accept"] == "text/csv"
    assert request["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKID")


def test_media_types_per_endpoint(conn, sagemaker):
    conn.execute("SELECT aws_ml.set_setting('sagemaker.ep.accept', 'application/jsonlines')")
    try:
        one(conn, "SELECT aws_sagemaker.invoke_endpoint('ep', NULL, 1)")
        one(conn, "SELECT aws_sagemaker.invoke_endpoint('housing', NULL, 1,2,3,4,5,6,7,8)")
        accepts = [r["headers"]["accept"] for r in sagemaker.recorded.snapshot()]
        assert accepts == ["application/jsonlines", "text/csv"]
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="a media type"):
            conn.execute("SELECT aws_ml.set_setting('sagemaker.ep.content_type', 'csv')")
    finally:
        conn.execute("SELECT aws_ml.set_setting('sagemaker.ep.accept', NULL)")


def test_arguments_the_shim_must_get_right(conn, sagemaker):
    conn.execute("CREATE DOMAIN int_list AS int[]")
    conn.execute("CREATE TYPE pair AS (a text, b text)")
    try:
        one(conn, "SELECT aws_sagemaker.invoke_endpoint('ep', NULL, '{1,2}'::int_list)")
        one(conn, "SELECT aws_sagemaker.invoke_endpoint('ep', NULL, VARIADIC NULL::int[])")
        one(conn, "SELECT aws_sagemaker.invoke_endpoint('ep', NULL, VARIADIC ARRAY[3, 4])")
        bodies = [request["body"] for request in sagemaker.recorded.snapshot()]
        assert bodies == ["1,2\n", "\n", "3,4\n"]
        pair = conn.execute(
            "SELECT (aws_sagemaker.invoke_endpoint('ep', NULL, 'C:\\dir', 'say \"x\"')::pair).*"
        ).fetchone()
        assert pair == ("C:\\dir", 'say "x"')
    finally:
        conn.execute("DROP DOMAIN int_list")
        conn.execute("DROP TYPE pair")


def test_aurora_wrappers_verbatim(conn, sagemaker):
    conn.execute("""
        CREATE FUNCTION classify_event (IN arg1 INT, IN arg2 DATE, OUT category INT)
        AS $$
            SELECT aws_sagemaker.invoke_endpoint (
                'sagemaker_model_endpoint_name', NULL,
                arg1, arg2                        -- model inputs are separate arguments
                )::INT                            -- cast the output to INT
        $$ LANGUAGE SQL PARALLEL SAFE COST 5000""")
    conn.execute("""
        CREATE FUNCTION regression_model (params REAL[], OUT estimate REAL)
        AS $$
            SELECT aws_sagemaker.invoke_endpoint(
                'sagemaker_model_endpoint_name', NULL, params)::REAL
        $$ LANGUAGE SQL PARALLEL SAFE COST 5000""")
    conn.execute("""
        CREATE TYPE company_forecasts AS (six_month_forecast REAL, twelve_month_forecast REAL)""")
    conn.execute("""
        CREATE FUNCTION analyze_company (IN p1 REAL, IN p2 REAL, IN p3 REAL, IN p4 REAL,
                                         IN p5 REAL, IN p6 REAL, IN p7 REAL, IN p8 REAL,
                                         OUT forecasts company_forecasts)
        AS $$
            SELECT (aws_sagemaker.invoke_endpoint('multiple_output_endpoint', NULL,
                    p1, p2, p3, p4, p5, p6, p7, p8))::company_forecasts
        $$ LANGUAGE SQL PARALLEL SAFE COST 5000""")
    try:
        assert one(conn, "SELECT classify_event(7, '2024-01-01')") == 2
        assert one(conn, "SELECT regression_model(ARRAY[1.0, 2.5, 3.0])") == 3.0
        conn.execute("CREATE TEMP TABLE payments (amount numeric)")
        conn.execute("INSERT INTO payments VALUES (12.5), (NULL)")
        amounts = conn.execute(
            "SELECT aws_sagemaker.invoke_endpoint('ep', NULL, COALESCE(amount, 0.0))"
            " FROM payments ORDER BY amount NULLS LAST"
        ).fetchall()
        assert amounts == [("12.5",), ("0.0",)]
        six, twelve = conn.execute(
            "SELECT (analyze_company(8.3252, 41, 6.984, 1.024, 322, 2.556, 37.88, -122.23)).*"
        ).fetchone()
        assert twelve == pytest.approx(six * 1.1, rel=1e-4)
        force_parallel(conn)
        with pytest.raises(psycopg.errors.InvalidTransactionState, match="parallel query"):
            one(conn, "SELECT classify_event(g, '2024-01-01') FROM generate_series(1, 3) g")
        force_parallel(conn, on=False)
        assert one(conn, "SELECT classify_event(1, '2024-01-02')") == 2
    finally:
        force_parallel(conn, on=False)
        conn.execute("DROP FUNCTION classify_event, regression_model, analyze_company")
        conn.execute("DROP TYPE company_forecasts")


def test_aws_errors_keep_their_code_and_message(conn, sagemaker):
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        one(conn, "SELECT aws_sagemaker.invoke_endpoint('nope', NULL, 1)")
    assert caught.value.diag.message_primary == (
        f"aws_sagemaker.invoke_endpoint: HTTP 400 from {sagemaker.url}/endpoints/nope/invocations:"
        " ValidationError: Endpoint nope of account 123456789012 not found."
    )
    with pytest.raises(psycopg.errors.ExternalRoutineException, match="ModelError"):
        one(conn, "SELECT aws_sagemaker.invoke_endpoint('housing', NULL, 1, 2)")


def test_throttling_is_retried(conn, sagemaker):
    sagemaker.faults.extend([Fault(status=503), Fault(status=503)])
    assert one(conn, "SELECT aws_sagemaker.invoke_endpoint('ep', NULL, 5)") == "5"
    assert len(sagemaker.recorded.snapshot()) == 3


def test_a_wrong_secret_is_refused_and_never_shown(conn, sagemaker):
    conn.execute("SELECT aws_ml.set_setting('aws_secret_access_key', 'not-the-secret')")
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
            one(conn, "SELECT aws_sagemaker.invoke_endpoint('ep', NULL, 1)")
        assert "InvalidSignatureException" in caught.value.diag.message_primary
        assert "not-the-secret" not in str(caught.value)
    finally:
        conn.execute("SELECT aws_ml.set_setting('aws_secret_access_key', 'sim-secret')")


def test_input_over_six_megabytes_fails_before_sending(conn, sagemaker):
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="at most 6 MB"):
        one(conn, "SELECT aws_sagemaker.invoke_endpoint('ep', NULL, repeat('x', 7000000))")
    assert sagemaker.recorded.snapshot() == []


def test_a_slow_endpoint_can_be_cancelled(conn, database, sagemaker):
    sagemaker.faults.extend([Fault(latency_ms=60_000)])
    call = run_in_thread(database, "SELECT aws_sagemaker.invoke_endpoint('ep', NULL, 1)")
    while not sagemaker.recorded.snapshot():
        pass
    conn.execute("SELECT pg_cancel_backend(%s)", (call["pid"],))
    assert_interrupted(call, "due to user request", "aws_sagemaker.invoke_endpoint")


def test_statement_timeout_ends_a_slow_call(database, sagemaker):
    sagemaker.faults.extend([Fault(latency_ms=60_000)])
    call = run_in_thread(
        database,
        "SELECT aws_sagemaker.invoke_endpoint('ep', NULL, 1)",
        setup="SET statement_timeout = 300",
    )
    assert_interrupted(call, "due to statement timeout", "aws_sagemaker.invoke_endpoint")


def test_only_aws_ml_members_may_call(conn, make_role):
    outsider, member = make_role(), make_role("aws_ml")
    statement = "SELECT (aws_comprehend.detect_sentiment('Fine.', 'en')).sentiment"
    conn.execute(f"SET ROLE {outsider}")
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)
        conn.execute(f"SET ROLE {member}")
        assert one(conn, statement) in ("POSITIVE", "NEUTRAL")
    finally:
        conn.execute("RESET ROLE")


# --- Comprehend ----------------------------------------------------------------------------


def test_detect_sentiment_examples_verbatim(conn):
    conn.execute("CREATE TEMP TABLE support (feedback text)")
    conn.execute(
        "INSERT INTO support VALUES ('The support team was wonderful, thank you!'),"
        " ('The product broke after one day. Terrible.'), ('I received the parcel.')"
    )
    rows = conn.execute(
        "SELECT feedback, s.sentiment, s.confidence FROM support,"
        " aws_comprehend.detect_sentiment(feedback, 'en') s ORDER BY s.confidence DESC"
    ).fetchall()
    sentiments = {feedback: sentiment for feedback, sentiment, _ in rows}
    assert sentiments["The support team was wonderful, thank you!"] == "POSITIVE"
    assert sentiments["The product broke after one day. Terrible."] == "NEGATIVE"
    assert [r[2] for r in rows] == sorted((r[2] for r in rows), reverse=True)
    assert all(0 < r[2] <= 1 for r in rows)

    conn.execute(
        "CREATE TEMP TABLE clinician_notes (id int, french_notes text, sentiment varchar,"
        " confidence real)"
    )
    conn.execute(
        "INSERT INTO clinician_notes VALUES (1, 'Le patient va très bien, excellent progrès.')"
    )
    conn.execute(
        "UPDATE clinician_notes SET sentiment = (aws_comprehend.detect_sentiment (french_notes,"
        " 'fr')).sentiment, confidence = (aws_comprehend.detect_sentiment (french_notes,"
        " 'fr')).confidence WHERE clinician_notes.french_notes IS NOT NULL AND"
        " LENGTH(TRIM(clinician_notes.french_notes)) > 0 AND clinician_notes.sentiment IS NULL"
    )
    assert conn.execute("SELECT sentiment FROM clinician_notes").fetchone() == ("POSITIVE",)


def test_comprehend_limits(conn):
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="at most 5000"):
        one(conn, "SELECT (aws_comprehend.detect_sentiment(repeat('é', 2600), 'fr')).sentiment")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="UnsupportedLanguage"):
        one(conn, "SELECT (aws_comprehend.detect_sentiment('hola', 'xx')).sentiment")


# --- Bedrock -------------------------------------------------------------------------------


def test_invoke_model_named_and_positional(conn):
    body = '{"inputText": "hello world", "dimensions": 256}'
    named = one(
        conn,
        "SELECT aws_bedrock.invoke_model(model_id := 'amazon.titan-embed-text-v2:0',"
        " content_type := 'application/json', accept_type := 'application/json',"
        " model_input := %s)",
        body,
    )
    positional = one(
        conn,
        "SELECT aws_bedrock.invoke_model('amazon.titan-embed-text-v2:0', 'application/json',"
        " 'application/json', %s)",
        body,
    )
    assert named == positional and '"embedding"' in named


def test_invoke_model_get_embeddings(conn):
    titan = one(
        conn,
        "SELECT aws_bedrock.invoke_model_get_embeddings(model_id := 'amazon.titan-embed-text-v1',"
        " content_type := 'application/json', json_key := 'embedding',"
        ' model_input := \'{"inputText": "PostgreSQL is a database"}\')',
    )
    assert len(titan) == 1536 and abs(sum(x * x for x in titan) - 1) < 1e-3
    cohere = one(
        conn,
        "SELECT aws_bedrock.invoke_model_get_embeddings('cohere.embed-multilingual-v3',"
        " 'application/json', 'embeddings',"
        ' \'{"texts": ["hola"], "input_type": "search_document"}\')',
    )
    assert len(cohere) == 1024
    with pytest.raises(psycopg.errors.InvalidJsonText, match='no key "vector"') as caught:
        one(
            conn,
            "SELECT aws_bedrock.invoke_model_get_embeddings('amazon.titan-embed-text-v1',"
            " 'application/json', 'vector', '{\"inputText\": \"x\"}')",
        )
    assert "embedding" in caught.value.diag.message_detail


def test_claude_is_the_labelled_local_generator(conn):
    answer = one(
        conn,
        "SELECT aws_bedrock.invoke_model('anthropic.claude-3-haiku-20240307-v1:0',"
        " 'application/json', 'application/json', %s)",
        '{"anthropic_version": "bedrock-2023-05-31", "max_tokens": 50,'
        ' "messages": [{"role": "user", "content": "Say hi"}]}',
    )
    assert "[azure_ai_sim local generator]" in answer


def test_a_role_per_service_is_assumed_once_and_used(conn, simulators):
    comprehend = simulators["comprehend"]
    role = "arn:aws:iam::123456789012:role/comprehend-feature"
    with StsSimulator() as sts:
        conn.execute("SELECT aws_ml.set_setting('sts.endpoint_url', %s)", (sts.url,))
        conn.execute("SELECT aws_ml.set_setting('comprehend.role_arn', %s)", (role,))
        comprehend.recorded.clear()
        try:
            for _ in range(2):
                sentiment = one(
                    conn, "SELECT (aws_comprehend.detect_sentiment('Great!', 'en')).sentiment"
                )
                assert sentiment == "POSITIVE"
            (assume,) = sts.recorded.snapshot()
            assert (
                "RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fcomprehend-feature"
                in assume["body"]
            )
            calls = comprehend.recorded.snapshot()
            assert len(calls) == 2
            for call in calls:
                assert call["headers"]["authorization"].startswith(
                    "AWS4-HMAC-SHA256 Credential=ASIA"
                )
                assert call["headers"]["x-amz-security-token"]
        finally:
            conn.execute("SELECT aws_ml.set_setting('comprehend.role_arn', NULL)")
            conn.execute("SELECT aws_ml.set_setting('sts.endpoint_url', NULL)")


def test_settings_are_validated(conn):
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="an AWS region"):
        conn.execute("SELECT aws_ml.set_setting('region', 'Mars')")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown setting key"):
        conn.execute("SELECT aws_ml.set_setting('role', 'x')")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="an IAM role ARN"):
        conn.execute("SELECT aws_ml.set_setting('bedrock.role_arn', 'admin')")


def test_max_rows_per_batch_is_checked_by_every_function(conn):
    for call in (
        "aws_comprehend.detect_sentiment('Great!', 'en', max_rows_per_batch => 0)",
        "aws_sagemaker.invoke_endpoint('ep', 0, 1)",
    ):
        with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
            conn.execute(f"SELECT {call}")
        assert caught.value.diag.message_primary.endswith(
            "max_rows_per_batch must be at least 1, not 0"
        )


@pytest.mark.parametrize(
    "answer",
    ['{"Sentiment": "POSITIVE"}', '{"Sentiment": "HAPPY", "SentimentScore": {"Happy": 1}}',
     '{"Sentiment": "POSITIVE", "SentimentScore": {"Positive": "high"}}', "[]"],
)  # fmt: skip
def test_a_detect_sentiment_answer_without_its_fields_is_a_clear_error(conn, simulators, answer):
    comprehend = simulators["comprehend"]
    comprehend.faults.extend([Fault(body=answer)])
    with pytest.raises(psycopg.errors.InvalidJsonText) as caught:
        conn.execute("SELECT aws_comprehend.detect_sentiment('Great!', 'en')")
    assert caught.value.diag.message_primary.startswith(
        "aws_comprehend.detect_sentiment: Comprehend answered DetectSentiment without a "
        "Sentiment of POSITIVE/NEGATIVE/NEUTRAL/MIXED and its SentimentScore: "
    )


def test_an_oversized_aws_response_names_no_setting_it_cannot_change(conn, sagemaker):
    sagemaker.faults.extend([Fault(oversized_bytes=17 * 1024 * 1024)])
    with pytest.raises(psycopg.errors.ProgramLimitExceeded) as caught:
        conn.execute("SELECT aws_sagemaker.invoke_endpoint('ep', NULL, 1)")
    assert "over the limit of 16777216 bytes" in caught.value.diag.message_primary
    assert caught.value.diag.message_hint is None
