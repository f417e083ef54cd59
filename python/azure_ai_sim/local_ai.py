"""Entry points of the azure_local_ai extension: embeddings, the model registry, settings."""

from __future__ import annotations

import ctypes
import gc
import json
import os
import re
from pathlib import Path
from typing import Any

from azure_ai_sim import errors, model_store, pg, transport
from azure_ai_sim.embeddings import Model, Threads, readable_file, shown_path
from azure_ai_sim.settings import SettingsTable, one_of, pattern

SETTINGS = SettingsTable(
    "azure_local_ai.settings",
    {
        "intra_op_parallelism": pattern("[1-9][0-9]{0,2}", "a number of threads, 1 to 999"),
        "inter_op_parallelism": pattern("[1-9][0-9]{0,2}", "a number of threads, 1 to 999"),
        "spin_control": one_of("true", "false"),
        "prepacking": one_of("true", "false"),
    },
)
DEFAULTS = {
    "intra_op_parallelism": str(os.cpu_count() or 1),
    "inter_op_parallelism": "1",
    "spin_control": "true",
    # Off: the weights stay mapped from their file, shared by all backends (README).
    "prepacking": "false",
}
MODEL_URI = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*(:[A-Za-z0-9._-]+)?")
# What the build (models/) writes next to the built-in models: source, checksums.
BUILD_FACTS = "build.json"

# model_uri: (what was loaded: row id and files, the model)
_loaded: dict[str, tuple[Any, Model]] = {}


# --- embeddings ----------------------------------------------------------------------------


@pg.sql_function("azure_local_ai.create_embeddings")
def create_embedding(model_uri: str | None, text: str | None, timeout_ms: int | None) -> Any:
    if text is None:
        return None
    deadline = _deadline(timeout_ms)
    return _model(model_uri, deadline).embed([text], 1, deadline)[0].tobytes()


@pg.sql_function("azure_local_ai.create_embeddings")
def create_embedding_batch(
    model_uris: list[str | None], texts: list[str | None], timeout_ms: list[int | None]
) -> list[Any]:
    """create_embedding for many rows (the single-text create_embeddings in a query): the
    texts of each model in one call of the model, as the array form embeds them (its
    default batch_size, runs sorted by length), the models in the order of their first
    row. Each row gets the bytes its own call gives (Model.embed_alike), unless
    azure_ai_sim.exact_batches is off: then the texts share runs as in the array form,
    whatever the model (an int8 model's results then depend on the run). The rows' checks
    (timeout_ms, model_uri) run in row order: a failing row raises its own call's error
    once the rows before it are embedded. The deadline is the smallest timeout_ms of the
    rows, from the start of the batch."""
    if not len(model_uris) == len(texts) == len(timeout_ms):
        raise errors.InvalidParameter(
            "the arguments of a batch form must be arrays with one element per row"
        )
    by_model: dict[str, list[int]] = {}
    limits: list[float] = []
    failure: errors.Error | None = None
    for row, text in enumerate(texts):
        if text is None:
            continue
        try:
            limit = transport.timeout_seconds(timeout_ms[row])
            _registered(model_uris[row])
        except errors.Error as error:
            failure = error
            break
        by_model.setdefault(model_uris[row], []).append(row)  # type: ignore[arg-type]
        limits += [limit] if limit is not None else []
    deadline = transport.Deadline(min(limits)) if limits else None
    embeddings: list[Any] = [None] * len(texts)
    exact = pg.setting(EXACT_SETTING) != "off"
    try:
        for model_uri, rows in by_model.items():
            model = _model(model_uri, deadline)
            embed = model.embed_alike if exact else model.embed
            vectors = embed([texts[row] for row in rows], BATCH_SIZE, deadline)
            for row, vector in zip(rows, vectors, strict=True):
                embeddings[row] = vector.tobytes()
    finally:
        if by_model:
            _release_freed_memory()
    if failure is not None:
        raise failure
    return embeddings


