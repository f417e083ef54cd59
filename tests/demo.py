"""`make demo`: runs demo.sql on a private cluster (or AZURE_AI_SIM_DSN) against the local
simulators, and prints it all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from azure_ai_sim.sim import (
    AzureMLSimulator,
    BedrockSimulator,
    CohereSimulator,
    ComprehendSimulator,
    OpenAISimulator,
    SageMakerSimulator,
    cohere,
    openai,
)
from cluster import Server, server_from_environment

DEMO_SQL = Path(__file__).with_name("demo.sql")
KEY = "sim-key"


def run_demo(server: Server, dsn: str, azureml: AzureMLSimulator) -> subprocess.CompletedProcess:
    """psql echoes each statement before its result; errors and notices interleave. The
    script goes in on psql's standard input: psql may run where the server does."""
    with (
        SageMakerSimulator() as sagemaker,
        ComprehendSimulator() as comprehend,
        BedrockSimulator() as bedrock,
        OpenAISimulator() as azure_openai,
        CohereSimulator() as reranker,
        DEMO_SQL.open() as script,
    ):
        return server.run(
            "psql", "--no-psqlrc", "--echo-queries", "-v", "ON_ERROR_STOP=1",
            "-v", f"scoring_endpoint={azureml.url}/score", "-v", f"endpoint_key={KEY}",
            "-v", f"sagemaker_url={sagemaker.url}", "-v", f"comprehend_url={comprehend.url}",
            "-v", f"bedrock_url={bedrock.url}",
            "-v", f"openai_endpoint={azure_openai.url}", "-v", f"openai_key={openai.DEFAULT_KEY}",
            "-v", f"ranking_endpoint={reranker.url}/v2/rerank",
            "-v", f"ranking_key={cohere.DEFAULT_KEY}",
            f"--dbname={dsn}", stdin=script, stderr=subprocess.STDOUT,
        )  # fmt: skip


def main() -> int:
    with (
        AzureMLSimulator(keys=(KEY,)) as azureml,
        server_from_environment() as server,
        server.database("azure_ai_demo") as dsn,
    ):
        result = run_demo(server, dsn, azureml)
    print(result.stdout)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
