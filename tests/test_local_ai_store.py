"""Registered models are copied into a read-only store under the data directory: changing
or truncating the files that were registered can no longer take the server down, and the
in-backend cache follows what is registered, not a path."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest

from conftest import FP32, INT8

pytestmark = pytest.mark.usefixtures("local_ai")


@pytest.fixture(scope="module")
def builtin(database):
    """{model_uri: (graph, tokenizer)} of the built-in models; the server's data directory."""
    with psycopg.connect(database) as conn:
        rows = conn.execute(
            "SELECT model_uri, model_path, tokenizer_path FROM azure_local_ai.models"
        ).fetchall()
        data_directory = Path(conn.execute("SHOW data_directory").fetchone()[0])
    if not data_directory.is_dir():
        pytest.skip("the server's data directory is elsewhere")
    return {uri: (path, tokenizer) for uri, path, tokenizer in rows}, data_directory


@pytest.fixture
def source_dir():
    """A directory the server may read, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="azure_local_ai-model-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def copy_model(builtin_model, target: Path, name: str = "model.onnx") -> tuple[str, str]:
    """The graph, its weights beside it (under the name the graph refers to) and the
    tokenizer, copied into target."""
    graph, tokenizer = builtin_model
    shutil.copy(graph, target / name)
    shutil.copy(graph + ".data", target / (Path(graph).name + ".data"))
    shutil.copy(tokenizer, target / "sentencepiece.model")
    for file in target.iterdir():
        file.chmod(0o644)
    return str(target / name), str(target / "sentencepiece.model")


def embed(conn, model, text="a sentence about the weather"):
    return conn.execute(
        "SELECT azure_local_ai.create_embeddings(%s, %s)", (model, text)
    ).fetchone()[0]


def server_identity(conn):
    return conn.execute(
        "SELECT pg_postmaster_start_time(), (SELECT pid FROM pg_stat_activity"
        " WHERE backend_type = 'checkpointer')"
    ).fetchone()


def test_changing_the_registered_files_cannot_crash_a_backend(conn, database, builtin, source_dir):
    models, data_directory = builtin
    graph, tokenizer = copy_model(models[INT8], source_dir, "model-int8.onnx")
    started = server_identity(conn)
    conn.execute("SELECT azure_local_ai.model_register('copied:v1', %s, %s)", (graph, tokenizer))
    try:
        metadata = conn.execute("SELECT azure_local_ai.model_metadata('copied:v1')").fetchone()[0]
        store = data_directory / "azure_local_ai" / "models" / metadata["store"]
        assert sorted(p.name for p in store.iterdir()) == [
            "model-int8.onnx", "model-int8.onnx.data", "sentencepiece.model"
        ]  # fmt: skip
        assert all(p.stat().st_mode & 0o777 == 0o444 for p in store.iterdir())
        before = embed(conn, "copied:v1")
        assert before == pytest.approx(embed(conn, INT8), abs=1e-6)

        weights = source_dir / "model-int8.onnx.data"
        os.truncate(weights, 0)  # what killed the backend with SIGBUS
        assert embed(conn, "copied:v1") == before
        subprocess.run(["cp", models[FP32][0] + ".data", str(weights)], check=True)
        assert embed(conn, "copied:v1") == before
        with psycopg.connect(database, autocommit=True) as fresh:
            assert embed(fresh, "copied:v1") == before
        assert server_identity(conn) == started

        # The store copy lost (as after a restore into another cluster): the changed
        # source is not taken.
        shutil.rmtree(store)
        with (
            psycopg.connect(database, autocommit=True) as fresh,
            pytest.raises(psycopg.errors.InvalidParameterValue) as caught,
        ):
            embed(fresh, "copied:v1")
        assert caught.value.diag.message_primary == (
            f'azure_local_ai.create_embeddings: model "copied:v1" cannot be loaded: its file '
            f"{weights} changed since it was registered"
        )
        assert "model_register" in caught.value.diag.message_hint
    finally:
        conn.execute("SELECT azure_local_ai.model_unregister('copied:v1')")


def test_a_lost_store_copy_is_made_again_from_unchanged_files(conn, database, builtin, source_dir):
    models, data_directory = builtin
    graph, tokenizer = copy_model(models[INT8], source_dir, "model-int8.onnx")
    conn.execute("SELECT azure_local_ai.model_register('again:v1', %s, %s)", (graph, tokenizer))
    try:
        metadata = conn.execute("SELECT azure_local_ai.model_metadata('again:v1')").fetchone()[0]
        store = data_directory / "azure_local_ai" / "models" / metadata["store"]
        shutil.rmtree(store)
        with psycopg.connect(database, autocommit=True) as fresh:
            assert embed(fresh, "again:v1") == pytest.approx(embed(fresh, INT8), abs=1e-6)
        assert (store / "model-int8.onnx.data").is_file()
    finally:
        conn.execute("SELECT azure_local_ai.model_unregister('again:v1')")


def test_the_cache_follows_what_is_registered_not_the_path(conn, builtin, source_dir):
    models, _ = builtin
    graph, tokenizer = copy_model(models[INT8], source_dir, "model.onnx")
    conn.execute("SELECT azure_local_ai.model_register('same:v1', %s, %s)", (graph, tokenizer))
    int8 = embed(conn, "same:v1")
    conn.execute("SELECT azure_local_ai.model_unregister('same:v1')")
    for file in source_dir.iterdir():
        file.unlink()
    copy_model(models[FP32], source_dir, "model.onnx")  # other files, the same path
    conn.execute("SELECT azure_local_ai.model_register('same:v1', %s, %s)", (graph, tokenizer))
    try:
        assert embed(conn, "same:v1") == pytest.approx(embed(conn, FP32), abs=1e-6)
        assert embed(conn, "same:v1") != pytest.approx(int8, abs=1e-6)
    finally:
        conn.execute("SELECT azure_local_ai.model_unregister('same:v1')")


def test_a_register_rolled_back_to_a_savepoint_leaves_nothing_loaded(conn, builtin, source_dir):
    models, _ = builtin
    int8_dir, fp32_dir = source_dir / "int8", source_dir / "fp32"
    for directory in (int8_dir, fp32_dir):
        directory.mkdir(mode=0o755)
    int8_graph, int8_tokenizer = copy_model(models[INT8], int8_dir)
    fp32_graph, fp32_tokenizer = copy_model(models[FP32], fp32_dir)
    conn.execute("BEGIN")
    conn.execute("SAVEPOINT before")
    conn.execute(
        "SELECT azure_local_ai.model_register('sp:v1', %s, %s)", (int8_graph, int8_tokenizer)
    )
    conn.execute("ROLLBACK TO SAVEPOINT before")
    conn.execute(
        "SELECT azure_local_ai.model_register('sp:v1', %s, %s)", (fp32_graph, fp32_tokenizer)
    )
    conn.execute("COMMIT")
    try:
        assert embed(conn, "sp:v1") == pytest.approx(embed(conn, FP32), abs=1e-6)
    finally:
        conn.execute("SELECT azure_local_ai.model_unregister('sp:v1')")


# --- clear errors for files that are not models --------------------------------------------


def test_a_corrupt_onnx_file_is_named_as_such(conn, builtin, source_dir):
    models, _ = builtin
    corrupt = source_dir / "model.onnx"
    corrupt.write_bytes(b"\x08\x07\x12\x04junk" + os.urandom(64))
    corrupt.chmod(0o644)
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        conn.execute(
            "SELECT azure_local_ai.model_register('corrupt:v1', %s, %s)",
            (str(corrupt), models[INT8][1]),
        )
    assert caught.value.diag.message_primary.startswith(
        f"azure_local_ai.model_register: model_path {corrupt} is not a valid ONNX model"
    )


def test_a_symlink_loop_and_a_very_long_path(conn, builtin, source_dir):
    models, _ = builtin
    loop = source_dir / "loop.onnx"
    loop.symlink_to(loop)
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        conn.execute("SELECT azure_local_ai.model_register('loop:v1', %s)", (str(loop),))
    assert caught.value.diag.message_primary == (
        f"azure_local_ai.model_register: model_path {loop} cannot be opened: "
        "too many levels of symbolic links"
    )
    long_path = "/" + "d" * 4999
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        conn.execute(
            "SELECT azure_local_ai.model_register('long:v1', %s, %s)", (long_path, models[INT8][1])
        )
    message = caught.value.diag.message_primary
    assert message == (
        f"azure_local_ai.model_register: model_path /{'d' * 60}… (5000 characters) "
        "cannot be opened: file name too long"
    )