# The array form's default batch_size (sql/), which the batch form embeds with as well.
BATCH_SIZE = 128
EXACT_SETTING = "azure_ai_sim.exact_batches"  # extension/batch.c


@pg.sql_function("azure_local_ai.create_embeddings")
def create_embeddings(
    model_uri: str | None, texts: list[str | None] | None, batch_size: int | None,
    timeout_ms: int | None,
) -> list[Any]:  # fmt: skip
    """One embedding per input, in input order, as float32 bytes; NULL for a NULL input."""
    if not texts:
        return []
    if any(isinstance(text, list) for text in texts):  # PL/Python's form of a 2-D array
        raise errors.InvalidParameter(
            "inputs must be a one-dimensional array, " f"not one of {_dimensions(texts)} dimensions"
        )
    if batch_size is None or batch_size < 1:
        raise errors.InvalidParameter(f"batch_size must be at least 1, not {batch_size}")
    deadline = _deadline(timeout_ms)
    model = _model(model_uri, deadline)
    present = [i for i, text in enumerate(texts) if text is not None]
    try:
        vectors = model.embed([texts[i] for i in present], batch_size, deadline)
    finally:
        _release_freed_memory()
    embeddings: list[Any] = [None] * len(texts)
    for i, vector in zip(present, vectors, strict=False):
        embeddings[i] = vector.tobytes()
    return embeddings


def _dimensions(value: Any) -> int:
    return 1 + max((_dimensions(v) for v in value if isinstance(v, list)), default=0)


def _release_freed_memory() -> None:
    """ONNX Runtime frees its activations after each run, but the C library keeps the pages
    for reuse; after a batch call, hand them back, or every backend keeps its peak."""
    global _malloc_trim
    if _malloc_trim is None:
        _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
    _malloc_trim(0)


_malloc_trim: Any = None


def _deadline(timeout_ms: int | None) -> transport.Deadline | None:
    """The call's deadline (timeout_ms validated), or None for no limit."""
    seconds = transport.timeout_seconds(timeout_ms)
    return None if seconds is None else transport.Deadline(seconds)


def _limit_lock_waits(deadline: transport.Deadline | None) -> None:
    """Waits for the registry's or the settings' locks end with timeout_ms too."""
    if deadline is not None:
        pg.lock_wait_limit(deadline.left())


def _model(model_uri: str | None, deadline: transport.Deadline | None = None) -> Model:
    """The loaded model, or load it: one ONNX Runtime session per backend and model. What
    is loaded is known by its registry row and files, so that another model registered
    under the same name or path (or a register rolled back) is never taken for it."""
    row = _registered(model_uri)
    if _is_loaded(row):
        return _loaded[row["model_uri"]][1]
    if row["builtin"]:  # make install swaps their directory whole, never writes in place
        model_path, tokenizer_path = row["model_path"], row["tokenizer_path"]
    else:
        stored = model_store.directory(row["model_uri"], row["metadata"]["files"], deadline)
        model_path = str(stored / os.path.basename(row["model_path"]))
        tokenizer_path = str(stored / os.path.basename(row["tokenizer_path"]))
    model = Model(model_path, tokenizer_path, _threads(), row["metadata"]["max_tokens"])
    _loaded[row["model_uri"]] = (row["key"], model)
    return model


def _with_key(row: dict[str, Any]) -> dict[str, Any]:
    """The row with what identifies its content: id, path and the checksums of its files.
    Computed once per registry read, not per call."""
    files = row["metadata"].get("files", [])
    return {**row, "key": (row["id"], row["model_path"], model_store.digest(files))}


def _is_loaded(row: dict[str, Any]) -> bool:
    loaded = _loaded.get(row["model_uri"])
    return loaded is not None and loaded[0] == row["key"]


def _threads() -> Threads:
    settings = {**DEFAULTS, **SETTINGS.snapshot()}
    return Threads(
        int(settings["intra_op_parallelism"]),
        int(settings["inter_op_parallelism"]),
        settings["spin_control"] == "true",
        settings["prepacking"] == "true",
    )


