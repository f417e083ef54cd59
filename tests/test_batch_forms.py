"""The batch forms that the batching node calls (issue 10), called directly: one array
per argument of the per-row function, one result per row. Each result must equal the
per-row function's for the same arguments, NULLs included, and a failing row must raise
exactly the error its own call raises (message, SQLSTATE, DETAIL, HINT), against the
simulators."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import psycopg
import pytest

from azure_ai_sim import aws, aws_ml
from azure_ai_sim.sim import (
    AzureMLSimulator,
    BedrockSimulator,
    ComprehendSimulator,
    Fault,
    SageMakerSimulator,
)
from azure_ai_sim.transport import DEFAULT_PARALLEL_REQUESTS
from conftest import FP32, INT8, assert_interrupted, point_aws_at, run_in_thread

ALIASES = {"ep": "echo", "counted": "field-count", "multi": "housing-multi"}
HOUSING = ["8.3252", "41", "6.98", "1.02", "322", "2.56", "37.88", "-122.23"]
AZURE_KEY = "batch-key"


class ComprehendWithoutBatches(ComprehendSimulator):
    """An emulator that lacks BatchDetectSentiment, as moto does."""

    operations = frozenset({"DetectSentiment"})


@pytest.fixture(scope="module")
def simulators():
    with (
        SageMakerSimulator() as sagemaker,
        ComprehendSimulator() as comprehend,
        ComprehendWithoutBatches() as no_batches,
        BedrockSimulator() as bedrock,
        AzureMLSimulator(keys=[AZURE_KEY], request_timeout_ms=60_000) as azureml,
    ):
        sagemaker.aliases = ALIASES
        yield {
            "sagemaker": sagemaker,
            "comprehend": comprehend,
            "no_batches": no_batches,
            "bedrock": bedrock,
            "azureml": azureml,
        }


@pytest.fixture(scope="module", autouse=True)
def extensions(database, simulators):
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION aws_ml CASCADE")
        conn.execute("CREATE EXTENSION azure_ai")
        conn.execute("CREATE EXTENSION azure_local_ai CASCADE")
        point_aws_at(
            conn, {name: simulators[name].url for name in ("sagemaker", "comprehend", "bedrock")}
        )
        for key, value in (
            ("azure_ml.scoring_endpoint", simulators["azureml"].url + "/score"),
            ("azure_ml.endpoint_key", AZURE_KEY),
        ):
            conn.execute("SELECT azure_ai.set_setting(%s, %s)", (key, value))


@pytest.fixture
def sims(simulators):
    for sim in simulators.values():
        sim.faults.clear()
        sim.recorded.clear()
    return simulators


def error_of(conn: psycopg.Connection, statement: str, params: Any = None) -> tuple:
    """What a client sees of an error; request ids differ from call to call."""
    with pytest.raises(psycopg.Error) as caught:
        conn.execute(statement, params)
    return described(caught.value)


def described(error: psycopg.Error) -> tuple:
    diag = error.diag
    detail = diag.message_detail and re.sub(
        r"request id: [^;.]+", "request id: …", diag.message_detail
    )
    return type(error), diag.sqlstate, diag.message_primary, detail, diag.message_hint


def batch_error_of(conn: psycopg.Connection, statement: str, params: Any, row: Any = None) -> tuple:
    """What the batching node reports when a row fails: the batch form answers the rows
    before it (or fails, when it is the first), then the node calls it for that row alone,
    which raises the row's error. row(k): the parameters of that call; by default element
    k of each array."""
    counted = (  # the statement gives a row per result, or an array
        f"SELECT count(*) FROM ({statement}) AS s"
        if "unnest" in statement
        else f"SELECT cardinality(r) FROM ({statement}) AS s(r)"
    )
    try:
        (k,) = conn.execute(counted, params).fetchone()
    except psycopg.Error as error:
        return described(error)
    alone = row(k) if row else [[column[k]] for column in params]
    return error_of(conn, statement, alone)


def collect(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """(severity, message) of each notice and warning the connection receives."""
    received: list[tuple[str, str]] = []
    conn.add_notice_handler(lambda diag: received.append((diag.severity, diag.message_primary)))
    return received


def targets(sim) -> list[str]:
    return [
        r["headers"].get("x-amz-target", "").rpartition(".")[2] for r in sim.recorded.snapshot()
    ]


# --- Comprehend ------------------------------------------------------------------------------

SENTIMENT_BATCH = (
    "SELECT sentiment, confidence FROM unnest(aws_ml_internal.detect_sentiment_batch("
    "%s::varchar[], %s::varchar[], %s::int[])) WITH ORDINALITY AS r(sentiment, confidence, n)"
    " ORDER BY n"
)
SENTIMENT_ROW = "SELECT * FROM aws_comprehend.detect_sentiment(%s, %s, %s)"  # one call


def sentiments(conn, texts, languages, max_rows=None) -> list[tuple]:
    limits = max_rows if isinstance(max_rows, list) else [max_rows] * len(texts)
    return conn.execute(SENTIMENT_BATCH, (texts, languages, limits)).fetchall()


def sentiment_rows(conn, texts, languages, max_rows=None) -> list[tuple]:
    return [
        conn.execute(SENTIMENT_ROW, (t, lang, max_rows)).fetchone()
        for t, lang in zip(texts, languages, strict=True)
    ]


def mixed_rows() -> tuple[list, list]:
    texts, languages = [], []
    for i in range(60):
        language = ("en", "fr", "es", "en", "de")[i % 5]
        text = {
            "en": f"Row {i}: the support was wonderful, thank you",
            "fr": f"Ligne {i}: le produit est mauvais, très décevant",
            "es": f"Fila {i}: recibí el paquete",
            "de": f"Zeile {i}: nicht gut, aber auch nicht schlecht",
        }[language]
        texts.append(text)
        languages.append(language)
    texts[3], languages[11] = None, None  # NULL text, NULL language: NULL results
    texts[8] = "é" * 2500  # exactly 5,000 bytes: the largest document taken
    return texts, languages


def test_detect_sentiment_batch_equals_per_row(conn, sims):
    texts, languages = mixed_rows()
    batched = sentiments(conn, texts, languages)
    documents = [json.loads(r["body"]) for r in sims["comprehend"].recorded.snapshot()]
    assert batched == sentiment_rows(conn, texts, languages)
    assert batched[3] == batched[11] == (None, None)
    # One request per language: en 23 rows (one NULL text), fr 11 (one NULL language).
    sizes = sorted((d["LanguageCode"], len(d["TextList"])) for d in documents)
    assert sizes == [("de", 12), ("en", 23), ("es", 12), ("fr", 11)]


def request_sizes(sim) -> list[int]:
    return sorted(len(json.loads(r["body"])["TextList"]) for r in sim.recorded.snapshot())


def test_more_than_25_rows_of_one_language_and_max_rows_per_batch(conn, sims):
    texts = [f"Great service number {i}" for i in range(60)]
    languages = ["en"] * 60
    per_row = sentiment_rows(conn, texts, languages)
    sims["comprehend"].recorded.clear()
    assert sentiments(conn, texts, languages) == per_row
    assert request_sizes(sims["comprehend"]) == [10, 25, 25]
    sims["comprehend"].recorded.clear()
    # A run holds no more rows than any of its rows' max_rows_per_batch allows: rows
    # 28 to 34 (7 at most, for 28 and 29), then 35 to 59.
    assert sentiments(conn, texts, languages, [7] * 30 + [None] * 30) == per_row
    assert request_sizes(sims["comprehend"]) == [7, 7, 7, 7, 7, 25]


def test_a_failing_row_in_the_middle_raises_its_own_error(conn, sims):
    texts = [f"Nice {i}" for i in range(10)]
    languages = ["en"] * 10
    texts[6] = "x" * 5001  # refused before anything is sent
    expected = error_of(conn, SENTIMENT_ROW, (texts[6], "en", None))
    sims["comprehend"].recorded.clear()
    assert batch_error_of(conn, SENTIMENT_BATCH, (texts, languages, [None] * 10)) == expected
    sent = [json.loads(r["body"]) for r in sims["comprehend"].recorded.snapshot()]
    assert sent == [{"TextList": texts[:6], "LanguageCode": "en"}]  # nothing after row 6

    # The service refuses a row: its batch is refused whole, then each row's own call
    # finds the row and its own error.
    texts = ["Good", "Bad", "", "Fine"]
    expected = error_of(conn, SENTIMENT_ROW, ("", "en", None))
    assert batch_error_of(conn, SENTIMENT_BATCH, (texts, ["en"] * 4, [None] * 4)) == expected
    texts, languages = ["Good", "hola", "Bad"], ["en", "xx", "en"]
    expected = error_of(conn, SENTIMENT_ROW, ("hola", "xx", None))
    assert batch_error_of(conn, SENTIMENT_BATCH, (texts, languages, [None] * 3)) == expected
    expected = error_of(conn, SENTIMENT_ROW, ("Bad", "en", 0))
    assert batch_error_of(conn, SENTIMENT_BATCH, (["Good", "Bad"], ["en"] * 2, [1, 0])) == expected


def test_error_list_rows_get_their_own_call(conn, sims):
    texts = ["Wonderful", "Terrible", "Okay"]
    scripted = (
        '{"ResultList": [{"Index": 0, "Sentiment": "POSITIVE", "SentimentScore": {"Positive": 0.9,'
        ' "Negative": 0.05, "Neutral": 0.03, "Mixed": 0.02}}, {"Index": 2, "Sentiment": "NEUTRAL",'
        ' "SentimentScore": {"Positive": 0.1, "Negative": 0.1, "Neutral": 0.7, "Mixed": 0.1}}],'
        ' "ErrorList": [{"Index": 1, "ErrorCode": "INTERNAL_SERVER_ERROR", "ErrorMessage": "x"}]}'
    )
    sims["comprehend"].faults.extend([Fault(body=scripted)])
    batched = sentiments(conn, texts, ["en"] * 3)
    assert targets(sims["comprehend"]) == ["BatchDetectSentiment", "DetectSentiment"]
    assert batched[1] == sentiment_rows(conn, ["Terrible"], ["en"])[0]
    assert batched[0][0] == "POSITIVE" and batched[2][0] == "NEUTRAL"  # the scripted ones

    # The row's own call fails: the batch raises that call's error.
    sims["comprehend"].faults.extend([Fault(status=400)])
    expected = error_of(conn, SENTIMENT_ROW, ("Terrible", "en", None))
    sims["comprehend"].faults.extend([Fault(body=scripted), Fault(status=400)])
    assert batch_error_of(conn, SENTIMENT_BATCH, (texts, ["en"] * 3, [None] * 3)) == expected


def test_an_endpoint_without_batch_detect_sentiment(server, database, sims):
    texts, languages = mixed_rows()
    no_batches = sims["no_batches"]
    with psycopg.connect(database, autocommit=True) as conn:
        per_row = sentiment_rows(conn, texts, languages)
        conn.execute("SELECT aws_ml.set_setting('comprehend.endpoint_url', %s)", (no_batches.url,))
        try:
            received = collect(conn)
            no_batches.recorded.clear()
            assert sentiments(conn, texts, languages) == per_row
            assert len(received) == 1 and received[0][0] == "NOTICE"
            assert received[0][1].startswith(
                f"aws_comprehend.detect_sentiment: {no_batches.url} does not take "
                "BatchDetectSentiment (HTTP 400 from "
            )
            assert "UnknownOperationException" in received[0][1]
            assert set(targets(no_batches)) == {"DetectSentiment"}  # (refused: not recorded)
            no_batches.recorded.clear()
            assert sentiments(conn, texts, languages) == per_row
            assert set(targets(no_batches)) == {"DetectSentiment"}  # remembered
            assert len(received) == 1
        finally:
            conn.execute(
                "SELECT aws_ml.set_setting('comprehend.endpoint_url', %s)",
                (sims["comprehend"].url,),
            )
    # 501, as LocalStack answers an operation it lacks: the same, in another session.
    with psycopg.connect(database, autocommit=True) as conn:
        received = collect(conn)
        sims["comprehend"].faults.extend([Fault(status=501)])
        assert sentiments(conn, texts[:20], languages[:20]) == per_row[:20]
        assert [severity for severity, _ in received] == ["NOTICE"]
        assert "(HTTP 501 from " in received[0][1]


def test_an_emulator_that_answers_500_not_implemented(database, sims):
    """moto answers an action it lacks with a 500 that says so (retried first)."""
    lacking = '{"message": "The BatchDetectSentiment action has not been implemented"}'
    sims["comprehend"].faults.extend([Fault(status=500, body=lacking)] * 3)
    texts = ["Good", "Bad", "Fine"]
    with psycopg.connect(database, autocommit=True) as conn:
        received = collect(conn)
        assert sentiments(conn, texts, ["en"] * 3) == sentiment_rows(conn, texts, ["en"] * 3)
        assert [severity for severity, _ in received] == ["NOTICE"]
        assert "has not been implemented" in received[0][1]
    assert (
        targets(sims["comprehend"]) == ["BatchDetectSentiment"] * 3 + ["DetectSentiment"] * 6
    )  # its own, ours


# --- SageMaker -------------------------------------------------------------------------------

ENDPOINT_BATCH = (
    "SELECT aws_ml_internal.invoke_endpoint_batch(%s::varchar[], %s::int[], %s::text[],"
    " %s::int[])"
)


def endpoint_batch(conn, rows: list[tuple[str, list]], max_rows=None) -> list:
    names = [name for name, _ in rows]
    fields = [field for _, row_fields in rows for field in row_fields]
    counts = [len(row_fields) for _, row_fields in rows]
    return conn.execute(ENDPOINT_BATCH, (names, [max_rows] * len(rows), fields, counts)).fetchone()[
        0
    ]


def endpoint_row(conn, name, fields, max_rows=None):
    return conn.execute(
        "SELECT aws_sagemaker.invoke_endpoint(%s, %s, VARIADIC %s::text[])",
        (name, max_rows, fields),
    ).fetchone()[0]


def test_multi_record_csv_equals_per_row(conn, sims):
    rows = [
        ("ep", ["1", "2"]),
        ("housing", HOUSING),
        ("ep", ["3"]),
        ("counted", ["a", "b", "c"]),
        ("ep", ["4", "5"]),
        ("ep", [None]),  # an empty record: a request of its own
        ("ep", ["a,b", 'say "hi"', "two\nlines"]),
        ("multi", HOUSING),
        ("housing", [str(float(x) + 1) for x in HOUSING]),
        ("ep", ["x", None, "z"]),
        ("ep", ["6", "7"]),
        ("counted", ["d", "e", "f"]),
    ]
    batched = endpoint_batch(conn, rows)
    requests = sims["sagemaker"].recorded.snapshot()
    assert batched == [endpoint_row(conn, name, fields) for name, fields in rows]
    bodies = sorted((r["path"], r["body"]) for r in requests)
    assert bodies == sorted([
        ("/endpoints/counted/invocations", "a,b,c\nd,e,f\n"),
        ("/endpoints/ep/invocations", "1,2\n4,5\n6,7\n"),
        ("/endpoints/ep/invocations", "3\n"),
        ("/endpoints/ep/invocations", "\n"),
        ("/endpoints/ep/invocations", '"a,b","say ""hi""","two\nlines"\nx,,z\n'),
        ("/endpoints/housing/invocations", ",".join(HOUSING) + "\n" + ",".join(rows[8][1]) + "\n"),
        ("/endpoints/multi/invocations", ",".join(HOUSING) + "\n"),
    ])  # fmt: skip
    assert batched[7].startswith("(") and batched[6] == '"a,b","say ""hi""","two\nlines"'


