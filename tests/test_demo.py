"""`make demo` must keep working: run its SQL and check what it prints."""

import re

from demo import run_demo


def test_demo_runs_and_prints_results(server, database):
    result = run_demo(server, database)
    assert result.returncode == 0, result.stdout
    output = result.stdout
    assert "https://x.example/score" in output
    assert " managed-identity" in output
    assert 'NOTICE:  installing required extension "vector"' in output
    assert 'NOTICE:  installing required extension "aws_commons"' in output
    assert re.search(r"^ aws_ml +\| 2\.0$", output, re.MULTILINE)
    assert (
        'ERROR:  azure_ai.set_setting: invalid value for setting "azure_ml.scoring_endpoint": '
        "must be an http:// or https:// URL with a host" in output
    )
    assert 'ERROR:  azure_ai.get_setting: unknown setting key "azure_ml.endpointkey"' in output
    assert "x.example/score'" not in output.split("ERROR:")[1]
