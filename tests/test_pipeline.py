"""ml_pipeline: a declared column kept equal to one of our functions of each row, through
triggers, a queue and workers (CALL ml_pipeline.run), against the Comprehend simulator."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import psycopg
import pytest

from azure_ai_sim.sim import AzureMLSimulator, ComprehendSimulator, Fault
from azure_ai_sim.sim.models import HOUSING
from cluster import Cluster
from conftest import notices, point_aws_at

SENTIMENT = "(aws_comprehend.detect_sentiment(body, 'en')).sentiment"
TEXTS = ["Great, I love it.", "This is terrible.", "It arrived on Tuesday."]


@pytest.fixture(scope="module")
def comprehend():
    with ComprehendSimulator() as simulator:
        yield simulator


@pytest.fixture
def conn(database, comprehend):
    comprehend.faults.clear()
    comprehend.recorded.clear()
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS aws_ml CASCADE")
        conn.execute("CREATE EXTENSION IF NOT EXISTS ml_pipeline")
        point_aws_at(conn, {"comprehend": comprehend.url})
        conn.execute("DROP TABLE IF EXISTS reviews CASCADE")
        conn.execute("DELETE FROM ml_pipeline.pipelines")
        conn.execute("CREATE TABLE reviews (id int PRIMARY KEY, body text, stars int)")
        yield conn


def expected(conn, texts: list[str]) -> list[str]:
    return [
        conn.execute(f"SELECT {SENTIMENT} FROM (SELECT %s::text AS body) r", (text,)).fetchone()[0]
        for text in texts
    ]


def sentiments(conn) -> list[tuple]:
    return conn.execute("SELECT id, sentiment FROM reviews ORDER BY id").fetchall()


def status(conn) -> dict:
    cursor = conn.execute("SELECT * FROM ml_pipeline.status WHERE name = 'mood'")
    names = [column.name for column in cursor.description]
    return dict(zip(names, cursor.fetchone(), strict=True))


def declare(conn, **options) -> None:
    arguments = "".join(f", {key} => {value}" for key, value in options.items())
    conn.execute(
        f"SELECT ml_pipeline.create('mood', 'reviews', %s, 'sentiment'{arguments})", (SENTIMENT,)
    )


def test_existing_rows_are_backfilled_and_new_and_changed_rows_follow(conn, comprehend):
    conn.execute("INSERT INTO reviews SELECT g, %s, 5 FROM generate_series(1, 3) g", (TEXTS[0],))
    declare(conn)
    assert status(conn)["pending"] == 3 and status(conn)["done"] == 0
    conn.execute("CALL ml_pipeline.run()")
    assert sentiments(conn) == [(g, expected(conn, TEXTS[:1])[0]) for g in (1, 2, 3)]
    requests = len(comprehend.recorded.snapshot())

    # new rows, and a changed body, are queued; an unrelated column queues nothing
    conn.execute("INSERT INTO reviews VALUES (4, %s, 1), (5, %s, 3)", TEXTS[1:])
    conn.execute("UPDATE reviews SET body = %s WHERE id = 1", (TEXTS[1],))
    conn.execute("UPDATE reviews SET stars = 2 WHERE id = 2")
    queued = conn.execute("SELECT key FROM ml_pipeline.queue ORDER BY key").fetchall()
    assert [row[0] for row in queued] == [[1], [4], [5]]
    conn.execute("CALL ml_pipeline.run()")
    first, second, third = expected(conn, TEXTS)
    assert sentiments(conn) == [(1, second), (2, first), (3, first), (4, second), (5, third)]
    assert status(conn)["pending"] == 0 and status(conn)["done"] == 5
    assert len(comprehend.recorded.snapshot()) > requests

    # a row changed twice before a worker came is computed once, with its last value
    before = len(comprehend.recorded.snapshot())
    conn.execute("UPDATE reviews SET body = %s WHERE id = 3", (TEXTS[1],))
    conn.execute("UPDATE reviews SET body = %s WHERE id = 3", (TEXTS[2],))
    conn.execute("DELETE FROM reviews WHERE id = 5")
    assert conn.execute("SELECT key, version FROM ml_pipeline.queue").fetchall() == [([3], 2)]
    conn.execute("CALL ml_pipeline.run()")
    assert sentiments(conn)[2] == (3, third)
    assert len(comprehend.recorded.snapshot()) == before + 1


def test_a_row_that_keeps_failing_becomes_a_dead_letter_and_can_be_replayed(conn, comprehend):
    conn.execute("INSERT INTO reviews SELECT g, %s, 5 FROM generate_series(1, 4) g", (TEXTS[0],))
    # the third row's text is refused by the service (400): permanent, a dead letter at once
    conn.execute("UPDATE reviews SET body = '' WHERE id = 3")
    declare(conn, max_attempts=2)
    conn.execute("CALL ml_pipeline.run()")
    rows = sentiments(conn)
    assert [row[1] is not None for row in rows] == [True, True, False, True]
    (letter,) = conn.execute(
        "SELECT key, attempts, sqlstate, message FROM ml_pipeline.dead_letters"
    ).fetchall()
    assert letter[0] == [3] and letter[1] == 1 and letter[2] == "22023"
    assert "aws_comprehend.detect_sentiment" in letter[3]
    assert status(conn)["failed"] == 1
    assert conn.execute("SELECT ml_pipeline.replay('mood')").fetchone()[0] == 1
    conn.execute("UPDATE reviews SET body = %s WHERE id = 3", (TEXTS[2],))
    conn.execute("CALL ml_pipeline.run()")
    assert sentiments(conn)[2][1] == expected(conn, TEXTS[2:])[0]
    assert status(conn)["failed"] == 0


def test_a_transient_failure_is_retried_later_without_holding_up_the_rest(conn, comprehend):
    conn.execute("INSERT INTO reviews SELECT g, %s, 5 FROM generate_series(1, 3) g", (TEXTS[0],))
    declare(conn, batch_size=1)
    # each call retries three times (botocore's standard mode): four 503s fail one row
    comprehend.faults.extend([Fault(status=503)] * 3)
    # the run does the other rows, then waits out the row's backoff (1 to 3 s) and retries it
    conn.execute("CALL ml_pipeline.run()")
    assert all(row[1] is not None for row in sentiments(conn))
    batches = conn.execute(
        "SELECT done, failed FROM ml_pipeline.batches WHERE done + failed > 0 ORDER BY finished"
    ).fetchall()
    assert batches == [(0, 1), (1, 0), (1, 0), (1, 0)]
    assert conn.execute("SELECT count(*) FROM ml_pipeline.queue").fetchone()[0] == 0
    assert json.loads(json.dumps(status(conn)["last_error"]))["sqlstate"] == "58000"


def test_a_row_waits_as_long_as_the_service_or_a_budget_asks(conn, comprehend):
    conn.execute("INSERT INTO reviews VALUES (1, %s, 5)", (TEXTS[0],))
    declare(conn)
    # a 429 whose Retry-After is past the call's own timeout: no retry within the call,
    # and past the minute a run waits for a retry: none within the run either
    comprehend.faults.extend([Fault(status=429, retry_after="120")])
    conn.execute("CALL ml_pipeline.run()")
    wait, error = conn.execute(
        "SELECT extract(epoch FROM not_before - clock_timestamp()), last_error"
        " FROM ml_pipeline.queue"
    ).fetchone()
    assert 100 < wait <= 120, wait  # not the backoff's 1 to 3 s
    assert "retry after: 120 s" not in error["message"]  # in the DETAIL only

    # a spent budget: the row waits for the ledger's next day (00:00 UTC)
    conn.execute("UPDATE ml_pipeline.queue SET not_before = now()")
    conn.execute(
        "INSERT INTO ml_pipeline.budgets (service, requests_per_day) VALUES ('comprehend', 0)"
    )
    try:
        conn.execute("CALL ml_pipeline.run()")
        until, error = conn.execute(
            "SELECT not_before, last_error FROM ml_pipeline.queue"
        ).fetchone()
    finally:
        conn.execute("DELETE FROM ml_pipeline.budgets")
    midnight = conn.execute(
        "SELECT (date_trunc('day', now() AT TIME ZONE 'UTC') + interval '1 day')"
        " AT TIME ZONE 'UTC'"
    ).fetchone()[0]
    assert abs((until - midnight).total_seconds()) < 5, (until, midnight)
    assert error["sqlstate"] == "53400" and "budget of comprehend" in error["message"]
    assert sentiments(conn) == [(1, None)]


def test_a_paused_pipeline_waits_and_a_dropped_one_leaves_its_results(conn):
    conn.execute("INSERT INTO reviews VALUES (1, %s, 5)", (TEXTS[0],))
    declare(conn)
    conn.execute("SELECT ml_pipeline.pause('mood')")
    conn.execute("CALL ml_pipeline.run()")
    assert sentiments(conn) == [(1, None)]
    conn.execute("SELECT ml_pipeline.resume('mood')")
    conn.execute("CALL ml_pipeline.run()")
    assert sentiments(conn)[0][1] is not None
    conn.execute("SELECT ml_pipeline.drop('mood')")
    conn.execute("INSERT INTO reviews VALUES (2, %s, 5)", (TEXTS[1],))
    assert conn.execute("SELECT count(*) FROM ml_pipeline.queue").fetchone()[0] == 0
    assert sentiments(conn)[0][1] is not None and sentiments(conn)[1] == (2, None)


def test_bad_declarations_are_refused(conn):
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="reads no column"):
        conn.execute("SELECT ml_pipeline.create('x', 'reviews', '1 + 1', 'y')")
    conn.execute("CREATE TABLE keyless (body text)")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="primary key"):
        conn.execute("SELECT ml_pipeline.create('x', 'keyless', 'length(body)', 'y')")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="does not work over"):
        conn.execute("SELECT ml_pipeline.create('x', 'reviews', 'nope(body)', 'y')")
    declare(conn)
    with pytest.raises(psycopg.errors.DuplicateObject, match='"mood" exists'):
        declare(conn)


def test_a_table_owner_who_is_no_superuser_declares_works_and_watches_only_their_own(
    conn, make_role
):
    alice, bob = make_role(), make_role()
    conn.execute(f"GRANT CREATE ON SCHEMA public TO {alice}, {bob}")
    conn.execute(f"SET ROLE {alice}")
    conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO notes VALUES (1, 'hello'), (2, 'world')")
    conn.execute("SELECT ml_pipeline.create('shout', 'notes', 'upper(body)', 'loud')")
    conn.execute("CALL ml_pipeline.run()")
    assert conn.execute("SELECT loud FROM notes ORDER BY id").fetchall() == [("HELLO",), ("WORLD",)]
    assert [row[0] for row in conn.execute("SELECT name FROM ml_pipeline.status")] == ["shout"]
    # the owner switches it to another expression, and the worker swaps it in
    conn.execute("SELECT ml_pipeline.switch('shout', %s)", ("upper(body) || '!'",))
    conn.execute("CALL ml_pipeline.run()")
    assert conn.execute("SELECT loud FROM notes ORDER BY id").fetchall() == [
        ("HELLO!",), ("WORLD!",)
    ]  # fmt: skip
    conn.execute(f"SET ROLE {bob}")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="belongs to"):
        conn.execute("SELECT ml_pipeline.switch('shout', 'lower(body)')")
    assert conn.execute("SELECT count(*) FROM ml_pipeline.status").fetchone()[0] == 0
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="belongs to"):
        conn.execute("SELECT ml_pipeline.pause('shout')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT ml_pipeline.create('steal', 'notes', 'lower(body)', 'quiet')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT * FROM ml_pipeline.queue")
    conn.execute("RESET ROLE")
    conn.execute("DROP TABLE notes CASCADE")


COUNT_WRITES = """
CREATE OR REPLACE FUNCTION count_writes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.writes := OLD.writes + 1;
    RETURN NEW;
