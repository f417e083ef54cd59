"""azure_local_ai's limits: a cancel, statement_timeout or timeout_ms ends an embedding
call inside an ONNX Runtime run, and every function honours its timeout_ms."""

from __future__ import annotations

import time

import psycopg
import pytest

from conftest import FP32, assert_interrupted, model_files, run_in_thread

# Four ONNX Runtime runs of 4 texts of 512 tokens: each most of a second of work here.
LONG_RUNS = (
    "SELECT count(*) FROM azure_local_ai.create_embeddings("
    f"'{FP32}', array_fill(repeat('word ', 600), ARRAY[16]), batch_size => 16{{timeout}})"
)


pytestmark = pytest.mark.usefixtures("local_ai")


def wait_until_running(conn, pid: int) -> None:
    """Until the call has loaded the model and is inside its one run."""
    for _ in range(300):
        state = conn.execute(
            "SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()[0]
        if state == "active":
            break
        time.sleep(0.05)
    time.sleep(1.0)  # the model loads in well under this; the run takes several seconds


@pytest.mark.parametrize(
    ("setup", "reason"),
    [("", "due to user request"), ("SET statement_timeout = 1500", "due to statement timeout")],
)
def test_cancel_and_statement_timeout_end_a_run(conn, database, setup, reason):
    call = run_in_thread(database, LONG_RUNS.format(timeout=""), setup)
    if not setup:
        wait_until_running(conn, call["pid"])
        conn.execute("SELECT pg_cancel_backend(%s)", (call["pid"],))
    assert_interrupted(call, reason, "azure_local_ai.create_embeddings")


def test_timeout_ms_ends_a_run(conn):
    with pytest.raises(psycopg.errors.QueryCanceled) as caught:
        conn.execute(LONG_RUNS.format(timeout=", timeout_ms => 200"))  # within the first run
    assert caught.value.diag.message_primary == (
        "azure_local_ai.create_embeddings: timeout_ms passed after 0 of 16 inputs were embedded"
    )
    assert embed_ok(conn)


def embed_ok(conn) -> bool:
    """The session goes on, and its model still embeds."""
    row = conn.execute("SELECT azure_local_ai.create_embeddings(%s, 'still here')", (FP32,))
    return len(row.fetchone()[0]) == 384


# --- timeout_ms of the registry and settings functions --------------------------------------

CALLS = {
    "get_setting": "azure_local_ai.get_setting('spin_control', timeout_ms => {})",
    "get_settings": "azure_local_ai.get_setting(ARRAY['spin_control'], timeout_ms => {})",
    "set_setting": "azure_local_ai.set_setting('spin_control', 'false', timeout_ms => {})",
    "set_settings": "azure_local_ai.set_setting(ARRAY['spin_control'], ARRAY['false'], {})",
    "model_unregister": "azure_local_ai.model_unregister('nope:v1', timeout_ms => {})",
    "model_register": "azure_local_ai.model_register('x:v1', '/x.onnx', timeout_ms => {})",
}
# The table each call waits for when another transaction holds it.
TABLES = {
    "get_setting": "settings",
    "get_settings": "settings",
    "set_setting": "settings",
    "set_settings": "settings",
    "model_unregister": "models",
    "model_register": "models",
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_timeout_ms_must_be_positive(conn, name):
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        conn.execute("SELECT " + CALLS[name].format(0))
    function = CALLS[name].split("(")[0]
    assert caught.value.diag.message_primary == f"{function}: timeout_ms must be positive, not 0"


@pytest.mark.parametrize("name", sorted(CALLS))
def test_timeout_ms_bounds_a_lock_wait(conn, database, name):
    with psycopg.connect(database) as holder:
        holder.execute(f"LOCK TABLE azure_local_ai.{TABLES[name]} IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(psycopg.errors.QueryCanceled) as caught:
            conn.execute("SELECT " + CALLS[name].format(300))
        holder.rollback()
    assert "lock" in caught.value.diag.message_primary
    assert conn.execute("SELECT azure_local_ai.get_setting('spin_control')").fetchone()[0]


def test_timeout_ms_bounds_copying_a_model(conn):
    path, tokenizer = model_files(conn, FP32)
    with pytest.raises(psycopg.errors.QueryCanceled) as caught:
        conn.execute(
            "SELECT azure_local_ai.model_register('slow:v1', %s, %s, timeout_ms => 5)",
            (path, tokenizer),
        )
    assert caught.value.diag.message_primary.startswith(
        "azure_local_ai.model_register: timeout_ms passed while"
    )
    assert conn.execute(
        "SELECT count(*) FROM azure_local_ai.models WHERE model_uri = 'slow:v1'"
    ).fetchone() == (0,)
