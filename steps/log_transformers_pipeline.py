"""Log the checkpoint as the `transformers-chat` text-generation pipeline (task llm/v1/chat)."""

from slmflow.fetch.handoff import local_folder
from slmflow.flavors.transformers_chat import log_transformers_chat_model
from slmflow.pipeline.contract import STEPS
from slmflow.pipeline.step import run_step, set_outputs

STEP = STEPS["log_transformers_pipeline"]


def log(args, config, settings) -> None:
    checkpoint_dir = local_folder(
        args.checkpoint_uri, settings, marker="config.json", allow_patterns=config.source.allow_patterns
    )
    set_outputs(STEP, model_uri=log_transformers_chat_model(checkpoint_dir, config.source, config.generation))


if __name__ == "__main__":
    run_step(STEP, log)
