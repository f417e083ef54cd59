"""An Azure ML scoring script (entry script) for azmlinfsrv, Azure ML's inference HTTP server.

It serves the taxi-fare example of Azure Stream Analytics' "Integrate Azure Stream Analytics with
Azure Machine Learning" article: one input named ``data``, a DataFrame in records form with the
columns vendorid, weekday, pickuphour, passenger and distance, and one number per row out. The
``inference-schema`` decorators give the server its samples, from which it generates the swagger
(GET /swagger.json) and parses and type-checks each request (POST /score).

The model is a fixed formula, so tests can compute the expected fares themselves.
"""

import numpy as np
import pandas as pd
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType
from inference_schema.parameter_types.pandas_parameter_type import PandasParameterType
from inference_schema.schema_decorators import input_schema, output_schema

# The article's sample rows, typed: the article sends every value as a JSON string ("12", "5.8"),
# which the server converts to these column types before run() sees them.
SAMPLE_INPUT = pd.DataFrame(
    {
        "vendorid": [1, 2],
        "weekday": ["Mon", "Tue"],
        "pickuphour": [12, 10],
        "passenger": [1, 2],
        "distance": [5.8, 10.0],
    }
)
SAMPLE_OUTPUT = np.array([17.5, 28.75])

WEEKEND = ("Sat", "Sun")


def init():
    """Nothing to load: the model is the formula in fare()."""


def fare(vendorid, weekday, pickuphour, passenger, distance):
    """Flag fall 3.00, 2.50 a mile, 0.50 for each extra passenger, 1.00 on weekends, 1.00 at night
    (20:00 to 05:59), 0.25 more from vendor 2."""
    return (
        3.0
        + 2.5 * distance
        + 0.5 * (passenger - 1)
        + np.where(np.isin(weekday, WEEKEND), 1.0, 0.0)
        + np.where((pickuphour >= 20) | (pickuphour < 6), 1.0, 0.0)
        + np.where(vendorid == 2, 0.25, 0.0)
    )


@input_schema("data", PandasParameterType(SAMPLE_INPUT))
@output_schema(NumpyParameterType(SAMPLE_OUTPUT))
def run(data: pd.DataFrame):
    fares = fare(
        data["vendorid"].to_numpy(),
        data["weekday"].to_numpy(),
        data["pickuphour"].to_numpy(),
        data["passenger"].to_numpy(),
        data["distance"].to_numpy(),
    )
    return [round(float(x), 4) for x in fares]
