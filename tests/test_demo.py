"""`make demo` must keep working: run its SQL and check what it prints."""

import re

from azure_ai_sim.boot import SQL_VERSIONS
from azure_ai_sim.sim.models import HOUSING
from demo import run_demo


def test_demo_runs_and_prints_results(server, database, azureml):
    result = run_demo(server, database, azureml)
    output = result.stdout
    assert result.returncode == 0, output
    first, second = HOUSING.predict([[1, 2, 3, 4, 5, 6, 7, 8], [-1, -2, -3, -4, -5, -6, -7, -8]])
    assert f" {first}\n" in output and f" {second}\n" in output  # jsonb_array_elements rows
    assert len(re.findall(r"^ Berkeley hills \| +\d+\.\d\d$", output, re.MULTILINE)) == 2
    assert re.search(r"^ 17\.5$", output, re.MULTILINE)  # Stream Analytics' createArray row
    assert re.search(r"^ 2 +\| Tue +\| 10 +\| 2 +\| 10 +\| 28\.0$", output, re.MULTILINE)
    assert "WARNING:  azure_ml.invoke: HTTP 424" in output
    assert " managed-identity" in output
    assert re.search(r"^ +384$", output, re.MULTILINE)  # the embedding's dimensions
    assert re.search(r"^ passage: Der Zug nach Berlin[^|]+\| +0\.\d+$", output, re.MULTILINE)
    assert "passage: La receta lleva harina" in output.split("ingredients for pancakes")[1]
    assert 'NOTICE:  installing required extension "vector"' in output
    assert 'NOTICE:  installing required extension "aws_commons"' in output
    assert re.search(rf"^ aws_ml +\| {re.escape(SQL_VERSIONS['aws_ml'][-1])}$", output, re.M)
    assert re.search(r"^ +0 \| +2$", output, re.MULTILINE)  # setosa, virginica
    assert re.search(r"^ The support team was wonderful, thank you! +\| POSITIVE", output, re.M)
    assert re.search(
        r"^   Batch Processing: num batches=4 avg/min/max batch size=750\.750/3\.000/1000\.000"
        r" avg/min/max batch call time=[0-9.]+/[0-9.]+/[0-9.]+$",
        output,
        re.M,
    )
    assert re.search(r"^ +1024$", output, re.MULTILINE)  # Titan v2's dimensions
    # Azure OpenAI: a vector column filled and searched; a semantic query (rank, is_true)
    assert re.search(r"^-+\n Bots that talk back\n\(1 row\)$", output, re.M)
    ranked = re.findall(r"^ +(\d) \| ([\w ]+?) +\| +0\.\d{3}$", output, re.M)
    assert ranked == [("1", "Bots that talk back"), ("2", "Customer service assistants")]
    assert ' {"design": "The design is sleek", "sentiment": 3}' in output
    # ml_pipeline: two rows queued (one new, one changed), then everything current
    assert re.search(r"^ review_mood +\| +3 \| +1 \| +2 \| +0$", output, re.M)
    assert re.search(r"^ review_vectors +\| +3 \| +1 \| +2 \| +0$", output, re.M)
    assert re.search(r"^ +2 \| They replaced it at once[^|]+\| POSITIVE +\| +384$", output, re.M)
    assert re.search(r"^ review_mood +\| +3 \| +3 \| +0 \| +0$", output, re.M)
    # the ledger: the Comprehend requests of the pipeline among the day's calls
    assert re.search(r"^ comprehend +\| http://[^|]+\| +\d+ \| +0 \| +\d+ \|", output, re.M)
    assert (
        'ERROR:  azure_ai.set_setting: invalid value for setting "azure_ml.scoring_endpoint": '
        "must be an http:// or https:// URL with a host" in output
    )
    assert "== Two deliberate mistakes follow: their ERRORs are part of the demo. ==" in output
    assert "ERROR:  azure_ai.get_setting: unknown setting key (not shown" in output
    assert 'HINT:  Did you mean "azure_ml.endpoint_key"?' in output
