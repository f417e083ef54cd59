"""azure_ml.score: a row's input in, its prediction out, the request shaped by the
endpoint's swagger or the azure_ml.request_format setting; batched in batch mode."""

from __future__ import annotations

import json
import re

import psycopg
import pytest

from azure_ai_sim.sim import Fault
from azure_ai_sim.sim.models import DIABETES, HOUSING
from samples import DIABETES_ROWS

HOUSING_ROWS = [[8.3252, 41, 6.98, 1.02, 322, 2.56, 37.88, -122.23], [1, 2, 3, 4, 5, 6, 7, 8]]
BATCH_LINE = re.compile(r"Batch Processing: num batches=(\d+) avg/min/max batch size=")


@pytest.fixture
def conn(database, azureml):
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS azure_ai")
        url = azureml.url + "/score"
        conn.execute("SELECT azure_ai.set_setting('azure_ml.scoring_endpoint', %s)", (url,))
        conn.execute("SELECT azure_ai.set_setting('azure_ml.endpoint_key', %s)", (azureml.keys[0],))
        conn.execute("SELECT azure_ai.set_setting('azure_ml.request_format', NULL)")
        conn.execute("SET azure_ai_sim.enable_batch_mode = on")
        yield conn


def scoring_requests(azureml) -> list[dict]:
    return [r for r in azureml.recorded.snapshot() if r["path"].endswith("/score")]


def houses(conn, name: str, rows: int, short_row: int | None = None) -> list[list[int]]:
    """A temp table `name` of rows (id, features); row short_row has 2 features, not 8.
    Returns the features of the other rows, by id."""
    conn.execute(
        f"CREATE TEMP TABLE {name} AS SELECT g AS id, CASE WHEN g = %s THEN ARRAY[1, 2]"
        " ELSE ARRAY[g, 2, 3, 4, 5, 6, 7, 8] END::float8[] AS features"
        " FROM generate_series(1, %s) g",
        (short_row, rows),
    )
    return [[g, 2, 3, 4, 5, 6, 7, 8] for g in range(1, rows + 1)]


def test_an_array_is_one_row_of_the_request(conn, azureml):
    (prediction,) = conn.execute(
        "SELECT azure_ml.score(%s::float8[])", (HOUSING_ROWS[1],)
    ).fetchone()
    assert prediction == pytest.approx(HOUSING.predict([HOUSING_ROWS[1]])[0])
    (request,) = scoring_requests(azureml)
    # the swagger's pandas "split" form, with its columns
    split = {"columns": list(HOUSING.features), "index": [0], "data": [HOUSING_ROWS[1]]}
    assert json.loads(request["body"]) == {"input_data": split}


def test_a_table_is_scored_in_shared_requests_equal_to_per_row_invoke(conn, azureml):
    houses(conn, "houses", 30)
    query = "SELECT id, azure_ml.score(features) FROM houses ORDER BY id"
    plan = [r[0] for r in conn.execute(f"EXPLAIN (ANALYZE, COSTS OFF) {query}")]
    assert [int(m[1]) for m in map(BATCH_LINE.search, plan) if m] == [1]
    azureml.recorded.clear()
    scored = [row[1] for row in conn.execute(query)]
    assert len(scoring_requests(azureml)) == 1  # 30 rows, one request
    invoked = [
        row[0][0]
        for row in conn.execute(
            "SELECT azure_ml.invoke(jsonb_build_object('input_data', jsonb_build_array("
            "to_jsonb(features)))) FROM houses ORDER BY id"
        )
    ]
    assert scored == invoked
    azureml.recorded.clear()
    conn.execute(query.replace("features)", "features, max_batch_count => 7)")).fetchall()
    requests = scoring_requests(azureml)
    sizes = sorted(len(json.loads(r["body"])["input_data"]["data"]) for r in requests)
    assert sizes == [2, 7, 7, 7, 7]  # in parallel: in any order
    azureml.recorded.clear()
    each_own = "features, max_batch_count => CASE WHEN id = 1 THEN 2 ELSE 10 END)"
    conn.execute(query.replace("features)", each_own) + " LIMIT 5").fetchall()
    requests = scoring_requests(azureml)
    # no request holds more rows than any of its rows allows: row 1 allows 2
    sizes = sorted(len(json.loads(r["body"])["input_data"]["data"]) for r in requests)
    assert sizes == [2, 8, 10, 10]


