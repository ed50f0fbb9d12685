"""Log the checkpoint as the `transformers-chat` text-generation pipeline (task llm/v1/chat)."""

from pathlib import Path

from slmflow.flavors import log_transformers_chat_model
from slmflow.pipeline.runner import set_outputs
from slmflow.pipeline.step import run_step


def log(args, config, settings) -> None:
    set_outputs(model_uri=log_transformers_chat_model(Path(args.checkpoint_dir), config.source, config.generation))


if __name__ == "__main__":
    run_step(__doc__, log, lambda parser: parser.add_argument("--checkpoint-dir", required=True))