END $$;
ALTER TABLE reviews ADD COLUMN writes int NOT NULL DEFAULT 0;
CREATE TRIGGER count_writes BEFORE UPDATE ON reviews FOR EACH ROW EXECUTE FUNCTION count_writes();
"""


def workers(database: str, count: int) -> None:
    """count workers at once, each CALL ml_pipeline.run() on a connection of its own."""
    failures: list[BaseException] = []

    def work() -> None:
        try:
            with psycopg.connect(database, autocommit=True) as worker:
                worker.execute("CALL ml_pipeline.run()")
        except BaseException as failure:
            failures.append(failure)

    threads = [threading.Thread(target=work) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not failures, failures


def test_three_workers_share_the_queue_and_write_each_row_once(conn, database, comprehend):
    declare(conn, batch_size=100)
    conn.execute(COUNT_WRITES)
    # a 503 for every tenth request (each call tries three times, and the pipeline again)
    comprehend.faults.extend([Fault(status=503) if i % 10 == 0 else Fault() for i in range(300)])
    comprehend.latency_ms = 20
    comprehend.reset_counts()
    ledger = "SELECT coalesce(sum(requests), 0) FROM ml_pipeline.usage WHERE endpoint = %s"
    endpoint = comprehend.url.rstrip("/") + "/"
    requests_before = conn.execute(ledger, (endpoint,)).fetchone()[0]
    try:
        conn.execute(
            "INSERT INTO reviews SELECT g, 'review number ' || g, 5 FROM generate_series(1, 5000) g"
        )
        workers(database, 3)
    finally:
        comprehend.latency_ms = 0
    # the ledger counted every attempt of the three workers, 503s included
    requests = conn.execute(ledger, (endpoint,)).fetchone()[0] - requests_before
    assert requests == len(comprehend.recorded.snapshot()) > 200
    unscored, fewest, most = conn.execute(
        "SELECT count(*) FILTER (WHERE sentiment IS NULL), min(writes), max(writes) FROM reviews"
    ).fetchone()
    assert (unscored, fewest, most) == (0, 1, 1)
    assert conn.execute("SELECT count(*) FROM ml_pipeline.dead_letters").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM ml_pipeline.queue").fetchone()[0] == 0
    assert comprehend.counts()["max_in_flight"] > 1  # the workers' requests overlapped


def test_a_backfill_with_changes_coming_and_two_workers_writes_each_row_once(
    conn, database, comprehend
):
    conn.execute("INSERT INTO reviews SELECT g, 'review ' || g, 5 FROM generate_series(1, 2000) g")
    declare(conn, batch_size=100)
    conn.execute(COUNT_WRITES)
    comprehend.latency_ms = 20
    changer = threading.Thread(target=lambda: change_while_working(database))
    try:
        changer.start()
        workers(database, 2)
        changer.join(60)
        workers(database, 1)  # what the last changes queued
    finally:
        comprehend.latency_ms = 0
    # once, or twice for a row changed after the backfill computed it
    rows = conn.execute(
        "SELECT count(*) FILTER (WHERE sentiment IS NULL), min(writes), max(writes),"
        " max(writes) FILTER (WHERE body NOT LIKE 'changed%%') FROM reviews"
    ).fetchone()
    assert rows[:2] == (0, 1) and rows[2] <= 2 and rows[3] == 1, rows
    assert status(conn)["pending"] == 0 and status(conn)["backfill_done"]
    # each changed row has the result of its new text
    changed = conn.execute("SELECT DISTINCT sentiment FROM reviews WHERE body LIKE 'changed%%'")
    assert changed.fetchall() == [(expected(conn, ["changed: This is terrible."])[0],)]


def change_while_working(database: str) -> None:
    with psycopg.connect(database, autocommit=True) as writer:
        for start in range(1, 2000, 200):
            writer.execute(
                "UPDATE reviews SET body = 'changed: This is terrible.'"
                " WHERE id BETWEEN %s AND %s",
                (start, start + 9),
            )
            time.sleep(0.05)


# The test cluster runs with synchronous_commit off, which may lose the last commits in a
# crash: these sessions commit as a production server does.
DURABLE = "-c synchronous_commit=on"


def run_until_killed(database: str) -> None:
    with (
        psycopg.connect(database, autocommit=True, options=DURABLE) as worker,
        pytest.raises(psycopg.OperationalError),
    ):
        worker.execute("CALL ml_pipeline.run()")


def test_a_worker_killed_mid_batch_loses_nothing(conn, database, server, comprehend):
    if not isinstance(server, Cluster):
        pytest.skip("kill -9 needs the postmaster of the private cluster")
    conn.execute("SET synchronous_commit = on")
    conn.execute("INSERT INTO reviews SELECT g, 'review ' || g, 5 FROM generate_series(1, 300) g")
    declare(conn, batch_size=100)
    conn.execute(COUNT_WRITES)
    comprehend.latency_ms = 3000  # the first batch is on its way when the worker dies
    try:
        worker = threading.Thread(target=run_until_killed, args=(database,))
        worker.start()
        pid = None
        for _ in range(500):
            row = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE query LIKE 'CALL ml_pipeline.run%%'"
                " AND state = 'active'"
            ).fetchone()
            if row and comprehend.in_flight:
                pid = row[0]
                break
            time.sleep(0.02)
        assert pid is not None, "the worker never got to its first batch"
        os.kill(pid, signal.SIGKILL)
        worker.join(60)
    finally:
        comprehend.latency_ms = 0
    for _ in range(500):  # the server restarts every backend after a crash
        try:
            with psycopg.connect(database, autocommit=True) as after:
                after.execute("SELECT 1")
            break
        except psycopg.OperationalError:
            time.sleep(0.05)
    with psycopg.connect(database, autocommit=True) as after:
        # the batch died with its transaction: no result, and the backfill did not move on
        assert after.execute("SELECT max(writes) FROM reviews").fetchone()[0] == 0
        assert after.execute(
            "SELECT backfill_after, backfill_done FROM ml_pipeline.pipelines"
        ).fetchone() == (None, False)
        after.execute("CALL ml_pipeline.run()")
        unscored, fewest, most = after.execute(
            "SELECT count(*) FILTER (WHERE sentiment IS NULL), min(writes), max(writes)"
            " FROM reviews"
        ).fetchone()
        assert (unscored, fewest, most) == (0, 1, 1)


EMBEDDING = "azure_local_ai.create_embeddings('multilingual-e5-small:v1', body)"


def embeddings_of_two_reviews(conn) -> None:
    """The pipeline "vectors": embeddings of two reviews in the sink review_embeddings."""
    conn.execute("CREATE EXTENSION IF NOT EXISTS azure_local_ai CASCADE")
    conn.execute("DROP TABLE IF EXISTS review_embeddings, review_embeddings__next")
    conn.execute("INSERT INTO reviews VALUES (1, %s, 5), (2, %s, 1)", TEXTS[:2])
    conn.execute(
        "SELECT ml_pipeline.create('vectors', 'reviews', %s, 'embedding',"
        " sink => 'review_embeddings')",
        (EMBEDDING,),
    )
    conn.execute("CALL ml_pipeline.run()")


def test_embeddings_into_a_sink_table_follow_inserts_updates_and_deletes(conn):
    embeddings_of_two_reviews(conn)

    def sunk() -> dict:
        rows = conn.execute("SELECT id, embedding FROM review_embeddings ORDER BY id")
        return dict(rows.fetchall())

    def direct(text: str) -> list:
        return conn.execute(
            f"SELECT {EMBEDDING} FROM (SELECT %s::text AS body) r", (text,)
        ).fetchone()[0]

    assert sunk() == {1: direct(TEXTS[0]), 2: direct(TEXTS[1])}
    assert len(sunk()[1]) == 384
    conn.execute("UPDATE reviews SET body = %s WHERE id = 2", (TEXTS[2],))
    conn.execute("DELETE FROM reviews WHERE id = 1")
    conn.execute("INSERT INTO reviews VALUES (3, %s, 4)", (TEXTS[0],))
    conn.execute("CALL ml_pipeline.run()")
    assert sunk() == {2: direct(TEXTS[2]), 3: direct(TEXTS[0])}


def test_a_sink_switches_to_another_model_with_the_indexes_of_its_new_table(conn):
    embeddings_of_two_reviews(conn)
    queries = EMBEDDING.replace("body", "'query: ' || body")
    # the new table, made beforehand with an index of its own
    conn.execute("CREATE TABLE review_embeddings__next (LIKE review_embeddings INCLUDING ALL)")
    conn.execute("CREATE INDEX review_embeddings_by_vector ON review_embeddings__next (embedding)")
    conn.execute("SELECT ml_pipeline.switch('vectors', %s)", (queries,))
    conn.execute("CALL ml_pipeline.run()")
    wanted = conn.execute(f"SELECT id, {queries} FROM reviews ORDER BY id").fetchall()
    assert conn.execute("SELECT id, embedding FROM review_embeddings ORDER BY id").fetchall() \
        == wanted  # fmt: skip
    relations = conn.execute("SELECT relname FROM pg_class WHERE relname LIKE 'review_emb%'")
    assert {name for (name,) in relations} == {
        "review_embeddings", "review_embeddings_by_vector", "review_embeddings__next_pkey"
    }  # fmt: skip
    assert conn.execute("SELECT sink::text, expression FROM ml_pipeline.pipelines").fetchall() == [
        ("review_embeddings", queries)
    ]
    conn.execute("DELETE FROM reviews WHERE id = 1")  # the sink follows, as before
    assert conn.execute("SELECT id FROM review_embeddings").fetchall() == [(2,)]
    # without a table made beforehand, the switch makes it; cancelled, it goes
    conn.execute("SELECT ml_pipeline.switch('vectors', %s)", (EMBEDDING,))
    assert conn.execute("SELECT to_regclass('review_embeddings__next')").fetchone()[0]
    conn.execute("SELECT ml_pipeline.cancel_switch('vectors')")
    assert conn.execute("SELECT to_regclass('review_embeddings__next')").fetchone() == (None,)


LOWER = f"lower({SENTIMENT})"  # "another model": its answers are told apart by their case


def read_throughout(database: str, answers: list, failures: list, stop: threading.Event) -> None:
    """Reads every result, over and over, until told to stop: (rows, results, new ones)."""
    with psycopg.connect(database, autocommit=True) as reader:
        while not stop.is_set():
            try:
                answers.append(reader.execute(
                    "SELECT count(*), count(sentiment),"
                    " count(*) FILTER (WHERE sentiment = lower(sentiment)) FROM reviews"
                ).fetchone())  # fmt: skip
            except psycopg.Error as failure:
                failures.append(failure)
            time.sleep(0.005)


def test_a_model_switch_fills_a_shadow_while_queries_read_the_old_results(
    conn, database, comprehend
):
    conn.execute(
        "INSERT INTO reviews SELECT g, (%s::text[])[g %% 3 + 1], 5 FROM generate_series(1, 300) g",
        (TEXTS,),
    )
    declare(conn, batch_size=50)
    conn.execute("CALL ml_pipeline.run()")
    conn.execute("SELECT ml_pipeline.switch('mood', %s)", (LOWER,))
    shadow = conn.execute(
        "SELECT total, pending FROM ml_pipeline.status WHERE name = 'mood (next)'"
    ).fetchone()
    assert shadow == (300, 300)
    # changes during the switch reach both: the old results and the shadow
    conn.execute("INSERT INTO reviews VALUES (301, %s, 1)", (TEXTS[1],))
    conn.execute("UPDATE reviews SET body = %s WHERE id = 1", (TEXTS[2],))

    answers: list = []
    failures: list = []
    stop = threading.Event()
    reader = threading.Thread(target=read_throughout, args=(database, answers, failures, stop))
    comprehend.latency_ms = 30
    reader.start()
    try:
        time.sleep(0.1)
        conn.execute("CALL ml_pipeline.run()")  # the shadow fills, then is swapped in
        time.sleep(0.1)
    finally:
        stop.set()
        reader.join(30)
        comprehend.latency_ms = 0
    assert failures == []
    # every answer saw a result for every row (the new row's came soon), all old or all
    # new: never a mix
    assert all(rows == 301 and results >= 300 for rows, results, _ in answers), answers
    assert all(new in (0, results) for _, results, new in answers), answers
    assert (answers[0][2], answers[-1][1:]) == (0, (301, 301))
    assert len(answers) > 10

    old = dict(zip(TEXTS, expected(conn, TEXTS), strict=True))
    bodies = dict(conn.execute("SELECT id, body FROM reviews").fetchall())
    assert sentiments(conn) == [(key, old[bodies[key]].lower()) for key in sorted(bodies)]
    columns = conn.execute(
        "SELECT array_agg(attname::text ORDER BY attnum) FROM pg_attribute"
        " WHERE attrelid = 'reviews'::regclass AND attnum > 0 AND NOT attisdropped"
    ).fetchone()[0]
    assert columns == ["id", "body", "stars", "sentiment"]
    assert conn.execute("SELECT name FROM ml_pipeline.status").fetchall() == [("mood",)]
    # from now on, the new expression
    conn.execute("INSERT INTO reviews VALUES (302, %s, 1)", (TEXTS[0],))
    conn.execute("CALL ml_pipeline.run()")
    assert sentiments(conn)[-1] == (302, old[TEXTS[0]].lower())


def test_a_switch_can_be_cancelled_and_waits_for_a_view_of_the_old_column(conn):
    conn.execute("INSERT INTO reviews VALUES (1, %s, 5), (2, %s, 1)", TEXTS[:2])
    declare(conn)
    conn.execute("CALL ml_pipeline.run()")
    before = sentiments(conn)
    conn.execute("SELECT ml_pipeline.switch('mood', %s)", (LOWER,))
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="switching already"):
        conn.execute("SELECT ml_pipeline.switch('mood', %s)", (LOWER,))
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as incomplete:
        conn.execute("SELECT ml_pipeline.swap('mood')")
    assert incomplete.value.diag.message_primary == (
        'ml_pipeline.swap: ml_pipeline: the shadow of "mood" is not complete: 0 rows queued,'
        " 0 dead letters, its backfill not done"
    )
    conn.execute("SELECT ml_pipeline.cancel_switch('mood')")
    assert conn.execute(
        "SELECT count(*) FROM pg_attribute WHERE attrelid = 'reviews'::regclass"
        " AND attname = 'sentiment__next'"
    ).fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM ml_pipeline.queue").fetchone() == (0,)
    assert conn.execute(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'reviews'::regclass"
    ).fetchone() == (3,)
    assert sentiments(conn) == before

    # a view reads the old column: the worker's swap fails, says why, and waits
    conn.execute("CREATE VIEW moods AS SELECT id, sentiment FROM reviews")
    conn.execute("SELECT ml_pipeline.switch('mood', %s)", (LOWER,))
    warnings = notices(conn)
    conn.execute("CALL ml_pipeline.run()")
    assert any('the swap of "mood" failed' in warning for warning in warnings), warnings
    error = conn.execute(
        "SELECT last_error FROM ml_pipeline.status WHERE name = 'mood (next)'"
    ).fetchone()[0]
    assert error["sqlstate"] == "2BP01", error
    assert sentiments(conn) == before
    conn.execute("DROP VIEW moods")
    conn.execute("SELECT ml_pipeline.swap('mood')")
    assert sentiments(conn) == [(key, value.lower()) for key, value in before]


def test_a_continuous_worker_scores_new_rows_as_they_come(conn, database):
    declare(conn)
    worker = threading.Thread(target=run_until_cancelled, args=(database,))
    worker.start()
    try:
        conn.execute("INSERT INTO reviews VALUES (1, %s, 5)", (TEXTS[0],))
        for _ in range(1000):
            if sentiments(conn)[0][1] is not None:
                break
            time.sleep(0.01)
        assert sentiments(conn)[0][1] == expected(conn, TEXTS[:1])[0]
    finally:
        conn.execute(
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity"
            " WHERE query LIKE 'CALL ml_pipeline.run(continuous%%'"
        )
        worker.join(30)
    assert not worker.is_alive()


def run_until_cancelled(database: str) -> None:
    with (
        psycopg.connect(database, autocommit=True) as worker,
        pytest.raises(psycopg.errors.QueryCanceled),
    ):
        worker.execute("CALL ml_pipeline.run(continuous => true)")


def test_pg_cron_runs_the_workers_on_a_schedule(conn, server):
    preloaded = conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()[0]
    if "pg_cron" not in preloaded:
        pytest.skip("the server does not preload pg_cron (make install and the tests' do)")
    declare(conn)
    with psycopg.connect(server.dsn_for("postgres"), autocommit=True) as admin:
        admin.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
        (job,) = admin.execute(
            "SELECT cron.schedule_in_database('ml_pipeline mood', '* * * * *',"
            " 'CALL ml_pipeline.run(max_seconds => 50)', %s)",
            (conn.info.dbname,),
        ).fetchone()
        try:
            conn.execute("INSERT INTO reviews VALUES (1, %s, 5)", (TEXTS[0],))
            for _ in range(1500):  # pg_cron 1.4 starts jobs on the minute
                if sentiments(conn)[0][1] is not None:
                    break
                time.sleep(0.1)
            assert sentiments(conn)[0][1] == expected(conn, TEXTS[:1])[0]
            (outcome,) = admin.execute(
                "SELECT status FROM cron.job_run_details WHERE jobid = %s", (job,)
            ).fetchone()
            assert outcome in ("running", "succeeded")
        finally:
            admin.execute("SELECT cron.unschedule(%s)", (job,))


def test_the_schedule_is_part_of_the_declaration(conn, server):
    preloaded = conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()[0]
    if "pg_cron" not in preloaded:
        pytest.skip("the server does not preload pg_cron (make install and the tests' do)")
    declare(conn)
    # pg_cron's functions live in one database only: elsewhere, the command to run there
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as elsewhere:
        conn.execute("SELECT ml_pipeline.alter('mood', schedule => '* * * * *')")
    assert elsewhere.value.diag.message_primary == (
        'ml_pipeline.alter: ml_pipeline: pg_cron is not in this database but in "postgres"'
        " (cron.database_name)"
    )
    assert elsewhere.value.diag.message_hint == (
        "There, run: SELECT cron.schedule_in_database('ml_pipeline mood', '* * * * *',"
        " 'CALL ml_pipeline.run(''mood'', max_seconds => 55)', '" + conn.info.dbname + "');"
    )
    assert status(conn)["schedule"] is None

    with psycopg.connect(server.dsn_for("postgres"), autocommit=True) as home:
        home.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
        home.execute("CREATE EXTENSION ml_pipeline CASCADE")
        try:
            home.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
            home.execute("SELECT ml_pipeline.create('digests', 'notes', 'md5(body)', 'digest')")
            home.execute("SELECT ml_pipeline.alter('digests', schedule => '*/5 * * * *')")

            def jobs() -> list:
                return home.execute(
                    "SELECT jobname, schedule, command FROM cron.job WHERE jobname LIKE 'ml_%'"
                ).fetchall()

            assert jobs() == [("ml_pipeline digests", "*/5 * * * *",
                               "CALL ml_pipeline.run('digests', max_seconds => 55)")]  # fmt: skip
            assert home.execute("SELECT schedule FROM ml_pipeline.status").fetchone() == (
                "*/5 * * * *",
            )
            home.execute("SELECT ml_pipeline.alter('digests', schedule => '')")
            assert jobs() == []
            home.execute("SELECT ml_pipeline.alter('digests', schedule => '0 * * * *')")
            home.execute("SELECT ml_pipeline.drop('digests')")  # its job goes too
            assert jobs() == []
        finally:
            home.execute("DROP TABLE IF EXISTS notes")
            home.execute("DROP EXTENSION ml_pipeline")


def test_an_interactive_run_tells_how_far_it_got(conn, comprehend):
    conn.execute("INSERT INTO reviews SELECT g, 'review ' || g, 5 FROM generate_series(1, 1500) g")
    conn.execute("ANALYZE reviews")  # the estimate of what the backfill has yet to queue
    declare(conn, batch_size=100)
    told = notices(conn)
    comprehend.latency_ms = 150  # 15 batches of 4 parallel requests: over 2 s
    try:
        conn.execute("CALL ml_pipeline.run()")
    finally:
        comprehend.latency_ms = 0
    progress = [notice for notice in told if notice.startswith('ml_pipeline: "mood"')]
    assert len(progress) >= 2, told
    shares = [int(notice.split("(")[1].split("%")[0]) for notice in progress]
    assert 0 < shares[0] < 100 and shares == sorted(shares), progress
    assert progress[-1].startswith('ml_pipeline: "mood": 1,500 rows computed (100%), 0 to go,')


def test_a_score_from_azure_ml_is_kept_for_each_row(conn):
    with AzureMLSimulator(keys=["pipeline-key"]) as azureml:
        conn.execute("CREATE EXTENSION IF NOT EXISTS azure_ai")
        url = azureml.url + "/score"
        conn.execute("SELECT azure_ai.set_setting('azure_ml.scoring_endpoint', %s)", (url,))
        conn.execute("SELECT azure_ai.set_setting('azure_ml.endpoint_key', 'pipeline-key')")
        conn.execute("CREATE TABLE houses (id int PRIMARY KEY, features float8[])")
        conn.execute(
            "INSERT INTO houses SELECT g, ARRAY[g, 2, 3, 4, 5, 6, 7, 8]"
            " FROM generate_series(1, 50) g"
        )
        conn.execute(
            "SELECT ml_pipeline.create('price', 'houses', 'azure_ml.score(features)', 'price')"
        )
        conn.execute("CALL ml_pipeline.run()")
        prices = [row[0] for row in conn.execute("SELECT price FROM houses ORDER BY id")]
        assert prices == pytest.approx(
            HOUSING.predict([[g, 2, 3, 4, 5, 6, 7, 8] for g in range(1, 51)])
        )
        assert len(azureml.recorded.snapshot()) == 1  # the 50 rows in one request
        conn.execute("SELECT ml_pipeline.drop('price')")
        conn.execute("DROP TABLE houses")


def test_a_dropped_source_takes_its_pipelines_along(conn):
    conn.execute("INSERT INTO reviews VALUES (1, %s, 5)", (TEXTS[0],))
    declare(conn)
    conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO notes VALUES (1, 'hello')")
    conn.execute("SELECT ml_pipeline.create('shout', 'notes', 'upper(body)', 'loud')")
    conn.execute("DROP TABLE reviews")
    assert [row[0] for row in conn.execute("SELECT name FROM ml_pipeline.pipelines")] == ["shout"]
    conn.execute("CALL ml_pipeline.run()")  # the others still work, and so does the status
    assert conn.execute("SELECT loud FROM notes").fetchone() == ("HELLO",)
    assert [row[0] for row in conn.execute("SELECT name FROM ml_pipeline.status")] == ["shout"]
    conn.execute("DROP TABLE notes")
    assert conn.execute("SELECT count(*) FROM ml_pipeline.queue").fetchone()[0] == 0
