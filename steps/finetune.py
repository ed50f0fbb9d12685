"""Fine-tune the fetched checkpoint with LoRA, merge it and build its ONNX GenAI form; log both for later steps."""

import json
import os
import tempfile
from pathlib import Path

import mlflow

from slmflow import tags
from slmflow.digests import tree_digest
from slmflow.errors import ConfigError
from slmflow.fetch.handoff import local_folder, remember_folder
from slmflow.fetch.onnx_build import build_onnx
from slmflow.pipeline.contract import STEPS
from slmflow.pipeline.step import CACHE_KEY_ENV, run_step, set_outputs
from slmflow.training.dataset import load_configured_training_set, training_dataset
from slmflow.training.plots import plot_loss_curve
from slmflow.training.trainer import finetune
from slmflow.training.workdir import finetune_folder, prune, train_once

STEP = STEPS["finetune"]
HISTORY_METRICS = ("loss", "learning_rate", "grad_norm", "mean_token_accuracy", "entropy", "num_tokens")


def train(args, config, settings) -> None:
    training = config.training
    if training is None:
        raise ConfigError("training: the config has no training section, so there is nothing to fine-tune")
    training_set = load_configured_training_set(config)  # bad rows are refused before the base is even downloaded
    rows, digest = training_set.rows, training_set.digest
    base_dir = local_folder(
        args.checkpoint_uri, settings, marker="config.json", allow_patterns=config.source.allow_patterns
    )
    mlflow.log_input(training_dataset(training_set), context="training")
    mlflow.set_tags({tags.DATASET_DIGEST: digest, tags.BASE_REVISION: args.source_revision})
    run_id = mlflow.active_run().info.run_id
    # One folder per cache key (a step run alone, without main's key, gets its run's): the same key again
    # reuses the trained folder, and only the last few folders stay on this machine.
    folder = finetune_folder(settings.cache_dir, os.environ.get(CACHE_KEY_ENV) or f"run-{run_id}")
    result, reused = train_once(
        folder, lambda work_dir: finetune(training, base_dir, rows, work_dir, base_reference=args.checkpoint_uri)
    )
    mlflow.set_tag(tags.FINETUNE_REUSED, str(reused).lower())
    if reused:  # the Trainer's callback logged the history into the run that trained: this run logs it again
        for entry in result.history:
            logged = {k: float(entry[k]) for k in HISTORY_METRICS if isinstance(entry.get(k), int | float)}
            mlflow.log_metrics(logged, step=int(entry.get("step", 0)))
    for removed in prune(folder.parent, current=folder):
        print(f"removed an older fine-tune from the cache: {removed}", flush=True)

    checkpoint_content = tree_digest(result.checkpoint_dir)
    # Built inside the folder, so it goes with it: a fine-tuned model's weights are never another step's.
    # One variant: PipelineConfig refuses several with training.
    onnx_dir = build_onnx(result.checkpoint_dir, folder / "onnx", config.source.variants[0])
    mlflow.log_metrics(
        {
            "dataset_rows": len(rows),
            "train_rows": result.train_rows,
            "held_out_rows": result.held_out_rows,
            "steps": result.steps,
            "final_loss": result.final_loss,
            "train_seconds": result.train_seconds,
            "train_tokens": result.tokens,
            "tokens_per_second": result.tokens_per_second,
            "peak_rss_mb": result.peak_rss_mb,
            **({"held_out_loss": result.held_out_loss} if result.held_out_loss is not None else {}),
        }
    )
    with tempfile.TemporaryDirectory() as scratch:
        plot = Path(scratch) / "loss_curve.png"
        plot_loss_curve(result.history, result.held_out_loss, plot)
        mlflow.log_artifact(str(plot), "training")
    mlflow.log_text(json.dumps(result.history, indent=1), "training/log_history.json")
    mlflow.log_artifacts(str(result.adapter_dir), "adapter")
    checkpoint_uri, onnx_uri = f"runs:/{run_id}/checkpoint", f"runs:/{run_id}/onnx"
    mlflow.log_artifacts(str(result.checkpoint_dir), "checkpoint")
    mlflow.log_artifacts(str(onnx_dir), "onnx")
    remember_folder(checkpoint_uri, result.checkpoint_dir, settings)
    remember_folder(onnx_uri, onnx_dir, settings)
    set_outputs(
        STEP,
        contents={"checkpoint_uri": checkpoint_content, "onnx_uri": tree_digest(onnx_dir)},
        checkpoint_uri=checkpoint_uri,
        onnx_uri=onnx_uri,
        # The weights evaluated and registered from here on are the fine-tuned ones: known by their content.
        source_revision=f"finetuned:{checkpoint_content}",
    )
    print(
        f"fine-tuned {result.train_rows} rows for {result.steps} steps in {result.train_seconds:.1f} s: "
        f"final loss {result.final_loss:.4f}, held-out loss {result.held_out_loss}, "
        f"{result.tokens_per_second:.0f} tokens/s, peak RSS {result.peak_rss_mb:.0f} MB",
        flush=True,
    )


if __name__ == "__main__":
    run_step(STEP, train)
