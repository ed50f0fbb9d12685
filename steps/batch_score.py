"""Score a table of chat requests with a logged chat model on Spark; write Parquet, log the counts."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

import mlflow

from slmflow.batch.spark import score, spark_session
from slmflow.errors import PipelineError
from slmflow.step import ERROR_TAG

GENERATION_DEFAULTS = {"max_tokens": int, "temperature": float, "top_p": float, "top_k": int, "seed": int}


def undo_shell_quoting(argument: str) -> str:
    """MLflow's Kubernetes backend shell-quotes every argument of an exec-form command (no shell runs):
    `local[2]` arrives as `'local[2]'` and an empty value as `''`. No real value here is so quoted."""
    if len(argument) >= 2 and argument[0] == argument[-1] == "'":
        return "".join(shlex.split(argument))
    return argument


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--input", required=True, help="JSON Lines (.jsonl) or Parquet (.parquet or a folder)")
    parser.add_argument("--output", required=True, help="Parquet folder to create")
    parser.add_argument("--spark-master", default="local[2]")
    parser.add_argument("--batch-size", type=int, default=8)
    for name, kind in GENERATION_DEFAULTS.items():
        # "" leaves the field to the model's own default; a row's own value always wins.
        parser.add_argument(f"--{name.replace('_', '-')}", type=lambda text, kind=kind: kind(text) if text else None)
    return parser.parse_args([undo_shell_quoting(argument) for argument in (sys.argv[1:] if argv is None else argv)])


def batch_score(args: argparse.Namespace) -> None:
    defaults = {name: getattr(args, name) for name in GENERATION_DEFAULTS if getattr(args, name) is not None}
    spark = spark_session(args.spark_master)
    summary = score(spark, args.model_uri, args.input, args.output, defaults, args.batch_size)
    mlflow.log_metrics(
        {
            "rows": summary.rows,
            "answered": summary.answered,
            "errors": summary.errors,
            "rows_per_second": summary.rows_per_second,
            "seconds": summary.seconds,
        }
    )
    mlflow.set_tag("slmflow.output.batch_output", summary.output)
    mlflow.log_dict(summary.as_dict(), "batch_score/summary.json")
    rate = f"{summary.rows_per_second:.2f} rows/s"
    print(f"scored {summary.rows} rows ({summary.errors} errors) at {rate} into {summary.output}")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_arguments(argv)
    with mlflow.start_run():
        try:
            batch_score(args)
        except PipelineError as error:  # a cause the user can fix: one line, the run FAILED with it
            mlflow.set_tag(ERROR_TAG, f"{type(error).__name__}: {error}"[:4000])
            mlflow.end_run(status="FAILED")
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(1) from None


if __name__ == "__main__":
    main()