def test_sagemaker_batches_are_bounded(conn, sims):
    rows = [("ep", [str(i)]) for i in range(25)]
    assert endpoint_batch(conn, rows, max_rows=10) == [str(i) for i in range(25)]
    bodies = sims["sagemaker"].recorded.snapshot()
    assert sorted(r["body"].count("\n") for r in bodies) == [5, 10, 10]
    assert [
        len(c) for c in aws.chunks(list(range(5)), lambda row: 10, dict.fromkeys(range(5), 3), 7)
    ] == [2, 2, 1]
    assert aws_ml.csv_lines('1\n"a\nb",c\n2\n', 3) == ["1", '"a\nb",c', "2"]
    assert aws_ml.csv_lines("1\n2\n", 3) is None


def test_a_failing_sagemaker_row_and_a_count_mismatch(conn, sims):
    rows = [("housing", HOUSING), ("housing", ["abc", *HOUSING[1:]]), ("housing", HOUSING)]
    expected = error_of(
        conn, "SELECT aws_sagemaker.invoke_endpoint(%s, NULL, VARIADIC %s::text[])", rows[1]
    )
    assert "record 1, field 1" in expected[2]
    names = [name for name, _ in rows]
    fields = [f for _, row in rows for f in row]
    params = (names, [None] * 3, fields, [8, 8, 8])
    sims["sagemaker"].recorded.clear()
    assert (
        batch_error_of(
            conn, ENDPOINT_BATCH, params, lambda k: ([names[k]], [None], rows[k][1], [8])
        )
        == expected
    )
    # The batch, refused for row 1 (424); then row 0's and row 1's own (row 2's own may
    # have started with them, and been abandoned).
    assert len(sims["sagemaker"].recorded.snapshot()) in (3, 4)

    sims["sagemaker"].faults.extend([Fault(body="1.5\n")])
    kind, sqlstate, message, detail, hint = error_of(
        conn, ENDPOINT_BATCH, (["ep"] * 2, [None] * 2, ["1", "2"], [1, 1])
    )
    assert (sqlstate, message) == (
        "22000",
        "aws_sagemaker.invoke_endpoint: the endpoint answered 2 CSV records (one per row) "
        "with 1 line; it must answer a line per record",
    )
    assert hint == "max_rows_per_batch => 1 sends each row in a request of its own."


