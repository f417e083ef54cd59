"""Rows of the docs: Azure's "consume a web service" (scikit-learn's diabetes features), and
Azure Stream Analytics' "Integrate Azure Stream Analytics with Azure Machine Learning"
(taxi trips, every value a string, as Stream Analytics sends them)."""

DIABETES_ROWS = [
    [0.0199132141783263, 0.0506801187398187, 0.104808689473925, 0.0700725447072635,
     -0.0359677812752396, -0.0266789028311707, -0.0249926566315915, -0.00259226199818282,
     0.00371173823343597, 0.0403433716478807],
    [-0.0127796318808497, -0.044641636506989, 0.0606183944448076, 0.0528581912385822,
     0.0479653430750293, 0.0293746718291555, -0.0176293810234174, 0.0343088588777263,
     0.0702112981933102, 0.00720651632920303],
]  # fmt: skip

TAXI_TRIPS = [
    {"vendorid": "1", "weekday": "Mon", "pickuphour": "12", "passenger": "1", "distance": "5.8"},
    {"vendorid": "2", "weekday": "Tue", "pickuphour": "10", "passenger": "2", "distance": "10"},
]
