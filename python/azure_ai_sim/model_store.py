"""The server's own read-only copy of each registered model's files.

ONNX Runtime memory-maps a model's external weights: a file truncated or rewritten while a
backend has it loaded kills that backend with SIGBUS, and PostgreSQL then restarts the
whole cluster. So model_register copies the graph, the weights files the graph refers to
and the tokenizer into <data_directory>/azure_local_ai/models/<digest>/ (the digest is the
sha256 of the set), keeping their names: written into a temporary directory, made
read-only (0444) and renamed into place at once. Nothing writes there again.

A backend loads from the store, and checks the files' checksums first. When the store
copy is missing (a restore into another cluster), it is made again from the registered
files, only if they still have the checksums recorded at registration.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from azure_ai_sim import errors, pg

REGISTER_AGAIN = (
    "Register it again: azure_local_ai.model_unregister, then azure_local_ai.model_register."
)
CHUNK_BYTES = 1 << 20  # between two chunks: a look at the deadline and for a cancel


def root() -> Path:
    return Path(pg.setting("data_directory") or ".") / "azure_local_ai" / "models"


def digest(files: list[dict[str, Any]]) -> str:
    """The store directory's name: a sha256 of the files' names and checksums."""
    lines = sorted(f"{name_of(file)}\0{file['sha256']}\n" for file in files)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def name_of(file: dict[str, Any]) -> str:
    """The name in the store (models registered by 0.1.0 recorded only the path)."""
    return file.get("name") or os.path.basename(file["path"])


def add(
    model_path: str, tokenizer_path: str, deadline: Any, load: Any
) -> tuple[Path, list[dict[str, Any]], Any]:
    """Copies the model's files into the store; returns the store directory, the facts of
    each file (name, source path, bytes, sha256) and what `load(graph, tokenizer)` made of
    the copy, which runs before the copy is renamed into place: files that do not load
    leave nothing behind."""
    graph = os.path.basename(model_path)
    scratch = _scratch()
    try:
        files = [_copy(model_path, scratch / graph, deadline)]
        for name in external_data(scratch / graph, model_path):
            weights = str(Path(model_path).parent / name)
            if not os.path.isfile(weights):
                raise errors.InvalidParameter(
                    f"model_path {model_path} refers to weights in {weights}, which does not exist"
                )
            files.append(_copy(weights, scratch / name, deadline))
        tokenizer = os.path.basename(tokenizer_path)
        if tokenizer in {name_of(file) for file in files}:
            raise errors.InvalidParameter(
                f"tokenizer_path must not have the name of a model file ({tokenizer})"
            )
        files.append(_copy(tokenizer_path, scratch / tokenizer, deadline))
        loaded = load(str(scratch / graph), str(scratch / tokenizer))
        return _publish(scratch, digest(files)), files, loaded
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def directory(model_uri: str, files: list[dict[str, Any]], deadline: Any = None) -> Path:
    """The store directory of a registered model, its checksums verified; made again from
    the registered files if it is missing and they have not changed."""
    target = root() / digest(files)
    if target.is_dir():
        for file in files:
            if _sha256(target / name_of(file), deadline) != file["sha256"]:
                raise errors.InvalidParameter(
                    f'model "{model_uri}" cannot be loaded: its stored copy {target} is damaged',
                    hint=REGISTER_AGAIN,
                )
        return target
    scratch = _scratch()
    try:
        for file in files:
            copied = _copy(file["path"], scratch / name_of(file), deadline, missing_ok=True)
            if copied is None or copied["sha256"] != file["sha256"]:
                raise errors.InvalidParameter(
                    f'model "{model_uri}" cannot be loaded: its file {file["path"]} '
                    + ("is gone" if copied is None else "changed since it was registered"),
                    hint=REGISTER_AGAIN,
                )
        return _publish(scratch, target.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _scratch() -> Path:
    """A new temporary directory inside the store, so that the rename stays on one disk."""
    parent = root()
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    scratch = parent / f".new-{secrets.token_hex(8)}"
    scratch.mkdir(mode=0o700)
    return scratch


def _publish(scratch: Path, name: str) -> Path:
    """Renames the finished copy into place; a copy of the same content already there
    (another backend's, or an earlier register's) is as good."""
    target = scratch.parent / name
    for file in scratch.iterdir():
        file.chmod(0o444)
    scratch.chmod(0o555)
    _fsync(scratch)
    try:
        os.rename(scratch, target)
    except OSError:
        if not target.is_dir():
            raise
        scratch.chmod(0o700)  # so that the caller can remove it
    else:
        _fsync(target.parent)
    return target


def _copy(
    source: str, target: Path, deadline: Any, missing_ok: bool = False
) -> dict[str, Any] | None:
    """Copies a file, hashing what it copies; the facts of the copy."""
    hashed = hashlib.sha256()
    size = 0
    try:
        reader = open(source, "rb")  # noqa: SIM115 - closed below, with the writer
    except FileNotFoundError:
        if missing_ok:
            return None
        raise
    with reader, open(target, "xb") as writer:
        for chunk in _chunks(reader, deadline, f"copying {source} into the model store"):
            hashed.update(chunk)
            writer.write(chunk)
            size += len(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    return {"name": target.name, "path": source, "bytes": size, "sha256": hashed.hexdigest()}


def _sha256(path: Path, deadline: Any) -> str | None:
    hashed = hashlib.sha256()
    try:
        with open(path, "rb") as reader:
            for chunk in _chunks(reader, deadline, f"checking {path}"):
                hashed.update(chunk)
    except FileNotFoundError:
        return None
    return hashed.hexdigest()


def _chunks(reader: Any, deadline: Any, doing: str) -> Iterator[bytes]:
    while chunk := reader.read(CHUNK_BYTES):
        pg.check_for_interrupts()
        if deadline is not None and deadline.left() <= 0:
            raise errors.TimedOut(f"timeout_ms passed while {doing}")
        yield chunk


def _fsync(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# --- which files a graph refers to -----------------------------------------------------------

# ONNX's protobuf messages, by the fields that lead to tensors: {field number: message}.
_MESSAGES: dict[str, dict[int, str]] = {
    "model": {7: "graph", 25: "function"},
    "graph": {1: "node", 5: "tensor", 15: "sparse_tensor"},
    "function": {7: "node"},
    "node": {5: "attribute"},
    "attribute": {
        5: "tensor",
        6: "graph",
        10: "tensor",
        11: "graph",
        22: "sparse_tensor",
        23: "sparse_tensor",
    },  # fmt: skip
    "sparse_tensor": {1: "tensor", 2: "tensor"},
}
TENSOR_EXTERNAL_DATA = 13  # TensorProto.external_data: StringStringEntryProto (1 key, 2 value)


def external_data(graph: Path, shown: str) -> list[str]:
    """The files, relative to the graph's directory, that the graph's tensors are stored in."""
    try:
        names = sorted(set(_locations(memoryview(graph.read_bytes()), "model")))
    except (ValueError, IndexError):
        names = []  # not protobuf: ONNX Runtime says what is wrong when it loads the file
    for name in names:
        if os.path.isabs(name) or ".." in Path(name).parts:
            raise errors.InvalidParameter(
                f"model_path {shown} refers to weights outside its directory: {name}"
            )
    return names


def _locations(buffer: memoryview, message: str) -> Iterator[str]:
    for number, value in _fields(buffer):
        if message == "tensor" and number == TENSOR_EXTERNAL_DATA:
            entry = dict(_fields(value))
            if bytes(entry.get(1, b"")) == b"location":
                yield bytes(entry.get(2, b"")).decode()
        elif number in _MESSAGES.get(message, {}) and isinstance(value, memoryview):
            yield from _locations(value, _MESSAGES[message][number])


def _fields(buffer: memoryview) -> Iterator[tuple[int, Any]]:
    """(field number, value) of a protobuf message; length-delimited values as memoryviews."""
    i = 0
    while i < len(buffer):
        key, i = _varint(buffer, i)
        wire = key & 7
        if wire == 0:
            value, i = _varint(buffer, i)
        elif wire == 2:
            size, i = _varint(buffer, i)
            if i + size > len(buffer):
                raise ValueError("truncated")
            value, i = buffer[i : i + size], i + size
        elif wire in (1, 5):
            value, i = None, i + (8 if wire == 1 else 4)
        else:
            raise ValueError(f"wire type {wire}")
        yield key >> 3, value


def _varint(buffer: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buffer[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if byte < 0x80:
            return value, i
        shift += 7