def test_an_endpoint_that_refuses_multi_record_requests(conn, database, sims):
    with psycopg.connect(database, autocommit=True) as conn:
        received = collect(conn)
        sims["sagemaker"].faults.extend([Fault(status=400)])
        rows = [("counted", ["1", "2"]), ("counted", ["3", "4"])]
        assert endpoint_batch(conn, rows) == ["2", "2"]
        assert [severity for severity, _ in received] == ["NOTICE"]
        assert received[0][1].startswith(
            f'aws_sagemaker.invoke_endpoint: endpoint "counted" at {sims["sagemaker"].url} does '
            "not take several CSV records in one request (HTTP 400 from "
        )
        sims["sagemaker"].recorded.clear()
        assert endpoint_batch(conn, rows) == ["2", "2"]
        bodies = sorted(r["body"] for r in sims["sagemaker"].recorded.snapshot())
        assert bodies == ["1,2\n", "3,4\n"]
        assert len(received) == 1


# --- Bedrock ---------------------------------------------------------------------------------

TITAN = "amazon.titan-embed-text-v2:0"
MODEL_BATCH = (
    "SELECT aws_ml_internal.invoke_model_batch(%s::varchar[], %s::text[], %s::text[],"
    " %s::text[])"
)
EMBEDDINGS_BATCH = (
    "SELECT aws_ml_internal.invoke_model_get_embeddings_batch(%s::varchar[], %s::text[],"
    " %s::text[], %s::text[])"
)
EMBEDDINGS_ROW = "SELECT aws_bedrock.invoke_model_get_embeddings(%s, %s, %s, %s)"


