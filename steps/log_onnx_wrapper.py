"""Log the ONNX GenAI folder as the `onnx-chat` pyfunc chat model."""

from pathlib import Path

from slmflow.flavors import log_onnx_chat_model
from slmflow.pipeline.runner import set_outputs
from slmflow.pipeline.step import run_step


def log(args, config, settings) -> None:
    set_outputs(model_uri=log_onnx_chat_model(Path(args.onnx_dir), config.generation, config.runtime))


if __name__ == "__main__":
    run_step(__doc__, log, lambda parser: parser.add_argument("--onnx-dir", required=True))
