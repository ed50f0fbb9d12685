"""Score a table of chat requests with a chat model on Spark; write Parquet, log the counts."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence

import mlflow

from slmflow import tags
from slmflow.batch.spark import generation_defaults, score, spark_session
from slmflow.errors import PipelineError
from slmflow.pipeline.contract import GENERATION_FIELDS, STEPS
from slmflow.pipeline.step import set_outputs

STEP = STEPS["batch_score"]


def undo_shell_quoting(argument: str) -> str:
    """MLflow's Kubernetes backend shell-quotes every argument of an exec-form command (no shell runs):
    `local[2]` arrives as `'local[2]'` and an empty value as `''`. No real value here is so quoted."""
    if len(argument) >= 2 and argument[0] == argument[-1] == "'":
        return "".join(shlex.split(argument))
    return argument


def parse_arguments(argv: Sequence[str] | None = None):
    argv = sys.argv[1:] if argv is None else argv
    return STEP.argument_parser().parse_args([undo_shell_quoting(argument) for argument in argv])


def batch_score(args) -> None:
    defaults = generation_defaults({name: getattr(args, name) for name in GENERATION_FIELDS})
    spark = spark_session(args.spark_master)
    summary = score(spark, args.model_uri, args.input, args.output, defaults, int(args.batch_size))
    mlflow.log_metrics(
        {
            "rows": summary.rows,
            "answered": summary.answered,
            "errors": summary.errors,
            "rows_per_second": summary.rows_per_second,
            "seconds": summary.seconds,
        }
    )
    mlflow.log_dict(summary.as_dict(), "batch_score/summary.json")
    set_outputs(STEP, batch_output=summary.output)
    rate = f"{summary.rows_per_second:.2f} rows/s"
    print(f"scored {summary.rows} rows ({summary.errors} errors) at {rate} into {summary.output}")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_arguments(argv)
    with mlflow.start_run():
        try:
            batch_score(args)
        except PipelineError as error:  # a cause the user can fix: one line, and the run FAILED with it
            mlflow.set_tag(tags.ERROR, f"{type(error).__name__}: {error}"[:4000])
            mlflow.end_run(status="FAILED")
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(1) from None


if __name__ == "__main__":
    main()