def test_bedrock_batches_equal_per_row(conn, sims):
    inputs = [f'{{"inputText": "text number {i}", "dimensions": 256}}' for i in range(12)]
    inputs[4] = None
    columns = ([TITAN] * 12, ["application/json"] * 12, [None] * 12, inputs)
    batched = conn.execute(MODEL_BATCH, columns).fetchone()[0]
    row = "SELECT aws_bedrock.invoke_model(%s, %s, %s, %s)"
    assert batched == [
        conn.execute(row, args).fetchone()[0] for args in zip(*columns, strict=False)
    ]
    assert batched[4] is None and '"embedding"' in batched[0]

    keys = ["embedding"] * 12
    columns = ([TITAN] * 12, ["application/json"] * 12, keys, inputs)
    embeddings = conn.execute(f"SELECT (unnest(({EMBEDDINGS_BATCH[7:]}))).embedding", columns)
    per_row = [
        conn.execute(EMBEDDINGS_ROW, args).fetchone()[0] for args in zip(*columns, strict=False)
    ]
    assert [e for (e,) in embeddings] == per_row
    assert len(per_row[0]) == 256 and per_row[4] is None

    keys[7] = None  # refused before anything is sent
    expected = error_of(conn, EMBEDDINGS_ROW, [column[7] for column in columns])
    assert batch_error_of(conn, EMBEDDINGS_BATCH, columns) == expected
    keys[7], keys[9] = "embedding", "vector"  # a row whose answer lacks its key
    expected = error_of(conn, EMBEDDINGS_ROW, [column[9] for column in columns])
    assert "no key" in expected[2]
    assert batch_error_of(conn, EMBEDDINGS_BATCH, columns) == expected


