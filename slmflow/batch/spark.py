"""Batch scoring of chat requests on Spark with `mlflow.pyfunc.spark_udf`.

Requests are rows (JSON Lines or Parquet): `messages` plus any generation fields, as in a request to
the served model. Each row reaches the model as that JSON object and is validated by the model itself.
The model runs inside Spark's Python workers, loaded once per worker, and sees the rows in Arrow
batches, so its own batching is used. Every row gets a result: an answer with finish_reason and
usage, or the error that row caused; the job goes on.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow

from slmflow.batch.row_model import NO_ERROR, REQUEST_COLUMN, WRAPPED_ARTIFACT
from slmflow.errors import PipelineError
from slmflow.policy import SAMPLING_FIELDS

ROW_MODEL_CODE = Path(__file__).resolve().parent / "row_model.py"
RESULT_TYPE = (
    "answer string, finish_reason string, "
    "usage struct<prompt_tokens: long, completion_tokens: long, total_tokens: long>, error string"
)
JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
# The columns of a Parquet input that make up a request; the others are carried to the output.
REQUEST_FIELDS = ("messages", "prompt", *SAMPLING_FIELDS)
ID_COLUMN = "id"  # a JSON line's `id`, carried to the output
INPUT_ROW_COLUMN = "input_row"  # increases with input order; the output is not sorted


class BatchInputError(PipelineError):
    """The job cannot start (unknown input format, no request column, a bad generation default)."""


@dataclass(frozen=True)
class BatchSummary:
    rows: int
    answered: int
    errors: int
    seconds: float
    output: str

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows_per_second": self.rows_per_second}


def spark_session(master: str = "local[2]", app_name: str = "slmflow-batch-score", **conf: str):
    """A Spark session on any master URL (local[N], spark://, yarn, k8s://)."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(master).appName(app_name).config("spark.ui.showConsoleProgress", "false")
    for key, value in conf.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def generation_defaults(values: Mapping[str, str | None]) -> dict[str, Any]:
    """The job's generation defaults (command-line strings; empty: the model's own), checked by the
    request model before any row is read."""
    from pydantic import ValidationError

    from slmflow.policy import SamplingSettings

    defaults = {name: _number(text) for name, text in values.items() if text not in (None, "")}
    try:
        SamplingSettings.model_validate(defaults)
    except ValidationError as error:
        problem = error.errors()[0]
        field = ".".join(str(part) for part in problem["loc"])
        raise BatchInputError(f"generation default '{field}': {problem['msg']}, got {problem['input']!r}") from None
    return defaults


def _number(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # refused by the request model with the field's name


def read_requests(spark, path: str):
    """A DataFrame with one JSON request per row in `request` (plus `id`, or a Parquet input's other columns)."""
    from pyspark.sql import functions as F

    lowered = path.lower().rstrip("/")
    if lowered.endswith(JSON_SUFFIXES):
        lines = spark.read.text(path).withColumnRenamed("value", REQUEST_COLUMN)
        lines = lines.filter(F.trim(F.col(REQUEST_COLUMN)) != "")
        return lines.withColumn(ID_COLUMN, F.get_json_object(REQUEST_COLUMN, f"$.{ID_COLUMN}"))
    if lowered.endswith(".parquet") or "://" in path or Path(path).is_dir():  # a remote folder is Parquet too
        frame = spark.read.parquet(path)
        fields = [name for name in REQUEST_FIELDS if name in frame.columns]
        if not {"messages", "prompt"} & set(fields):
            raise BatchInputError(f"input {path} has no 'messages' column (columns: {', '.join(frame.columns)})")
        return frame.withColumn(REQUEST_COLUMN, F.to_json(F.struct(*fields))).drop(*fields)
    raise BatchInputError(
        f"input {path}: expected JSON Lines ({', '.join(JSON_SUFFIXES)}) or Parquet (.parquet or a folder); "
        "no such folder here"
    )


def save_row_model(model_uri: str, folder: Path, defaults: Mapping[str, Any]) -> str:
    """Save the per-row wrapper around the chat model (a copy of it inside) for spark_udf to ship."""
    path = folder / "row-results-model"
    mlflow.pyfunc.save_model(
        path=str(path),
        python_model=str(ROW_MODEL_CODE),
        artifacts={WRAPPED_ARTIFACT: model_uri},
        model_config={"params": dict(defaults)},
    )
    return str(path)


def score(
    spark,
    model_uri: str,
    input_path: str,
    output_path: str,
    defaults: Mapping[str, Any] | None = None,
    batch_size: int = 8,
) -> BatchSummary:
    """Score every request row into Parquet at output_path; return counts and throughput."""
    from pyspark.sql import functions as F

    if batch_size < 1:
        raise BatchInputError(f"batch_size must be >= 1, got {batch_size}")
    if "://" not in output_path and Path(output_path).exists():
        raise BatchInputError(f"output {output_path} already exists: give a new folder (nothing is overwritten)")
    requests = read_requests(spark, input_path).withColumn(INPUT_ROW_COLUMN, F.monotonically_increasing_id())
    # One partition per core: each Python worker loads the model once and scores its share.
    requests = requests.repartition(spark.sparkContext.defaultParallelism)
    # Rows reach the model's predict in Arrow batches of this size: its own batching works on them.
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_size))
    with tempfile.TemporaryDirectory(prefix="slmflow-batch-") as folder:
        row_model = mlflow.pyfunc.spark_udf(
            spark, save_row_model(model_uri, Path(folder), defaults or {}), result_type=RESULT_TYPE, env_manager="local"
        )
        output = _flatten(requests.withColumn("result", row_model(F.struct(REQUEST_COLUMN))))
        started = time.perf_counter()
        output.write.parquet(output_path)
        seconds = time.perf_counter() - started
    written = spark.read.parquet(output_path)
    counts = written.agg(F.count(F.lit(1)).alias("rows"), F.count("error").alias("errors")).first()
    return BatchSummary(
        rows=counts["rows"],
        answered=counts["rows"] - counts["errors"],
        errors=counts["errors"],
        seconds=seconds,
        output=output_path,
    )


def _flatten(frame):
    """Result fields as columns; an errored row has only its error, an answered row no error."""
    from pyspark.sql import functions as F

    failed = F.col("result.error") != F.lit(NO_ERROR)
    return frame.select(
        "*",
        F.when(~failed, F.col("result.answer")).alias("answer"),
        F.when(~failed, F.col("result.finish_reason")).alias("finish_reason"),
        F.when(~failed, F.col("result.usage")).alias("usage"),
        F.when(failed, F.col("result.error")).alias("error"),
    ).drop("result")