def rows_sent(azureml) -> list[list[int]]:
    """Each scoring request's rows, by their first feature (the id)."""
    requests = scoring_requests(azureml)
    return sorted([row[0] for row in json.loads(r["body"])["input_data"]["data"]] for r in requests)


def test_a_batch_of_many_parts_is_one_batch_and_its_requests_are_full(conn, azureml):
    # 2,500 rows: the node hands them to the batch form in parts of 1,000 as it reads them;
    # the rows are spread over the parallel requests (250 each) across the parts
    features = houses(conn, "many", 2500)
    query = "SELECT id, azure_ml.score(features) FROM many"
    plan = [r[0] for r in conn.execute(f"EXPLAIN (ANALYZE, COSTS OFF) {query}")]
    assert "num batches=1 avg/min/max batch size=2500.000" in "".join(plan)
    azureml.recorded.clear()
    scored = conn.execute(query).fetchall()
    assert [row[0] for row in scored] == list(range(1, 2501))
    assert [row[1] for row in scored] == pytest.approx(HOUSING.predict(features))
    assert rows_sent(azureml) == [list(range(g, g + 250)) for g in range(1, 2501, 250)]


def test_a_failing_row_in_a_later_part_fails_alone(conn, azureml):
    houses(conn, "many", 2500, short_row=1700)
    query = "SELECT azure_ml.score(features) FROM many"
    assert len(conn.execute(f"{query} LIMIT 1699").fetchall()) == 1699
    # nothing is sent for the rows after the failing one, in its part or later
    assert [row for run in rows_sent(azureml) for row in run] == list(range(1, 1700))
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        conn.execute(query).fetchall()
    assert "input_data has 2 values" in caught.value.diag.message_primary


def test_a_batch_that_a_query_error_ends_between_parts_is_given_up(conn, azureml):
    features = houses(conn, "many", 2500)
    # row 1,500's argument fails in the node, after the first part's requests were sent
    with pytest.raises(psycopg.errors.DivisionByZero):
        conn.execute(
            "SELECT azure_ml.score(features[1:7] || 1 / (id - 1500)::float8) FROM many"
        ).fetchall()
    azureml.recorded.clear()  # the next statement's batch starts anew
    scored = [row[0] for row in conn.execute("SELECT azure_ml.score(features) FROM many")]
    assert scored == pytest.approx(HOUSING.predict(features))
    # every row was sent (the failed statement's first requests may still land meanwhile)
    assert {row for run in rows_sent(azureml) for row in run} == set(range(1, 2501))


def test_outside_a_batchable_place_each_row_is_a_request_of_its_own(conn, azureml):
    query = (
        "SELECT g FROM generate_series(1, 4) g"
        " WHERE (azure_ml.score(ARRAY[g, 2, 3, 4, 5, 6, 7, 8]) #>> '{}')::float8 > -40.5"
    )
    plan = [r[0] for r in conn.execute(f"EXPLAIN (COSTS OFF) {query}")]
    assert not any("Batch" in line for line in plan)
    predictions = HOUSING.predict([[g, 2, 3, 4, 5, 6, 7, 8] for g in range(1, 5)])
    expected = [g for g, p in zip(range(1, 5), predictions, strict=True) if p > -40.5]
    assert [row[0] for row in conn.execute(query)] == expected
    assert len(scoring_requests(azureml)) == 4


@pytest.mark.parametrize("setting", [None, "data"])
def test_the_v1_data_shape_from_the_services_swagger_or_a_setting(conn, azureml, setting):
    conn.execute(
        "SELECT azure_ai.set_setting('azure_ml.scoring_endpoint', %s)",
        (azureml.url + "/api/v1/service/diabetes/score",),
    )
    conn.execute("SELECT azure_ai.set_setting('azure_ml.request_format', %s)", (setting,))
    rows = conn.execute(
        "SELECT azure_ml.score(r::float8[]) FROM jsonb_array_elements(%s) e,"
        " LATERAL (SELECT array_agg(x::float8) FROM jsonb_array_elements_text(e) x) a(r)",
        (json.dumps(DIABETES_ROWS),),
    ).fetchall()
    assert [row[0] for row in rows] == pytest.approx(DIABETES.predict(DIABETES_ROWS))
    assert all("data" in json.loads(r["body"]) for r in scoring_requests(azureml))


