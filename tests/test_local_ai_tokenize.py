"""The tokenizer cuts a text to what max_tokens can use before tokenizing it, and the ids
stay those of the whole text (the tokenizer runs in this process; the database only says
where make install put the built-in model's)."""

from __future__ import annotations

import random

import psycopg
import pytest

from azure_ai_sim.embeddings import Tokenizer
from conftest import FP32, model_files


@pytest.fixture(scope="module")
def tokenizer(local_ai):
    pytest.importorskip("sentencepiece")
    with psycopg.connect(local_ai) as conn:
        _, tokenizer_path = model_files(conn, FP32)
    return Tokenizer(tokenizer_path)


def whole(tokenizer, text: str, max_tokens: int = 512) -> list[int]:
    """Today's reference: the whole text tokenized, then truncated."""
    ids = tokenizer.processor.encode(text.rstrip())
    return [0, *ids[: max_tokens - 2], 2]


def random_texts(count: int, length: int) -> list[str]:
    """Mixtures of words, whitespace of every kind SentencePiece knows, characters it drops,
    combining marks, unknown characters and text without spaces."""
    chooser = random.Random(11)
    parts = [
        "word", "Hauptstadt", "東京都", "наука", "e\u0301", "\u0301", "\U0001f9ff", "ᄀ", "ᅡ",
        " ", "  ", "\t", "\n", "\u00a0", "\u3000", "\u200b", "\ufeff", "\u2581", "\x01", "\x7f",
        "\x01\x01", " \x01 ", "\ufdfa", "\uff21", "x" * 40,
    ]  # fmt: skip
    texts = []
    for _ in range(count):
        text = ""
        while len(text) < length:
            text += chooser.choice(parts)
        texts.append(text)
    return texts


def test_whitespace_and_dropped_characters_are_probed(tokenizer):
    assert {" ", "\t", "\n", "\u00a0", "\u3000", "\u2581"} <= tokenizer.spaces
    assert {"\x01", "\x7f"} <= tokenizer.dropped
    assert "a" not in tokenizer.spaces | tokenizer.dropped


@pytest.mark.parametrize("length", [50, 5_000, 40_000, 200_000])
def test_ids_are_those_of_the_whole_text(tokenizer, length):
    for text in random_texts(20 if length < 100_000 else 4, length):
        assert tokenizer.encode([text], 512) == [whole(tokenizer, text)]
        assert tokenizer.encode([text, "x"], 512)[0] == whole(tokenizer, text)


def test_a_long_unknown_run_still_reaches_the_words_after_it(tokenizer):
    text = "\U0001f9ff" * 100_000 + " Paris" * 600
    assert tokenizer.encode([text], 512) == [whole(tokenizer, text)]


def test_a_single_text_takes_sentencepieces_single_text_path(tokenizer, monkeypatch):
    calls = []
    processor = tokenizer.processor
    encode = processor.encode

    def spy(input, *args, **kwargs):
        calls.append(type(input).__name__)
        return encode(input, *args, **kwargs)

    monkeypatch.setattr(processor, "encode", spy)
    tokenizer.encode(["one text"], 512)
    tokenizer.encode(["two", "texts"], 512)
    assert calls == ["str", "list"]