# --- the registry ---------------------------------------------------------------------------


def _read_registry() -> dict[str, dict[str, Any]]:
    rows = pg.execute(
        "SELECT id, model_uri, model_path, tokenizer_path, metadata::text, builtin"
        " FROM azure_local_ai.models"
    )
    return {
        row["model_uri"]: _with_key({**row, "metadata": json.loads(row["metadata"])})
        for row in rows
    }


# The registered models as this statement sees them.
_registry = pg.PerStatement(_read_registry)


def _registered(model_uri: str | None) -> dict[str, Any]:
    if model_uri is None:
        raise errors.NullValueNotAllowed("model_uri must not be NULL")
    registry = _registry.get()
    if model_uri not in registry:
        raise errors.InvalidParameter(
            f'model "{model_uri}" is not registered',
            detail="Registered models: " + ", ".join(sorted(registry)) + ".",
        )
    return registry[model_uri]


@pg.sql_function("azure_local_ai.model_register")
def model_register(
    model_uri: str | None, model_path: str | None, tokenizer_path: str | None,
    timeout_ms: int | None = None, model_directory: str | None = None,
) -> int:  # fmt: skip
    """Copies the files into the model store, checks that the copy loads and embeds, then
    records it; nothing is left on failure. model_directory is where callers who may not
    read every server file take models from (None: scripts before 0.1.2 named none)."""
    if model_uri is None or not MODEL_URI.fullmatch(model_uri):
        raise errors.InvalidParameter(
            "model_uri must be a name such as my-model:v1 (letters, digits, . _ - /, one :)"
        )
    deadline = _deadline(timeout_ms)
    _limit_lock_waits(deadline)
    if model_uri in _registry.get():
        raise errors.InvalidParameter(
            f'model "{model_uri}" is already registered',
            hint="Unregister it first with azure_local_ai.model_unregister.",
        )
    model_path = _readable(model_path, "model_path", model_directory)
    tokenizer_path = _readable(
        tokenizer_path or _tokenizer_beside(model_path), "tokenizer_path", model_directory
    )
    max_tokens = 512

    def load(graph: str, tokenizer: str) -> Model:
        model = Model(graph, tokenizer, _threads(), max_tokens, (model_path, tokenizer_path))
        try:
            model.embed(["a test"], 1, deadline)
        except errors.Error:
            raise
        except Exception as error:  # it loads, but is not a model of this kind
            raise errors.InvalidParameter(
                f"model_path {shown_path(model_path)} does not embed: "
                f"{type(error).__name__}: {error}"[:500]
            ) from None
        return model

    stored, files, model = model_store.add(model_path, tokenizer_path, deadline, load)
    metadata = {
        "dimensions": model.dimensions,
        "max_tokens": max_tokens,
        "quantization": "as in the file",
        "source": "registered",
        "store": stored.name,
        "files": files,
    }
    rows = pg.execute(
        "INSERT INTO azure_local_ai.models (model_uri, model_path, tokenizer_path, metadata)"
        " VALUES ($1, $2, $3, $4::jsonb) RETURNING id",
        ["text", "text", "text", "text"],
        [model_uri, model_path, tokenizer_path, json.dumps(metadata)],
    )
    _registry.forget()
    model_id = rows[0]["id"]
    row = _with_key({"id": model_id, "model_path": model_path, "metadata": metadata})
    _loaded[model_uri] = (row["key"], model)
    return model_id


