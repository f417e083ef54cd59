"""Microsoft's Azure ML inference server (azmlinfsrv) as a real scoring server for tests.

`azureml-inference-server-http` is the HTTP server inside Azure ML's inference containers: it
loads an entry script (init() and run()), serves GET / (liveness), POST /score and
GET /swagger.json, whose schema it generates from the `inference-schema` decorators on run().

Its dependencies (Flask, gunicorn, OpenTelemetry, pandas, and wrapt<=1.16 through
inference-schema, which would downgrade the wrapt our venv has) stay out of the project's venv:
the server runs as a subprocess of its own Python, a separate venv made with

    python3 -m venv ~/.cache/azure_ai_sim/inference-venv
    ~/.cache/azure_ai_sim/inference-venv/bin/pip install \\
        azureml-inference-server-http==1.5.1 'inference-schema[numpy-support,pandas-support]==1.8'

Which Python runs it: $AZMLINFSRV_PYTHON if set, else that venv's, else the interpreter running
the tests if it has the packages. `server_python()` says which, or why none can.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

SCORE_SCRIPT = Path(__file__).with_name("score.py")
VENV_PYTHON = Path.home() / ".cache" / "azure_ai_sim" / "inference-venv" / "bin" / "python"
REQUIRED_MODULES = ("azureml_inference_server_http", "inference_schema", "pandas", "numpy")

# azmlinfsrv's own entry point (what the `azmlinfsrv` script runs), with one change: it binds
# gunicorn to DEFAULT_HOST, 0.0.0.0, and has no option for it, so the launcher sets the constant
# to loopback before the server module reads it.
_LAUNCHER = (
    "import azureml_inference_server_http.constants as c; "
    "c.DEFAULT_HOST = '127.0.0.1'; "
    "from azureml_inference_server_http.amlserver import run; "
    "run()"
)


class InferenceServerError(RuntimeError):
    """The server did not start (or not in time); the message carries its own output."""


def server_python() -> tuple[Path | None, str]:
    """The Python that can run azmlinfsrv, or None and the reason there is none."""
    candidates: list[Path] = []
    explicit = os.environ.get("AZMLINFSRV_PYTHON")
    if explicit:
        candidates.append(Path(explicit))
    else:
        if VENV_PYTHON.exists():
            candidates.append(VENV_PYTHON)
        candidates.append(Path(sys.executable))
    probe = (
        "import importlib.util, sys; "
        f"missing = [m for m in {REQUIRED_MODULES!r} if importlib.util.find_spec(m) is None]; "
        "print(' '.join(missing)); sys.exit(1 if missing else 0)"
    )
    reasons = []
    for python in candidates:
        try:
            done = subprocess.run(
                [str(python), "-c", probe], capture_output=True, text=True, timeout=30
            )
        except OSError as exc:
            reasons.append(f"{python}: {exc}")
            continue
        if done.returncode == 0:
            return python, ""
        reasons.append(f"{python} lacks {done.stdout.strip() or done.stderr.strip()}")
    return None, (
        "azureml-inference-server-http is not installed ("
        + "; ".join(reasons)
        + "); see tests/inference_server/__init__.py for the venv to make"
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _healthy(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        return response.status == 200 and response.read() == b"Healthy"
    except OSError:
        return False
    finally:
        connection.close()


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group (gunicorn's arbiter and worker), SIGKILL after 10s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # The worker may outlive the arbiter by a moment; make sure nothing of the group stays.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _tail(path: Path, limit: int = 6000) -> str:
    text = path.read_text(errors="replace")
    return text if len(text) <= limit else "...\n" + text[-limit:]


@contextlib.contextmanager
def inference_server(
    script: Path = SCORE_SCRIPT,
    *,
    python: Path | None = None,
    startup_timeout: float = 60.0,
    env: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """Run azmlinfsrv with `script` as its entry script on 127.0.0.1; yield its base URL.

    Waits until GET / answers "Healthy" (the server's liveness route), at most
    `startup_timeout` seconds; if the server exits or does not answer by then, raises
    InferenceServerError with the server's own output. The whole process group is stopped when
    the block ends.
    """
    if python is None:
        python, reason = server_python()
        if python is None:
            raise InferenceServerError(reason)
    script = Path(script).resolve()
    with tempfile.TemporaryDirectory(prefix="azmlinfsrv-") as scratch:
        # An empty app root: the server serves a swagger.json found there instead of generating.
        app_root = Path(scratch, "app")
        model_dir = Path(scratch, "model")
        app_root.mkdir()
        model_dir.mkdir()
        log_path = Path(scratch, "server.log")
        port = _free_port()
        child_env = dict(os.environ)
        child_env.update(
            {
                "AML_APP_ROOT": str(app_root),
                "AZUREML_MODEL_DIR": str(model_dir),
                "AML_APP_INSIGHTS_ENABLED": "false",
                # gunicorn 23+ opens a control socket at ~/.gunicorn/gunicorn.ctl: one path for
                # every server of the user, so two servers at once would fight over it.
                "GUNICORN_CMD_ARGS": "--no-control-socket",
                "PYTHONUNBUFFERED": "1",
            }
        )
        child_env.pop("PYTHONPATH", None)
        child_env.update(env or {})
        command = [
            str(python),
            "-c",
            _LAUNCHER,
            "--entry_script",
            str(script),
            "--port",
            str(port),
        ]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command,
                cwd=app_root,
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + startup_timeout
            while not _healthy(port):
                if process.poll() is not None:
                    raise InferenceServerError(
                        f"azmlinfsrv exited with status {process.returncode} before answering "
                        f"on port {port}; its output:\n{_tail(log_path)}"
                    )
                if time.monotonic() > deadline:
                    raise InferenceServerError(
                        f"azmlinfsrv did not answer GET / on port {port} within "
                        f"{startup_timeout:g}s; its output:\n{_tail(log_path)}"
                    )
                time.sleep(0.1)
            yield f"http://127.0.0.1:{port}"
        finally:
            _stop(process)
