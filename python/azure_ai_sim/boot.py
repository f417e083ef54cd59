"""How a backend finds this package: the prologue of every PL/Python body, and start().

The install scripts in sql/ begin each PL/Python body with a line `#BOOT`. `make install`
renders them with `python -m azure_ai_sim.boot`, replacing that line with PROLOGUE, which
puts the versioned library directory first on sys.path and calls start() once per backend.
The prologue uses only the standard library and no SPI, so it also runs in parallel workers.

The directory is fixed at install time. AZURE_AI_SIM_PYTHON_PATH in the server's environment
overrides it; it is deliberately not a GUC, because any user may SET a custom GUC and would
then choose the code that SECURITY DEFINER functions run.

The version contract, pgvector's: the rendered SQL of a script never changes with the
package. The prologue names BOOT_PROTOCOL, not the package's version, and the directory
<libdir>/<BOOT_PROTOCOL> is a symbolic link that `make install` switches atomically to a
new release beside the old ones. A backend keeps the release it first imported from; the
package checks once per backend that it serves the SQL versions of our extensions in the
database (SQL_VERSIONS), and says what to run when it does not.
"""

from __future__ import annotations

import argparse
import os
import site
import sys
from pathlib import Path

PROLOGUE = """\
if GD.get("azure_ai_sim") != "{version}":
    import os, sys
    path = os.environ.get("AZURE_AI_SIM_PYTHON_PATH", "{libdir}/{version}")
    sys.path.insert(0, path)
    try:
        from azure_ai_sim import boot
    except ImportError:
        plpy.error("azure_ai_sim {version} is not installed in " + path, sqlstate="58P01",
                   hint="Run make install, or ALTER EXTENSION {extension} UPDATE.")
    GD["azure_ai_sim"] = boot.start("{version}", "{extension}", path)
"""

MARKER = "#BOOT"

# What the prologue of every rendered script expects of the package: its GD key, the
# directory it looks in, boot.start's arguments. Changes only if the prologue must.
BOOT_PROTOCOL = "0.1.0"

# Every SQL version of our extensions that this package serves: all the versions that the
# scripts in sql/ reach (a test checks this against them).
SQL_VERSIONS = {
    "azure_ai": ("0.1.0", "0.1.1", "0.1.2", "0.1.3", "0.1.4", "0.1.5", "0.1.6"),
    "azure_local_ai": ("0.1.0", "0.1.1", "0.1.2", "0.1.3"),
    "aws_ml": ("1.0", "2.0", "2.0.1", "2.0.2"),
    "ml_pipeline": ("0.1.0", "0.1.1", "0.1.2", "0.1.3"),
}


def start(expected_protocol: str, extension: str, path: str) -> str:
    """Runs once per backend: keep to one release, isolate sys.path, then check that the
    package serves the prologue and the extensions installed in this database."""
    from azure_ai_sim import errors, pg

    release = _pin(path)
    _drop_site_packages(release)
    import azure_ai_sim

    found = f"azure_ai_sim {azure_ai_sim.__version__} from {release}"
    if expected_protocol != BOOT_PROTOCOL:
        raise pg.sql_error(
            errors.VersionMismatch(
                f"extension {extension} was installed for the boot protocol "
                f"{expected_protocol}, but this session loaded {found}, which speaks "
                f"{BOOT_PROTOCOL}",
                hint="Install the azure_ai_sim that installed the extension (make install), "
                "then reconnect.",
            ),
            extension,
        )
    if not pg.in_parallel_mode():  # a parallel worker's leader has checked
        try:
            _check_served(found)
        except errors.Error as error:
            raise pg.sql_error(error, extension) from None
    return BOOT_PROTOCOL


def _pin(path: str) -> str:
    """The release this backend keeps: `path` is a symbolic link that a re-install
    switches, and what the backend imports later (lazily) must come from the release it
    first imported from."""
    import azure_ai_sim

    release = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    sys.path[:] = [release if entry == path else entry for entry in sys.path]
    # Our own modules are found through the package's __path__, not sys.path.
    azure_ai_sim.__path__[:] = [os.path.realpath(entry) for entry in azure_ai_sim.__path__]
    return release


def _check_served(found: str) -> None:
    from azure_ai_sim import errors, pg

    rows = pg.execute(
        "SELECT extname, extversion FROM pg_catalog.pg_extension WHERE extname = ANY($1)",
        ["text[]"],
        [list(SQL_VERSIONS)],
    )
    for row in rows:
        served = SQL_VERSIONS[row["extname"]]
        if row["extversion"] not in served:
            raise errors.VersionMismatch(
                f"extension {row['extname']} is at version {row['extversion']}, which this "
                f"session's {found} does not serve (it serves {', '.join(served)})",
                hint="Install the azure_ai_sim that installed it (make install), then "
                "reconnect; or ALTER EXTENSION "
                f"{row['extname']} UPDATE if it is older than {served[-1]}.",
            )


def _drop_site_packages(keep: str) -> None:
    """Debian's and the user's site-packages must not shadow our pinned dependencies."""
    site_dirs = {*site.getsitepackages(), site.getusersitepackages()}
    sys.path[:] = [
        entry
        for entry in sys.path
        if entry == keep
        or (entry not in site_dirs and Path(entry).name not in ("dist-packages", "site-packages"))
    ]


def render(sql: str, version: str, libdir: str, extension: str, modeldir: str = "") -> str:
    """Expands each `#BOOT` line of an install script into PROLOGUE at the same indentation,
    and @MODELDIR@ into the directory of the built-in models."""
    prologue = PROLOGUE.format(version=version, libdir=libdir, extension=extension)
    sql = sql.replace("@MODELDIR@", modeldir)
    lines = []
    for line in sql.splitlines(keepends=True):
        if line.strip() == MARKER:
            indent = line[: len(line) - len(line.lstrip())]
            lines.extend(indent + body_line for body_line in prologue.splitlines(keepends=True))
        else:
            lines.append(line)
    return "".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Render sql/ install scripts for installation.")
    parser.add_argument("--libdir", required=True, help="parent of <boot protocol>, the link")
    parser.add_argument("--modeldir", required=True, help="where the built-in models are")
    parser.add_argument("--out", required=True, type=Path, help="directory to write into")
    parser.add_argument("scripts", nargs="+", type=Path)
    args = parser.parse_args()
    for script in args.scripts:
        extension = script.name.split("--")[0]
        rendered = render(script.read_text(), BOOT_PROTOCOL, args.libdir, extension, args.modeldir)
        target = args.out / script.name
        target.write_text(rendered)
        target.chmod(0o644)  # read by the server as postgres, whatever root's umask


if __name__ == "__main__":
    main()
