"""The models behind the simulated deployments, predicted in plain Python.

A real deployment runs a scoring script around a trained model. Here a model is an intercept
and coefficients, or a published tariff, so a prediction costs microseconds and no numpy or
scikit-learn call per request; a model that must be trained is trained once per process, on
first use.
"""

from __future__ import annotations

import math
import operator
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Fit = Callable[[], "tuple[float, Sequence[float]]"]


class ModelError(Exception):
    """The model rejected its input; Azure ML answers 424 when the scoring script raises."""


class LinearModel:
    def __init__(self, features: Sequence[str], fit: Fit):
        self.features = tuple(features)
        self._fit = fit
        self._params: tuple[float, tuple[float, ...]] | None = None
        self._lock = threading.Lock()

    def params(self) -> tuple[float, tuple[float, ...]]:
        """(intercept, coefficients), fitted by the first caller while the others wait."""
        if self._params is None:
            with self._lock:
                if self._params is None:
                    intercept, coefficients = self._fit()
                    if len(coefficients) != len(self.features):
                        raise RuntimeError("the fit does not match the model's features")
                    self._params = float(intercept), tuple(map(float, coefficients))
        return self._params

    def predict(self, rows: Sequence[Sequence[float]]) -> list[float]:
        """One prediction per row; the errors read like the ones a scoring script returns."""
        intercept, coefficients = self.params()
        width = len(coefficients)
        if not rows:
            raise ModelError("expected at least one row, got none")
        predictions = []
        for row in rows:
            if len(row) != width:
                raise ModelError(f"expected {width} features per row, got {len(row)}")
            try:
                finite = all(map(math.isfinite, row))
                value = intercept + sum(map(operator.mul, coefficients, row))
            except OverflowError:  # an integer too large for a float
                raise ModelError("input contains a number too large for a float") from None
            if not finite:
                raise ModelError("input contains NaN or infinity")
            if not math.isfinite(value):
                raise ModelError("the prediction overflowed")
            predictions.append(value)
        return predictions


HOUSING_FEATURES = (
    "MedInc",
    "HouseAge",
    "AveRooms",
    "AveBedrms",
    "Population",
    "AveOccup",
    "Latitude",
    "Longitude",
)
# Ordinary least squares on the full California housing dataset (20,640 rows), target in
# units of $100,000, as published in scikit-learn tutorials. The dataset is downloaded on
# demand by fetch_california_housing, so it is not available offline; the fit is.
HOUSING_INTERCEPT = -36.94192020718441
HOUSING_COEFFICIENTS = (
    4.36693293e-01,
    9.43577803e-03,
    -1.07322041e-01,
    6.45065694e-01,
    -3.97638942e-06,
    -3.78654265e-03,
    -4.21314378e-01,
    -4.34513755e-01,
)

HOUSING = LinearModel(HOUSING_FEATURES, lambda: (HOUSING_INTERCEPT, HOUSING_COEFFICIENTS))


def _fit_diabetes() -> tuple[float, Sequence[float]]:
    """Linear regression on all 442 rows of the diabetes dataset bundled with scikit-learn.

    Its features are already mean-centred and scaled, which is why the rows in Azure's
    "consume a web service" example look like 0.0199132141783263.
    """
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import LinearRegression

    data = load_diabetes()
    if tuple(data.feature_names) != DIABETES_FEATURES:
        raise RuntimeError(f"unexpected diabetes features {data.feature_names}")
    fit = LinearRegression().fit(data.data, data.target)
    return fit.intercept_, fit.coef_


DIABETES_FEATURES = ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")
DIABETES = LinearModel(DIABETES_FEATURES, _fit_diabetes)


WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


@dataclass(frozen=True)
class TaxiTrip:
    """A row of Azure Stream Analytics' Machine Learning example: a New York taxi trip."""

    vendorid: str
    weekday: int  # an index in WEEKDAYS
    pickuphour: int
    passenger: int
    distance: float  # miles


def taxi_fare(trip: TaxiTrip) -> float:
    """The metered fare of a New York yellow cab under the 2012-2022 TLC tariff.

    Stream Analytics' example model was trained on such trips; the tariff itself makes a
    prediction anyone can check by hand: $2.50 on entry, $2.50 a mile, the 50¢ MTA tax, 50¢
    from 8 pm to 6 am, and $1 on weekdays from 4 pm to 8 pm. Vendor and passengers do not
    change a metered fare.
    """
    fare = 2.50 + 2.50 * trip.distance + 0.50
    if trip.pickuphour >= 20 or trip.pickuphour < 6:
        fare += 0.50
    elif trip.pickuphour >= 16 and trip.weekday < 5:
        fare += 1.00
    return round(fare, 2)