def test_inputs_that_fit_no_row_are_refused_before_sending(conn, azureml):
    for value, message in [
        ("'\"x\"'", "input_data must be a row, an array or a JSON object, not a JSON string"),
        ("'{\"a\": 1}'", "input_data does not match the endpoint's columns (MedInc, HouseAge,"),
        ("ARRAY[1, 2]", "input_data has 2 values; the endpoint takes 8 (MedInc, HouseAge,"),
        ("ARRAY['1', '2', '3', '4', '5', '6', '7', '8']", 'input_data\'s MedInc is "1";'),
    ]:
        with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
            conn.execute(f"SELECT azure_ml.score({value})")
        assert caught.value.diag.message_primary.startswith(f"azure_ml.score: {message}")
    assert scoring_requests(azureml) == []


def test_a_row_that_does_not_fit_fails_alone_after_the_rows_before_it(conn, azureml):
    houses(conn, "uneven", 5, short_row=3)
    query = "SELECT azure_ml.score(features) FROM uneven"
    # one batch of 5 rows: the two before row 3 are sent and answered, nothing after it
    assert [row[0] for row in conn.execute(f"{query} LIMIT 2")] == pytest.approx(
        HOUSING.predict([[1, 2, 3, 4, 5, 6, 7, 8], [2, 2, 3, 4, 5, 6, 7, 8]])
    )
    (request,) = scoring_requests(azureml)
    assert [row[0] for row in json.loads(request["body"])["input_data"]["data"]] == [1, 2]
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        conn.execute(query).fetchall()
    assert caught.value.diag.message_primary.startswith(
        "azure_ml.score: input_data has 2 values; the endpoint takes 8"
    )


# Stream Analytics' example rows ("Integrate Azure Stream Analytics with Azure Machine
# Learning"), for its designer-style deployment: the createArray form and the DataFrame form.
TAXI = "deployment_name => 'nyc-taxi-fare'"


def test_stream_analytics_rows_as_arrays_and_as_a_table(conn, azureml):
    (fare,) = conn.execute(
        f"SELECT azure_ml.score(ARRAY['1', 'Mon', '12', '1', '5.8'], {TAXI})"
    ).fetchone()
    assert fare["Scored Labels"] == 17.5
    (request,) = scoring_requests(azureml)
    assert json.loads(request["body"]) == {
        "Inputs": {"WebServiceInput0": [
            {"vendorid": "1", "weekday": "Mon", "pickuphour": "12", "passenger": "1",
             "distance": "5.8"},
        ]},
        "GlobalParameters": {},
    }  # fmt: skip
    conn.execute(
        "CREATE TEMP TABLE trips (vendorid text, weekday text, pickuphour text,"
        " passenger text, distance text)"
    )
    conn.execute("INSERT INTO trips VALUES ('1', 'Mon', '12', '1', '5.8'), ('2', 'Tue', '10',"
                 " '2', '10')")  # fmt: skip
    fares = conn.execute(f"SELECT azure_ml.score(t, {TAXI}) ->> 'Scored Labels' FROM trips t")
    assert [float(row[0]) for row in fares] == [17.5, 28.0]
    assert len(scoring_requests(azureml)) == 2  # the table's two rows in one request


def test_a_prediction_count_that_does_not_match_is_an_error(conn, azureml):
    azureml.faults.extend([Fault(status=200, body="[1, 2, 3]")])
    with pytest.raises(psycopg.Error) as caught:
        conn.execute("SELECT azure_ml.score(ARRAY[1, 2, 3, 4, 5, 6, 7, 8])")
    assert caught.value.diag.message_primary == (
        "azure_ml.score: the endpoint answered 3 predictions for 1 rows"
    )


@pytest.mark.parametrize("status", [400, 401, 404, 409])
def test_fatal_statuses_fail_at_once(conn, azureml, status):
    azureml.faults.extend([Fault(status=status)] * 3)
    with pytest.raises(psycopg.Error):
        conn.execute("SELECT azure_ml.score(ARRAY[1,2,3,4,5,6,7,8], max_attempts => 3,"
                     " retry_delay_ms => 0)")  # fmt: skip
    assert len(scoring_requests(azureml)) == 1
    azureml.faults.clear()


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retried(conn, azureml, status):
    azureml.faults.extend([Fault(status=status)])
    (prediction,) = conn.execute(
        "SELECT azure_ml.score(ARRAY[1,2,3,4,5,6,7,8], max_attempts => 2, retry_delay_ms => 0)"
    ).fetchone()
    assert prediction == pytest.approx(HOUSING.predict([[1, 2, 3, 4, 5, 6, 7, 8]])[0])
    assert len(scoring_requests(azureml)) == 2