# --- Azure ML --------------------------------------------------------------------------------

# its results are text, which the batching node reads as jsonb
INVOKE_BATCH = (
    "SELECT azure_ai_internal.invoke_batch(%s::jsonb[], %s::int[], %s::boolean[], %s::text[],"
    " %s::int[], %s::int[])::jsonb[]"
)
INVOKE_ROW = "SELECT azure_ml.invoke(%s::jsonb, %s, %s, %s, %s, %s)"
GOOD = '{"input_data": [[1, 2, 3, 4, 5, 6, 7, 8]]}'
BAD = '{"input_data": [[1, 2, 3]]}'  # the model raises: 424


def azure_rows(conn, columns) -> list:
    received = collect(conn)
    results = [conn.execute(INVOKE_ROW, row).fetchone()[0] for row in zip(*columns, strict=True)]
    return results, list(received)


def test_invoke_batch_equals_per_row_with_warnings_in_row_order(conn, sims):
    n = 12
    inputs = [GOOD] * n
    inputs[2], inputs[5], inputs[9] = None, BAD, BAD
    throws = [False] * n
    deployments = ["Housingprediction"] * n
    deployments[7] = "nope"  # 404
    columns = (inputs, [None] * n, throws, deployments, [1] * n, [1000] * n)
    with psycopg.connect(conn.info.dsn, autocommit=True) as other:
        per_row, per_row_warnings = azure_rows(other, columns)
    received = collect(conn)
    assert conn.execute(INVOKE_BATCH, columns).fetchone()[0] == per_row
    assert [severity for severity, _ in received] == ["WARNING"] * 3
    normalize = lambda messages: [re.sub(r"request id: \S+", "", m) for _, m in messages]  # noqa: E731
    assert normalize(received) == normalize(per_row_warnings)
    assert per_row[2] is None and per_row[5] is None and per_row[0] is not None

    # A throwing row in the middle: the warnings of the rows before it, then its error.
    throws[7] = True
    expected = error_of(conn, INVOKE_ROW, [c[7] for c in columns])
    received.clear()
    assert batch_error_of(conn, INVOKE_BATCH, columns) == expected
    assert len(received) == 1 and "424" in received[0][1]  # row 5's, not row 9's
    expected = error_of(conn, INVOKE_ROW, (GOOD, 0, True, None, 1, 1000))
    columns[1][3] = 0  # timeout_ms 0: an argument error, raised whatever throw_on_error says
    assert batch_error_of(conn, INVOKE_BATCH, columns) == expected


