"""The CSV record SageMaker gets, and how its answer comes back, without a database."""

import pytest

from azure_ai_sim.aws_ml import csv_record, sagemaker_output


@pytest.mark.parametrize(
    ("fields", "record"),
    [
        (["1", "2024-01-01", "2.5"], "1,2024-01-01,2.5\n"),
        (["text", None], "text,\n"),
        ([None, None], ",\n"),
        (['say "hi"', "a,b", "two\nlines", "t"], '"say ""hi""","a,b","two\nlines",t\n'),
        (["1.0", "2.0"], "1.0,2.0\n"),
        ([], "\n"),
        ([None], "\n"),
        (["a\rb", "x"], '"a\rb",x\n'),
    ],
)
def test_csv_record(fields, record):
    assert csv_record(fields) == record


@pytest.mark.parametrize(
    ("body", "output"),
    [
        ("42", "42"),
        ("0.75", "0.75"),
        ("12,34", '("12","34")'),  # casts to a composite type of two fields
        ('C:\\dir,"say ""x"""', '("C:\\\\dir","say ""x""")'),
        ("1\n2", "1\n2"),
    ],
)
def test_sagemaker_output(body, output):
    assert sagemaker_output(body) == output
