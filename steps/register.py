"""Register the better evaluated model behind the configured gates; move the `champion` alias to it."""

import mlflow

from slmflow.pipeline import GIT_COMMIT_TAG, set_outputs
from slmflow.registry import Registrar, candidates_from_evaluation, choose_candidate, explain_choice
from slmflow.step import run_step


def add_arguments(parser) -> None:
    parser.add_argument("--evaluate-run-id", required=True)
    parser.add_argument("--source-revision", required=True)


def register(args, config, settings) -> None:
    client = mlflow.MlflowClient()
    evaluation = client.get_run(args.evaluate_run_id)
    candidates = candidates_from_evaluation(evaluation)
    candidate = choose_candidate(candidates, config.registry.selection)
    own_run = client.get_run(mlflow.active_run().info.run_id)
    identity = {
        "source_revision": args.source_revision,
        "config_hash": config.config_hash(),
        "git_commit": own_run.data.tags.get(GIT_COMMIT_TAG, ""),
    }
    tags = {"source": config.source.model, "evaluate_run_id": args.evaluate_run_id, "model_uri": candidate.model_uri}
    description = (
        f"{candidate.flavor} chat model from {config.source.model} at revision {args.source_revision}, "
        f"evaluated on {config.evaluation.eval_set.name} (evaluate run {args.evaluate_run_id}).\n\n"
        + explain_choice(candidates, config.registry.selection)
    )
    mlflow.log_params({"candidate_flavor": candidate.flavor, "candidate_model_uri": candidate.model_uri})
    result = Registrar(config.registry, client).register(candidate, identity, tags, description)
    mlflow.set_tags({"registered_created": str(result.created).lower(), "promoted": str(result.promoted).lower()})
    set_outputs(registered_model=config.registry.model_name, registered_version=result.version.version)
    state = "registered and promoted to champion" if result.created else "already registered, nothing new"
    print(f"{config.registry.model_name} version {result.version.version}: {state}", flush=True)


if __name__ == "__main__":
    run_step(__doc__, register, add_arguments)