# --- azure_local_ai --------------------------------------------------------------------------

EMBEDDING_BATCH = (
    "SELECT azure_local_ai_internal._embedding_batch(%s::text[], %s::text[], %s::int[])"
)
EMBEDDING_ROW = "SELECT azure_local_ai_internal._embedding(%s, %s, %s)"


def test_embedding_batch_bytes_equal_per_row(conn):
    texts = [f"passage: sentence {i} " + "word " * (i * 7 % 40) for i in range(20)]
    texts[3] = None
    models = [FP32 if i % 3 else INT8 for i in range(20)]
    timeouts = [3_600_000] * 20
    batched = conn.execute(EMBEDDING_BATCH, (models, texts, timeouts)).fetchone()[0]
    per_row = [
        conn.execute(EMBEDDING_ROW, row).fetchone()[0]
        for row in zip(models, texts, timeouts, strict=True)
    ]
    assert batched == per_row and batched[3] is None and len(batched[0]) == 384 * 4

    models[11] = "nope:v1"
    expected = error_of(conn, EMBEDDING_ROW, ("nope:v1", texts[11], 1000))
    assert batch_error_of(conn, EMBEDDING_BATCH, (models, texts, timeouts)) == expected
    models[11], timeouts[8] = FP32, -1
    expected = error_of(conn, EMBEDDING_ROW, (FP32, texts[8], -1))
    assert batch_error_of(conn, EMBEDDING_BATCH, (models, texts, timeouts)) == expected


