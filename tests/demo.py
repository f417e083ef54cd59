"""`make demo`: runs demo.sql on a private cluster (or AZURE_AI_SIM_DSN) and prints it all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cluster import Server, server_from_environment

DEMO_SQL = Path(__file__).with_name("demo.sql")


def run_demo(server: Server, dsn: str) -> subprocess.CompletedProcess:
    """psql echoes each statement before its result; errors and notices interleave."""
    return server.run(
        "psql", "--no-psqlrc", "--echo-queries", "-v", "ON_ERROR_STOP=1",
        f"--dbname={dsn}", f"--file={DEMO_SQL}", stderr=subprocess.STDOUT,
    )  # fmt: skip


def main() -> int:
    with server_from_environment() as server, server.database("azure_ai_demo") as dsn:
        result = run_demo(server, dsn)
    print(result.stdout)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
