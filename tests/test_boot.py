"""The prologue of every PL/Python body: finding the package, isolating it, checking it."""

import json
import shutil

import psycopg
import pytest

from azure_ai_sim import __version__, boot
from cluster import Cluster

BODY_AFTER_BOOT = "    from azure_ai_sim import azure_ai\n"


@pytest.fixture(scope="module", autouse=True)
def extension(database):
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION azure_ai")


def installed_prologue(conn) -> str:
    """The prologue exactly as `make install` rendered it into azure_ai.version()."""
    source = conn.execute("SELECT prosrc FROM pg_proc WHERE oid = 'azure_ai.version'::regproc")
    return source.fetchone()[0].split(BODY_AFTER_BOOT)[0]


def create_function(conn, name: str, body: str) -> None:
    conn.execute(
        f"CREATE OR REPLACE FUNCTION {name}() RETURNS text LANGUAGE azure_ai_plpython "
        f"AS $body${body}$body$"
    )


def test_render_expands_the_marker_at_its_indentation():
    sql = "CREATE FUNCTION f() AS $$\n\t  #BOOT\n\t  return 1\n$$;\n"
    rendered = boot.render(sql, "1.2.3", "/opt/lib", "ext")
    lines = rendered.splitlines()
    assert lines[0] == "CREATE FUNCTION f() AS $$"
    assert lines[1] == '\t  if GD.get("azure_ai_sim") != "1.2.3":'
    assert '\t      path = os.environ.get("AZURE_AI_SIM_PYTHON_PATH", "/opt/lib/1.2.3")' in lines
    assert '\t      GD["azure_ai_sim"] = boot.start("1.2.3", "ext", path)' in lines
    assert lines[-2:] == ["\t  return 1", "$$;"]
    body = "\n".join(line[3:] for line in lines[1:-1])
    compile("def f():\n" + "\n".join("    " + x for x in body.splitlines()), "body", "exec")


def test_the_backend_runs_our_package_in_isolation(conn):
    report = "    import os, sys, json\n" + (
        "    return json.dumps({'path': sys.path, 'file': azure_ai.__file__, 'env': "
        "{k: os.environ.get(k) for k in ('OPENBLAS_NUM_THREADS', 'TOKENIZERS_PARALLELISM')}})\n"
    )
    create_function(conn, "boot_report", installed_prologue(conn) + BODY_AFTER_BOOT + report)
    result = json.loads(conn.execute("SELECT boot_report()").fetchone()[0])
    libdir = result["path"][0]
    assert libdir.endswith(f"/{__version__}")
    assert result["file"] == f"{libdir}/azure_ai_sim/azure_ai.py"
    assert not [p for p in result["path"] if p.endswith(("dist-packages", "site-packages"))]
    assert result["env"] == {"OPENBLAS_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_a_script_for_another_version_is_refused(conn):
    prologue = installed_prologue(conn)
    other = prologue.replace(f'!= "{__version__}"', '!= "9.9.9"').replace(
        f'boot.start("{__version__}"', 'boot.start("9.9.9"'
    )
    assert other.count("9.9.9") == 2
    create_function(conn, "from_the_future", other + "    return 'unreachable'\n")
    for _ in range(2):  # before and after the session loaded the package for azure_ai
        with pytest.raises(psycopg.errors.FeatureNotSupported) as caught:
            conn.execute("SELECT from_the_future()")
        assert caught.value.diag.message_primary.startswith(
            f"azure_ai: extension azure_ai needs azure_ai_sim 9.9.9, but this session "
            f"loaded {__version__} from /"
        )
        assert "ALTER EXTENSION azure_ai UPDATE" in caught.value.diag.message_hint
        assert conn.execute("SELECT azure_ai.version()").fetchone() == (__version__,)


def test_a_missing_install_is_reported(conn):
    missing = installed_prologue(conn).replace(__version__, "0.0.0-missing")
    create_function(conn, "not_installed", missing + "    return 'unreachable'\n")
    with pytest.raises(psycopg.errors.UndefinedFile) as caught:
        conn.execute("SELECT not_installed()")
    assert caught.value.diag.message_primary.startswith(
        "plpy.Error: azure_ai_sim 0.0.0-missing is not installed in /"
    )
    assert caught.value.diag.message_hint == (
        "Run make install, or ALTER EXTENSION azure_ai UPDATE."
    )


def test_the_server_environment_overrides_the_directory(conn, server):
    """AZURE_AI_SIM_PYTHON_PATH, set where the server starts, picks another copy."""
    if not isinstance(server, Cluster):
        pytest.skip("needs a server started by the tests")
    create_function(conn, "package_dir", installed_prologue(conn) + "    return path\n")
    installed = conn.execute("SELECT package_dir()").fetchone()[0]
    other = Cluster()
    copy = other.dir / "azure_ai_sim-copy"
    shutil.copytree(installed, copy)
    init = copy / "azure_ai_sim" / "__init__.py"
    init.write_text(init.read_text().replace(f'"{__version__}"', '"9.9.9"'))
    shutil.rmtree(copy / "azure_ai_sim" / "__pycache__")
    other.env["AZURE_AI_SIM_PYTHON_PATH"] = str(copy)
    with other, other.connect() as other_conn:
        other_conn.execute("CREATE EXTENSION azure_ai")
        with pytest.raises(psycopg.errors.FeatureNotSupported) as caught:
            other_conn.execute("SELECT azure_ai.version()")
    assert caught.value.diag.message_primary == (
        f"azure_ai: extension azure_ai needs azure_ai_sim {__version__}, but this session "
        f"loaded 9.9.9 from {copy}/azure_ai_sim"
    )
