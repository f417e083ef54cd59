"""A re-install under a running server never breaks a running backend: the package goes
into a new release beside the old ones and a symbolic link switches at once
(extension/install_package.sh); a backend keeps importing from the release it started
with, also what it imports lazily long after, and new backends take the new release."""

from __future__ import annotations

import json
import os
import subprocess
import threading

import psycopg
import pytest

from azure_ai_sim import boot
from cluster import ROOT, Cluster
from conftest import INT8

LOADED_FROM = """
CREATE FUNCTION loaded_from() RETURNS text LANGUAGE azure_ai_plpython AS $$
    import json, sys
    files = {n: getattr(sys.modules.get(n), "__file__", None)
             for n in ("azure_ai_sim.embeddings", "onnxruntime")}
    files["azure_ai_sim"] = sys.modules["azure_ai_sim"].__path__[0] + "/"  # where it imports
    return json.dumps(files)
$$"""
EMBED = f"SELECT count(*) FROM azure_local_ai.create_embeddings('{INT8}', ARRAY['a', 'b'])"


def install_package(libdir) -> str:
    script = ROOT / "extension" / "install_package.sh"
    done = subprocess.run([script, str(libdir)], check=True, capture_output=True, text=True)
    return done.stdout.strip()


def release_of(conn, module: str) -> str:
    files = json.loads(conn.execute("SELECT loaded_from()").fetchone()[0])
    return files[module].split("/azure_ai_sim/")[0].split("/onnxruntime/")[0]


def test_a_backend_keeps_its_release_through_two_reinstalls(server):
    if not isinstance(server, Cluster) or os.geteuid() != 0:
        pytest.skip("needs a server started by the tests, and root to install packages")
    cluster = Cluster()
    libdir = cluster.dir / "lib"
    first = install_package(libdir)
    cluster.env["AZURE_AI_SIM_PYTHON_PATH"] = str(libdir / boot.BOOT_PROTOCOL)
    with cluster, cluster.connect() as conn:
        conn.execute("CREATE EXTENSION azure_ai")
        conn.execute("CREATE EXTENSION azure_local_ai CASCADE")
        conn.execute(LOADED_FROM)
        conn.execute("SELECT azure_ai.version()")  # imports a little, pins `first`
        assert release_of(conn, "azure_ai_sim") == first

        second = install_package(libdir)
        assert conn.execute(EMBED).fetchone() == (2,)  # imports ONNX Runtime only now
        assert release_of(conn, "azure_ai_sim.embeddings") == first
        assert release_of(conn, "onnxruntime") == first

        failures: list[Exception] = []
        stop = threading.Event()

        def keep_calling() -> None:
            with cluster.connect() as looping:
                while not stop.is_set():
                    try:
                        looping.execute(EMBED)
                        looping.execute("SELECT azure_ai.version()")
                    except psycopg.Error as error:
                        failures.append(error)

        loop = threading.Thread(target=keep_calling)
        loop.start()
        try:
            third = install_package(libdir)
        finally:
            stop.set()
            loop.join(60)
        assert failures == []
        assert conn.execute(EMBED).fetchone() == (2,)
        assert release_of(conn, "onnxruntime") == first
        assert os.path.isdir(first)  # the oldest stays while a backend maps it
        with cluster.connect() as fresh:
            assert fresh.execute("SELECT azure_ai.version()").fetchone()
            assert release_of(fresh, "azure_ai_sim") == third
    assert len({first, second, third}) == 3
