"""How a backend finds this package: the prologue of every PL/Python body, and start().

The install scripts in sql/ begin each PL/Python body with a line `#BOOT`. `make install`
renders them with `python -m azure_ai_sim.boot`, replacing that line with PROLOGUE, which
puts the versioned library directory first on sys.path and calls start() once per backend.
The prologue uses only the standard library and no SPI, so it also runs in parallel workers.

The directory is fixed at install time. AZURE_AI_SIM_PYTHON_PATH in the server's environment
overrides it; it is deliberately not a GUC, because any user may SET a custom GUC and would
then choose the code that SECURITY DEFINER functions run.
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


def start(expected_version: str, extension: str, path: str) -> str:
    """Runs once per backend: isolate sys.path, then check the package is the expected one."""
    from azure_ai_sim import errors, pg

    _drop_site_packages(path)
    import azure_ai_sim

    found = azure_ai_sim.__version__
    if found != expected_version:
        raise pg.sql_error(
            errors.VersionMismatch(
                f"extension {extension} needs azure_ai_sim {expected_version}, "
                f"but this session loaded {found} from {os.path.dirname(azure_ai_sim.__file__)}",
                hint=f"Install azure_ai_sim {expected_version} (make install) "
                f"or ALTER EXTENSION {extension} UPDATE, then reconnect.",
            ),
            extension,
        )
    return found


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
    from azure_ai_sim import __version__

    parser = argparse.ArgumentParser(description="Render sql/ install scripts for installation.")
    parser.add_argument("--libdir", required=True, help="parent of the versioned package dirs")
    parser.add_argument("--modeldir", required=True, help="where the built-in models are")
    parser.add_argument("--out", required=True, type=Path, help="directory to write into")
    parser.add_argument("scripts", nargs="+", type=Path)
    args = parser.parse_args()
    for script in args.scripts:
        extension = script.name.split("--")[0]
        rendered = render(script.read_text(), __version__, args.libdir, extension, args.modeldir)
        target = args.out / script.name
        target.write_text(rendered)
        target.chmod(0o644)  # read by the server as postgres, whatever root's umask


if __name__ == "__main__":
    main()