# --- requests in flight, deadlines, cancellation ----------------------------------------------


@pytest.fixture
def slow(sims):
    """The simulators answer after 100 ms, and count the requests in flight at once."""
    for sim in sims.values():
        sim.latency_ms = 100
        sim.reset_counts()
    yield sims
    for sim in sims.values():
        sim.latency_ms = 0


def test_requests_go_several_at_once_up_to_the_cap(conn, slow):
    inputs = [GOOD] * 20
    columns = (inputs, [None] * 20, [True] * 20, ["Housingprediction"] * 20, [1] * 20, [1] * 20)
    assert len(conn.execute(INVOKE_BATCH, columns).fetchone()[0]) == 20
    assert slow["azureml"].counts()["max_in_flight"] == DEFAULT_PARALLEL_REQUESTS
    conn.execute("SET azure_ai_sim.max_parallel_requests = 3")
    try:
        texts = [f"Fine {i}" for i in range(100)]
        assert len(sentiments(conn, texts, ["en"] * 100, [5] * 100)) == 100
        counts = slow["comprehend"].counts()
        assert (counts["max_in_flight"], counts["served"]) == (3, 20)  # 100 rows, 5 a request
    finally:
        conn.execute("RESET azure_ai_sim.max_parallel_requests")


def test_each_request_has_its_own_rows_deadline(conn, slow):
    """timeout_ms bounds each row's call: 16 rows of 100 ms with timeout_ms 250 take two
    rounds of 8, and none times out; a call slower than its timeout_ms still does."""
    columns = ([GOOD] * 16, [250] * 16, [True] * 16, ["Housingprediction"] * 16, [1] * 16, [1] * 16)
    with psycopg.connect(conn.info.dsn, autocommit=True) as other:
        per_row = [
            other.execute(INVOKE_ROW, row).fetchone()[0] for row in zip(*columns, strict=True)
        ]
    assert conn.execute(INVOKE_BATCH, columns).fetchone()[0] == per_row
    columns[1][5] = 50
    expected = error_of(conn, INVOKE_ROW, [column[5] for column in columns])
    assert expected[1:3] == (
        "57014",
        f"azure_ml.invoke: no response from {slow['azureml'].url}/score within 50 ms",
    )
    assert batch_error_of(conn, INVOKE_BATCH, columns) == expected


def test_a_batch_can_be_cancelled(database, slow):
    slow["bedrock"].latency_ms = 2000
    nulls = "array_fill(NULL::text, ARRAY[20])"
    statement = (
        f"SELECT aws_ml_internal.invoke_model_batch(array_fill('{TITAN}'::varchar, ARRAY[20]),"
        f' {nulls}, {nulls}, array_fill(\'{{"inputText": "x"}}\'::text, ARRAY[20]))'
    )
    call = run_in_thread(database, statement)
    time.sleep(0.5)
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("SELECT pg_cancel_backend(%s)", (call["pid"],))
    assert_interrupted(call, "due to user request", "aws_bedrock.invoke_model")
    call = run_in_thread(database, statement, "SET statement_timeout = 500")
    assert_interrupted(call, "due to statement timeout", "aws_bedrock.invoke_model")
