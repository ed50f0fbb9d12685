"""Batch scoring of chat requests on Spark with `mlflow.pyfunc.spark_udf`.

Requests are rows (JSON Lines or Parquet): `messages` plus any of the model's generation fields,
typed by the model's own input signature. The model runs inside Spark's Python workers, loaded once
per worker, and sees the rows in Arrow batches, so its own batching is used. Every row gets a result:
an answer with finish_reason and usage, or the error that row caused; the job goes on.
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
from mlflow.types.schema import Array, DataType, Object

from slmflow.batch.row_model import NO_ERROR, WRAPPED_ARTIFACT
from slmflow.errors import PipelineError

ROW_MODEL_CODE = Path(__file__).resolve().parent / "row_model.py"
RESULT_TYPE = (
    "answer string, finish_reason string, "
    "usage struct<prompt_tokens: long, completion_tokens: long, total_tokens: long>, error string"
)
RESULT_COLUMNS = ("answer", "finish_reason", "usage", "error")
JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
ID_COLUMN = "id"  # carried from JSON Lines input to the output; Parquet input keeps all its columns
INPUT_ROW_COLUMN = "input_row"  # increases with input order; the output is not sorted
CORRUPT_COLUMN = "_corrupt_record"
ERROR_TEXT_LIMIT = 200


class BatchInputError(PipelineError):
    """The input cannot be scored at all (missing file, unknown format, a column of the wrong type)."""


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


def spark_type(dtype: Any):
    """The Spark type of an MLflow signature type (columns, arrays, objects)."""
    from pyspark.sql.types import ArrayType, StructField, StructType

    if isinstance(dtype, Array):
        return ArrayType(spark_type(dtype.dtype))
    if isinstance(dtype, Object):
        return StructType([StructField(prop.name, spark_type(prop.dtype)) for prop in dtype.properties])
    if isinstance(dtype, DataType):
        return dtype.to_spark()
    raise BatchInputError(f"the model's signature has a type Spark scoring does not handle: {dtype}")


def request_schema(model_uri: str):
    """The request columns and their Spark types, from the model's input signature."""
    from pyspark.sql.types import StructField, StructType

    signature = mlflow.models.get_model_info(model_uri).signature
    if signature is None or signature.inputs is None:
        raise BatchInputError(f"{model_uri} has no input signature: the request columns are unknown")
    return StructType([StructField(spec.name, spark_type(spec.type)) for spec in signature.inputs.inputs])


