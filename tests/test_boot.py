"""The prologue of every PL/Python body: finding the package, isolating it, checking it."""

import json
import os
import shutil

import psycopg
import pytest

from azure_ai_sim import __version__, boot
from cluster import ROOT, Cluster

PROTOCOL = boot.BOOT_PROTOCOL

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
    release = result["path"][0]  # where the link pointed when the backend started
    assert "/releases/" in release and not os.path.islink(release)
    assert result["file"] == f"{release}/azure_ai_sim/azure_ai.py"
    assert not [p for p in result["path"] if p.endswith(("dist-packages", "site-packages"))]
    assert result["env"] == {"OPENBLAS_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_a_script_for_another_boot_protocol_is_refused(conn):
    prologue = installed_prologue(conn)
    other = prologue.replace(f'!= "{PROTOCOL}"', '!= "9.9.9"').replace(
        f'boot.start("{PROTOCOL}"', 'boot.start("9.9.9"'
    )
    assert other.count("9.9.9") == 2
    create_function(conn, "from_the_future", other + "    return 'unreachable'\n")
    for _ in range(2):  # before and after the session loaded the package for azure_ai
        with pytest.raises(psycopg.errors.FeatureNotSupported) as caught:
            conn.execute("SELECT from_the_future()")
        assert caught.value.diag.message_primary.startswith(
            "azure_ai: extension azure_ai was installed for the boot protocol 9.9.9, but this "
            f"session loaded azure_ai_sim {__version__} from /"
        )
        assert "(make install), then reconnect" in caught.value.diag.message_hint
        assert conn.execute("SELECT azure_ai.version()").fetchone() == (__version__,)


def test_an_extension_version_the_package_does_not_serve_is_refused(conn, database):
    conn.execute("UPDATE pg_extension SET extversion = '9.9' WHERE extname = 'azure_ai'")
    try:
        with (
            psycopg.connect(database) as fresh,
            pytest.raises(psycopg.errors.FeatureNotSupported) as caught,
        ):
            fresh.execute("SELECT azure_ai.version()")
    finally:
        conn.execute(
            "UPDATE pg_extension SET extversion = %s WHERE extname = 'azure_ai'",
            (boot.SQL_VERSIONS["azure_ai"][-1],),
        )
    diag = caught.value.diag
    assert diag.message_primary.startswith(
        "azure_ai: extension azure_ai is at version 9.9, which this session's azure_ai_sim "
    )
    served = ", ".join(boot.SQL_VERSIONS["azure_ai"])
    assert diag.message_primary.endswith(f"does not serve (it serves {served})")
    assert "ALTER EXTENSION azure_ai UPDATE" in diag.message_hint


def test_the_served_versions_are_those_of_the_scripts():
    scripts = {}
    for script in sorted((ROOT / "sql").glob("*.sql")):
        extension, *versions = script.stem.split("--")
        scripts.setdefault(extension, set()).add(versions[-1])
    for extension, served in boot.SQL_VERSIONS.items():
        assert set(served) == scripts[extension]
        control = (ROOT / "control" / f"{extension}.control").read_text()
        assert f"default_version = '{served[-1]}'" in control


def test_a_missing_install_is_reported(conn):
    missing = installed_prologue(conn).replace(PROTOCOL, "0.0.0-missing")
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
    module = copy / "azure_ai_sim" / "boot.py"
    module.write_text(module.read_text().replace(f'"{PROTOCOL}"', '"9.9.9"'))
    shutil.rmtree(copy / "azure_ai_sim" / "__pycache__")
    other.env["AZURE_AI_SIM_PYTHON_PATH"] = str(copy)
    with other, other.connect() as other_conn:
        other_conn.execute("CREATE EXTENSION azure_ai")
        with pytest.raises(psycopg.errors.FeatureNotSupported) as caught:
            other_conn.execute("SELECT azure_ai.version()")
    assert caught.value.diag.message_primary == (
        f"azure_ai: extension azure_ai was installed for the boot protocol {PROTOCOL}, but "
        f"this session loaded azure_ai_sim {__version__} from {copy}, which speaks 9.9.9"
    )
