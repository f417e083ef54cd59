"""Local simulators of the cloud services the extensions call, for tests, demo and benchmarks.

Each runs a real HTTP/1.1 server on loopback, in-process (AzureMLSimulator(...).start()
returns its base URL) or as a command (python -m azure_ai_sim.sim azureml --port 0). See
server.py for the fault-injection and request-recording control API they share.
"""

from azure_ai_sim.sim.azureml import AzureMLSimulator
from azure_ai_sim.sim.bedrock import BedrockSimulator
from azure_ai_sim.sim.cohere import CohereSimulator
from azure_ai_sim.sim.comprehend import ComprehendSimulator
from azure_ai_sim.sim.openai import OpenAISimulator
from azure_ai_sim.sim.sagemaker import SageMakerSimulator
from azure_ai_sim.sim.server import Fault, Simulator
from azure_ai_sim.sim.sts import StsSimulator

__all__ = [
    "AzureMLSimulator",
    "BedrockSimulator",
    "CohereSimulator",
    "ComprehendSimulator",
    "Fault",
    "OpenAISimulator",
    "SageMakerSimulator",
    "Simulator",
    "StsSimulator",
]