def read_requests(spark, path: str, schema):
    """Requests as a DataFrame of the schema's columns (plus `id`, or every column of a Parquet input)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType, StructField, StructType

    if path.lower().endswith(JSON_SUFFIXES):
        if not Path(path).exists() and "://" not in path:
            raise BatchInputError(f"input {path} does not exist")
        json_schema = StructType(
            [*schema.fields, StructField(ID_COLUMN, StringType()), StructField(CORRUPT_COLUMN, StringType())]
        )
        frame = spark.read.schema(json_schema).option("mode", "PERMISSIVE").json(path)
        # Spark refuses a query on the corrupt-record column alone unless the parsed rows are cached.
        return frame.cache()
    if path.lower().endswith(".parquet") or Path(path).is_dir():
        frame = spark.read.parquet(path)
        _check_columns(frame, schema, path)
        return frame.withColumn(CORRUPT_COLUMN, F.lit(None).cast("string"))
    raise BatchInputError(
        f"input {path}: expected JSON Lines ({', '.join(JSON_SUFFIXES)}) or Parquet (.parquet or a folder)"
    )


def _check_columns(frame, schema, path: str) -> None:
    present = {field.name: field.dataType for field in frame.schema.fields}
    if not {"messages", "prompt"} & present.keys():
        raise BatchInputError(f"input {path} has no 'messages' column")
    for field in schema.fields:
        if field.name in present and present[field.name] != field.dataType:
            raise BatchInputError(
                f"input {path}: column '{field.name}' is {present[field.name].simpleString()}, "
                f"the model expects {field.dataType.simpleString()}"
            )


def with_defaults(frame, schema, defaults: dict[str, Any]):
    """Fill the generation fields a row leaves empty with the job's defaults (a row's own value wins)."""
    from pyspark.sql import functions as F

    types = {field.name: field.dataType for field in schema.fields}
    for name, value in defaults.items():
        if name not in types:
            raise BatchInputError(f"'{name}' is not a request field of this model ({', '.join(types)})")
        default = F.lit(value).cast(types[name])
        frame = frame.withColumn(name, F.coalesce(F.col(name), default) if name in frame.columns else default)
    return frame


def generation_defaults(values: Mapping[str, str | None]) -> dict[str, Any]:
    """The job's generation defaults (command-line strings; empty: the model's own), checked by the
    request model before any row is read."""
    from pydantic import ValidationError

    from slmflow.requests import SamplingSettings

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


def save_row_model(model_uri: str, folder: Path) -> str:
    """Save the per-row wrapper around the chat model (a copy of it inside) for spark_udf to ship."""
    path = folder / "row-results-model"
    mlflow.pyfunc.save_model(
        path=str(path),
        python_model=str(ROW_MODEL_CODE),
        artifacts={WRAPPED_ARTIFACT: model_uri},
    )
    return str(path)


def score(
    spark,
    model_uri: str,
    input_path: str,
    output_path: str,
    defaults: dict[str, Any] | None = None,
    batch_size: int = 8,
) -> BatchSummary:
    """Score every request row into Parquet at output_path; return counts and throughput."""
    from pyspark.sql import functions as F

    if batch_size < 1:
        raise BatchInputError(f"batch_size must be >= 1, got {batch_size}")
    schema = request_schema(model_uri)
    requests = read_requests(spark, input_path, schema).withColumn(INPUT_ROW_COLUMN, F.monotonically_increasing_id())
    requests = with_defaults(requests, schema, defaults or {})
    request_columns = [field.name for field in schema.fields if field.name in requests.columns]
    # Rows reach the model's predict in Arrow batches of this size: its own batching over them.
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_size))
    with tempfile.TemporaryDirectory(prefix="slmflow-batch-") as folder:
        row_model = mlflow.pyfunc.spark_udf(
            spark, save_row_model(model_uri, Path(folder)), result_type=RESULT_TYPE, env_manager="local"
        )
        good = requests.filter(F.col(CORRUPT_COLUMN).isNull())
        # One partition per core: each Python worker loads the model once and scores its share.
        good = good.repartition(spark.sparkContext.defaultParallelism)
        scored = good.withColumn("result", row_model(F.struct(*request_columns)))
        malformed = requests.filter(F.col(CORRUPT_COLUMN).isNotNull()).withColumn("result", _malformed_result())
        output = _flatten(scored.unionByName(malformed)).drop(CORRUPT_COLUMN)
        started = time.perf_counter()
        output.write.parquet(output_path)
        seconds = time.perf_counter() - started
    written = spark.read.parquet(output_path)
    counts = written.agg(F.count(F.lit(1)).alias("rows"), F.count("error").alias("errors")).first()
    requests.unpersist()
    return BatchSummary(
        rows=counts["rows"],
        answered=counts["rows"] - counts["errors"],
        errors=counts["errors"],
        seconds=seconds,
        output=output_path,
    )


def _malformed_result():
    """The result of a JSON line Spark could not parse into the request schema."""
    from pyspark.sql import functions as F

    message = F.concat(
        F.lit("malformed JSON or a field of the wrong type: "), F.substring(F.col(CORRUPT_COLUMN), 1, ERROR_TEXT_LIMIT)
    )
    return F.struct(
        F.lit(None).cast("string").alias("answer"),
        F.lit(None).cast("string").alias("finish_reason"),
        F.lit(None).cast("struct<prompt_tokens: long, completion_tokens: long, total_tokens: long>").alias("usage"),
        message.alias("error"),
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
