"""The embedding model's weights are shared between backends: a second backend that loads
the fp32 model adds far less private memory than the model's size."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from conftest import FP32, INT8

pytestmark = pytest.mark.usefixtures("local_ai")


def private_mb(pid: int) -> float:
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, value = line.partition(":")
        fields[name] = int(value.split()[0])
    return (fields["Private_Clean"] + fields["Private_Dirty"]) / 1024


def test_a_second_backend_shares_the_weights(database):
    with psycopg.connect(database, autocommit=True) as first:
        (path,) = first.execute(
            "SELECT model_path FROM azure_local_ai.models WHERE model_uri = %s", (FP32,)
        ).fetchone()
        size_mb = (os.path.getsize(path) + os.path.getsize(path + ".data")) / 2**20
        if not Path(f"/proc/{first.info.backend_pid}/smaps_rollup").exists():
            pytest.skip("the server runs elsewhere")
        assert first.execute("SELECT azure_local_ai.get_setting('prepacking')").fetchone() == (
            "false",
        )
        embed = "SELECT azure_local_ai.create_embeddings(%s, 'load the model')"
        first.execute(embed, (FP32,))
        with psycopg.connect(database, autocommit=True) as second:
            pid = second.info.backend_pid
            second.execute(embed, (INT8,))  # imports, and the tokenizer the two share
            before = private_mb(pid)
            second.execute(embed, (FP32,))
            grown = private_mb(pid) - before
    assert size_mb > 100
    assert grown < size_mb / 4, f"{grown:.0f} MB private for a {size_mb:.0f} MB model"
