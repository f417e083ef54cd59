"""PostgreSQL servers for the tests, the demo and the benchmarks.

A throwaway cluster (initdb in a temp dir, a free port, trust auth on a private unix
socket, run as the postgres user when we are root); or a container of our image
(docker/Dockerfile), started by testcontainers (pytest --image NAME, or the environment
variable AZURE_AI_SIM_IMAGE); or the server that AZURE_AI_SIM_DSN names. All hand out
fresh databases.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parent.parent


def pg_bindir() -> Path:
    """The binaries of the server the extensions were installed into (see extension/)."""
    pg_config = subprocess.run(
        [ROOT / "extension" / "pg_config.sh"], check=True, capture_output=True, text=True
    ).stdout.strip()
    bindir = subprocess.run([pg_config, "--bindir"], check=True, capture_output=True, text=True)
    return Path(bindir.stdout.strip())


class Server:
    """A server we may create databases on, as a superuser."""

    def __init__(self, dsn: str, log_path: Path | None = None):
        self.dsn = dsn
        self.log_path = log_path
        self.bindir = pg_bindir()

    def dsn_for(self, dbname: str) -> str:
        return make_conninfo(self.dsn, dbname=dbname)

    def connect(self, dbname: str | None = None) -> psycopg.Connection:
        dsn = self.dsn_for(dbname) if dbname else self.dsn
        return psycopg.connect(dsn, autocommit=True)

    @contextlib.contextmanager
    def database(self, prefix: str = "t") -> Iterator[str]:
        """A new empty database, dropped afterwards; yields its DSN."""
        name = f"{prefix}_{secrets.token_hex(4)}"[-63:]
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield self.dsn_for(name)
        finally:
            with self.connect() as conn:
                conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')

    def run(self, program: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
        """Runs a client program of the server (psql, pg_dump, ...) and captures its output."""
        kwargs = {"text": True, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kwargs}
        return subprocess.run([str(self.bindir / program), *args], **kwargs)


class Cluster(Server):
    """A private cluster in a temp dir, started by `with`, removed afterwards."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="azure_ai_sim-pg-"))
        self.data = self.dir / "data"
        self.env: dict[str, str] = {}  # the server's extra environment, set before start
        self.as_owner: list[str] = []
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            os.chown(self.dir, pwd.getpwnam("postgres").pw_uid, -1)
            self.as_owner = ["runuser", "-u", "postgres", "--"]
        port = _free_port()
        super().__init__(
            f"host={self.dir} port={port} user=postgres dbname=postgres", self.dir / "server.log"
        )
        self.port = port

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.destroy()

    def _pg(self, program: str, *args: str) -> None:
        command = [*self.as_owner, "env", *(f"{k}={v}" for k, v in self.env.items())]
        subprocess.run(
            [*command, str(self.bindir / program), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            cwd=self.dir,
        )

    def start(self) -> None:
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                 "-E", "UTF8", "--no-locale", "--no-sync")  # fmt: skip
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"port = {self.port}\n"
                "listen_addresses = ''\n"
                f"unix_socket_directories = '{self.dir}'\n"
                "fsync = off\n"
                "synchronous_commit = off\n"
                "full_page_writes = off\n"
                # our hooks (see log_filter.c), and pg_cron for ml_pipeline's schedules
                "shared_preload_libraries = 'azure_ai_sim,pg_cron'\n"
                "cron.use_background_workers = on\n"
            )
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-w", "start")

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


class Container(Server):
    """A container of our image on the host's network, so that the simulators the tests
    start on 127.0.0.1 are the server's 127.0.0.1 too; on a free port of the loopback, with
    trust there (POSTGRES_HOST_AUTH_METHOD, as the official image has it). Client programs
    (pg_dump, psql) run inside it: they are the server's own major."""

    def __init__(
        self, image: str, env: dict[str, str] | None = None, volume: str | None = None
    ) -> None:
        """env: more of the container's environment; volume: a named volume for the data."""
        os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")  # no registry for its image
        from testcontainers.core.container import DockerContainer

        self.port = _free_port()
        self.container = (
            DockerContainer(image)
            .with_env("POSTGRES_HOST_AUTH_METHOD", "trust")
            .with_env("PGPORT", str(self.port))  # the server's port, and psql's inside
            .with_command("-c listen_addresses=127.0.0.1")
            .with_kwargs(network_mode="host")
        )
        for name, value in (env or {}).items():
            self.container.with_env(name, value)
        if volume:
            self.container.with_volume_mapping(volume, "/var/lib/postgresql/data", "rw")
        self.dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        self.log_path = None

    def __enter__(self) -> Container:
        self._started = time.monotonic()
        self.container.start()
        try:
            for _ in range(600):  # initdb on the first start: seconds, far below this bound
                try:
                    psycopg.connect(self.dsn, connect_timeout=2).close()
                    self._ready = time.monotonic()
                    return self
                except psycopg.OperationalError:
                    time.sleep(0.1)
            raise RuntimeError(f"the container of {self.container.image} did not accept "
                               f"connections: {self.container.get_logs()}")  # fmt: skip
        except BaseException:
            self.container.stop()
            raise

    @property
    def started_in(self) -> float:
        """Seconds from the container's start to the first session."""
        return self._ready - self._started

    def __exit__(self, *exc_info: object) -> None:
        self.container.stop()

    def run(self, program: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
        kwargs = {"text": True, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kwargs}
        # what the caller adds to the environment goes in; the host's own does not
        added = {k: v for k, v in kwargs.pop("env", {}).items() if os.environ.get(k) != v}
        options = [f"--env={name}={value}" for name, value in added.items()]
        command = [program, *args]
        if kwargs.get("stderr") == subprocess.STDOUT:  # one stream in the container, in order
            command = ["sh", "-c", 'exec "$@" 2>&1', "sh", *command]
        container = self.container.get_wrapped_container().id
        return subprocess.run([docker(), "exec", "-i", *options, container, *command], **kwargs)


def docker() -> str:
    """The Docker client (docker/engine.sh picks one that builds with BuildKit)."""
    return os.environ.get("DOCKER", "docker")


@contextlib.contextmanager
def server_from_environment(image: str | None = None) -> Iterator[Server]:
    """A container of image (or of AZURE_AI_SIM_IMAGE), else the server AZURE_AI_SIM_DSN
    names, else a private cluster, for the duration."""
    image = image or os.environ.get("AZURE_AI_SIM_IMAGE")
    dsn = os.environ.get("AZURE_AI_SIM_DSN")
    if image:
        with Container(image) as container:
            yield container
    elif dsn:
        conninfo_to_dict(dsn)  # fail early on a malformed DSN
        yield Server(dsn)
    else:
        with Cluster() as cluster:
            yield cluster


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