def test_throw_on_error_false_gives_null_and_a_warning_for_failing_rows(conn, azureml):
    conn.execute(
        "CREATE TEMP TABLE mixed AS SELECT g AS id, CASE WHEN g = 2 THEN 'nope'"
        " ELSE 'Housingprediction' END AS deployment FROM generate_series(1, 3) g"
    )
    warnings: list[str] = []
    conn.add_notice_handler(lambda notice: warnings.append(notice.message_primary))
    rows = conn.execute(
        "SELECT id, azure_ml.score(ARRAY[1,2,3,4,5,6,7,8], throw_on_error => false,"
        " deployment_name => deployment) FROM mixed ORDER BY id"
    ).fetchall()
    expected = HOUSING.predict([[1, 2, 3, 4, 5, 6, 7, 8]])[0]
    assert [row[1] for row in rows] == [pytest.approx(expected), None, pytest.approx(expected)]
    assert len(warnings) == 1 and warnings[0].startswith("azure_ml.score: HTTP 404")


def test_the_swagger_is_fetched_once_and_again_for_another_endpoint(conn, azureml):
    conn.execute("SELECT azure_ml.score(ARRAY[1,2,3,4,5,6,7,8])")
    served = azureml.served
    conn.execute("SELECT azure_ml.score(ARRAY[1,2,3,4,5,6,7,8])")
    assert azureml.served == served + 1  # the scoring request only
    conn.execute(
        "SELECT azure_ai.set_setting('azure_ml.scoring_endpoint', %s)",
        (azureml.url.replace("127.0.0.1", "localhost") + "/score",),
    )
    conn.execute("SELECT azure_ml.score(ARRAY[1,2,3,4,5,6,7,8])")
    assert azureml.served == served + 3  # the new endpoint's swagger, then the scoring


# --- against Microsoft's inference server, whose swagger inference-schema generates -------


@pytest.fixture(scope="module")
def inference_url():
    from inference_server import SCORE_SCRIPT, inference_server, server_python

    python, reason = server_python()
    if python is None:
        pytest.fail(f"the inference server's venv is missing (make test installs it): {reason}")
    with inference_server(SCORE_SCRIPT, python=python) as url:
        yield url


def test_a_table_row_maps_to_the_swagger_columns_of_a_real_inference_server(conn, inference_url):
    """Stream Analytics' taxi example: a row of a typed table, its fields by name, sent in
    the records form the server's swagger declares; then a row that does not fit."""
    conn.execute("SELECT azure_ai.set_setting('azure_ml.scoring_endpoint', %s)",
                 (inference_url + "/score",))  # fmt: skip
    conn.execute(
        "CREATE TEMP TABLE trips (vendorid int, weekday text, pickuphour int, passenger int,"
        " distance float8)"
    )
    conn.execute("INSERT INTO trips VALUES (1, 'Mon', 12, 1, 5.8), (2, 'Tue', 10, 2, 10)")
    fares = [row[0] for row in conn.execute("SELECT azure_ml.score(t) FROM trips t")]
    assert fares == pytest.approx([3 + 2.5 * 5.8, 3 + 2.5 * 10 + 0.5 + 0.25])
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        conn.execute("SELECT azure_ml.score(ROW(1, 'Mon', 12)::record)")
    assert caught.value.diag.message_primary == (
        "azure_ml.score: input_data does not match the endpoint's columns (vendorid, weekday,"
        " pickuphour, passenger, distance): missing vendorid, weekday, pickuphour, passenger,"
        " distance; not a column: f1, f2, f3"
    )
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        conn.execute(
            'SELECT azure_ml.score(\'{"vendorid": 1, "weekday": "Mon", "pickuphour":'
            ' "noon", "passenger": 1, "distance": 5.8}\')'
        )
    assert caught.value.diag.message_primary == (
        'azure_ml.score: input_data\'s pickuphour is "noon"; the endpoint takes a integer'
    )
