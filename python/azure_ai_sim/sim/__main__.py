"""python -m azure_ai_sim.sim SERVICE [options]: run one simulator until SIGTERM or SIGINT.

It prints one line, "<service> simulator listening on http://<host>:<port>", once it accepts
connections, so a caller passing --port 0 reads the port from it.
"""

from __future__ import annotations

import argparse
import inspect
import sys

from azure_ai_sim.sim.azureml import AzureMLSimulator
from azure_ai_sim.sim.bedrock import BedrockSimulator
from azure_ai_sim.sim.cohere import CohereSimulator
from azure_ai_sim.sim.comprehend import ComprehendSimulator
from azure_ai_sim.sim.openai import OpenAISimulator
from azure_ai_sim.sim.sagemaker import SageMakerSimulator
from azure_ai_sim.sim.server import Simulator
from azure_ai_sim.sim.sts import StsSimulator

SIMULATORS: list[type[Simulator]] = [
    AzureMLSimulator,
    SageMakerSimulator,
    ComprehendSimulator,
    BedrockSimulator,
    StsSimulator,
    OpenAISimulator,
    CohereSimulator,
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m azure_ai_sim.sim", description=__doc__)
    services = parser.add_subparsers(dest="service", metavar="SERVICE", required=True)
    for simulator in SIMULATORS:
        summary = inspect.getdoc(simulator) or ""
        command = services.add_parser(simulator.name, help=summary.partition("\n")[0])
        simulator.add_arguments(command)
        command.set_defaults(simulator=simulator)
    args = parser.parse_args(argv)
    return args.simulator.from_args(args).serve_until_signal()


if __name__ == "__main__":
    sys.exit(main())
