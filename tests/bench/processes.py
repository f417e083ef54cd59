"""Simulators for the benchmarks run as processes of their own, off the client's GIL."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def simulator_processes(*services: str, options: tuple[str, ...] = ()) -> Iterator[dict]:
    """Starts `python -m azure_ai_sim.sim <service>` for each service; yields their URLs."""
    processes, urls = [], {}
    try:
        for service in services:
            process = subprocess.Popen(
                [sys.executable, "-m", "azure_ai_sim.sim", service, "--port", "0", *options],
                stdout=subprocess.PIPE,
                text=True,
            )
            processes.append(process)
            urls[service] = process.stdout.readline().split()[-1]
        yield urls
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)
