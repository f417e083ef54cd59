"""azure_ai_sim: the Python side of the azure_ai, azure_local_ai, aws_commons and aws_ml extensions.

PL/Python bodies are a few lines that call into this package; see boot.py for how a
backend finds it and pg.py for the only module that talks to PostgreSQL.
"""

import os

__version__ = "0.2.0"

# Every backend imports this package; without these, numpy/OpenBLAS and tokenizers would
# each start a thread pool per backend. They must be set before those libraries load.
os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