def _readable(path: str | None, what: str, model_directory: str | None) -> str:
    """A file the caller may have the server read: any, for a superuser or a member of
    pg_read_server_files (as COPY FROM a file); for others, only a file of the model
    directory, checked before the file is looked at, so that nothing is learnt of others."""
    if not path or not os.path.isabs(path) or pg.caller_reads_server_files():
        return readable_file(path, what)
    if model_directory is None:
        raise errors.PermissionDenied(
            "only a superuser or a member of pg_read_server_files may register models "
            "with this version of azure_local_ai",
            hint="ALTER EXTENSION azure_local_ai UPDATE: from 0.1.2 on, others may register "
            "the models of the model directory.",
        )
    directory = os.path.realpath(model_directory)
    if os.path.commonpath([os.path.realpath(path), directory]) != directory:
        raise errors.PermissionDenied(
            f"{what} {shown_path(path)} is outside the model directory {model_directory}",
            hint="Only a superuser or a member of pg_read_server_files may register models "
            "from elsewhere; a server administrator can copy the files into the model "
            "directory.",
        )
    return readable_file(path, what)


def _tokenizer_beside(model_path: str) -> str:
    directory = Path(model_path).parent
    for name in ("sentencepiece.model", "sentencepiece.bpe.model"):
        if (directory / name).is_file():
            return str(directory / name)
    raise errors.InvalidParameter(
        f"no tokenizer_path given, and none beside {model_path} "
        "(sentencepiece.model or sentencepiece.bpe.model)"
    )


@pg.sql_function("azure_local_ai.model_unregister")
def model_unregister(model_uri: str | None, timeout_ms: int | None = None) -> None:
    """Removes the row; the store copy stays, since other databases may use it (README)."""
    _limit_lock_waits(_deadline(timeout_ms))
    row = _registered(model_uri)
    if row["builtin"]:
        raise errors.InvalidParameter(f'model "{model_uri}" is built in and stays registered')
    pg.execute("DELETE FROM azure_local_ai.models WHERE model_uri = $1", ["text"], [model_uri])
    _registry.forget()
    _unload(model_uri)


@pg.sql_function("azure_local_ai.model_loaded")
def model_loaded(model_uri: str | None) -> bool:
    return _is_loaded(_registered(model_uri))


@pg.sql_function("azure_local_ai.model_unload")
def model_unload(model_uri: str | None) -> None:
    _registered(model_uri)
    _unload(model_uri)


def _unload(model_uri: str | None) -> None:
    if _loaded.pop(model_uri, None) is not None:
        gc.collect()


@pg.sql_function("azure_local_ai.model_metadata")
def model_metadata(model_uri: str | None) -> str:
    row = _registered(model_uri)
    metadata = dict(row["metadata"])
    facts = Path(row["model_path"]).parent / BUILD_FACTS
    if row["builtin"] and facts.is_file():
        metadata.update(json.loads(facts.read_text()))
    metadata.update(
        model_uri=model_uri,
        model_path=row["model_path"],
        tokenizer_path=row["tokenizer_path"],
        builtin=row["builtin"],
        loaded=_is_loaded(row),
    )
    return json.dumps(metadata)


# --- settings -------------------------------------------------------------------------------


@pg.sql_function("azure_local_ai.get_setting")
def get_setting(key: str | None, timeout_ms: int | None = None) -> str | None:
    _limit_lock_waits(_deadline(timeout_ms))
    return SETTINGS.get(key) or DEFAULTS[key]


@pg.sql_function("azure_local_ai.get_setting")
def get_settings(keys: list[str] | None, timeout_ms: int | None = None) -> str:
    """The settings asked for, all of them for none, as a JSON object; defaults included."""
    _limit_lock_waits(_deadline(timeout_ms))
    wanted = keys or sorted(SETTINGS.checks)
    return json.dumps({key: get_setting.__wrapped__(key) for key in wanted})


@pg.sql_function("azure_local_ai.set_setting")
def set_settings(
    keys: list[str | None] | None, values: list[str | None] | None, timeout_ms: int | None = None
) -> None:
    """All or nothing: every pair is checked before any is stored."""
    _limit_lock_waits(_deadline(timeout_ms))
    if keys is None or values is None or len(keys) != len(values):
        raise errors.InvalidParameter("keys and values must be arrays of the same length")
    for key, value in zip(keys, values, strict=False):
        SETTINGS.validate(key, value)
    for key, value in zip(keys, values, strict=False):
        SETTINGS.set(key, value)
