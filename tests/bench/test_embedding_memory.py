"""What the fp32 embedding model costs in memory across backends, with ONNX Runtime's
weight pre-packing on and off (azure_local_ai's `prepacking` setting), and what each
choice does to throughput.

For 1, 4 and 8 backends that each load the model and embed a few texts: Pss and private
memory (Private_Clean + Private_Dirty) per backend from /proc/<pid>/smaps_rollup. Then
texts/s of create_embeddings(text[]) on 600 sentences and the p50 of the single-text
form, the two settings interleaved for ROUNDS rounds. Writes build/bench/embedding_memory.json.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import psycopg
from test_embedding_throughput import sentences

FP32 = "multilingual-e5-small:v1"
BACKENDS = (1, 4, 8)
ROUNDS = 3
TEXTS = 600
SINGLE_TEXTS = 40
RESULT = Path(__file__).resolve().parents[2] / "build" / "bench" / "embedding_memory.json"


def smaps_mb(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, value = line.partition(":")
        fields[name] = int(value.split()[0]) / 1024
    return {"pss": fields["Pss"], "private": fields["Private_Clean"] + fields["Private_Dirty"]}


def set_prepacking(database: str, value: str) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("SELECT azure_local_ai.set_setting('prepacking', %s)", (value,))


def memory(database: str, backends: int, texts: list[str]) -> dict[str, float]:
    """Per backend (mean), with `backends` backends holding the model at once."""
    conns = [psycopg.connect(database, autocommit=True) for _ in range(backends)]
    try:
        for conn in conns:
            conn.execute(
                "SELECT count(*) FROM azure_local_ai.create_embeddings(%s, %s::text[])",
                (FP32, texts[:16]),
            )
        figures = [smaps_mb(conn.info.backend_pid) for conn in conns]
    finally:
        for conn in conns:
            conn.close()
    return {name: statistics.mean(f[name] for f in figures) for name in ("pss", "private")}


def speed(database: str, texts: list[str]) -> dict[str, float]:
    with psycopg.connect(database, autocommit=True) as conn:
        statement = "SELECT count(*) FROM azure_local_ai.create_embeddings(%s, %s::text[])"
        conn.execute(statement, (FP32, texts[:16]))  # load, warm up
        started = time.perf_counter()
        conn.execute(statement, (FP32, texts))
        rate = len(texts) / (time.perf_counter() - started)
        latencies = []
        for text in texts[:SINGLE_TEXTS]:
            started = time.perf_counter()
            conn.execute("SELECT azure_local_ai.create_embeddings(%s, %s)", (FP32, text))
            latencies.append((time.perf_counter() - started) * 1000)
    return {"texts_per_s": rate, "single_text_p50_ms": statistics.median(latencies)}


def test_embedding_memory(local_ai):
    texts = sentences(TEXTS)
    result: dict = {"benchmark": "embedding_memory", "model": FP32, "memory_mb_per_backend": {}}
    speeds: dict[str, list[dict[str, float]]] = {"true": [], "false": []}
    try:
        for backends in BACKENDS:
            for prepacking in ("true", "false"):  # interleaved
                set_prepacking(local_ai, prepacking)
                figures = memory(local_ai, backends, texts)
                result["memory_mb_per_backend"][f"prepacking_{prepacking}_{backends}"] = figures
        for _ in range(ROUNDS):
            for prepacking in ("true", "false"):
                set_prepacking(local_ai, prepacking)
                speeds[prepacking].append(speed(local_ai, texts))
    finally:
        set_prepacking(local_ai, None)
    for prepacking, runs in speeds.items():
        result[f"prepacking_{prepacking}"] = {
            name: statistics.median(run[name] for run in runs) for name in runs[0]
        }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
