"""Register the better evaluated model behind the configured gates; move the `champion` alias to it."""

import mlflow

from slmflow import tags
from slmflow.errors import ConfigError
from slmflow.pipeline.contract import STEPS
from slmflow.pipeline.step import run_step, set_outputs
from slmflow.registry.lineage import (
    TrainingFacts,
    registration_description,
    registration_identity,
    registration_tags,
    served_code_hash,
)
from slmflow.registry.registrar import Registrar, evaluation_from_run
from slmflow.registry.rules import choose_candidate

STEP = STEPS["register"]


def register(args, config, settings) -> None:
    client = mlflow.MlflowClient()
    evaluation = evaluation_from_run(client.get_run(args.evaluate_run_id), config.evaluation.confidence)
    if (config.training is None) != (args.training_run_id == ""):
        raise ConfigError("training_run_id: name the finetune run exactly when the config has a training section")
    training = TrainingFacts.from_run(client.get_run(args.training_run_id)) if args.training_run_id else None
    candidate = choose_candidate(evaluation.candidates, config.registry.selection, evaluation.accuracy_gap)
    git_commit = client.get_run(mlflow.active_run().info.run_id).data.tags.get(tags.GIT_COMMIT, "")
    mlflow.log_params({"candidate_flavor": candidate.flavor, "candidate_model_uri": candidate.model_uri})
    require_base = config.training is not None and config.training.require_improvement_over_base
    result = Registrar(config.registry, client, require_improvement_over_base=require_base).register(
        candidate,
        registration_identity(
            config, args.source_revision, served_code_hash(candidate.flavor), training, candidate.flavor
        ),
        registration_tags(config, candidate, args.evaluate_run_id, git_commit, training),
        registration_description(config, evaluation, args.source_revision, training),
        evaluation,
    )
    mlflow.set_tags({"registered_created": str(result.created).lower(), "promoted": str(result.promoted).lower()})
    set_outputs(STEP, registered_model=config.registry.model_name, registered_version=result.version.version)
    state = "registered and promoted to champion" if result.created else "already registered, nothing new"
    print(f"{config.registry.model_name} version {result.version.version}: {state}", flush=True)


if __name__ == "__main__":
    run_step(STEP, register)
