"""Log the ONNX GenAI folder as the `onnx-chat` pyfunc chat model (`onnx-chat-<variant>` for one of several)."""

from slmflow import tags
from slmflow.fetch.handoff import local_folder
from slmflow.flavors.onnx_chat import log_onnx_chat_model
from slmflow.pipeline.contract import STEPS
from slmflow.pipeline.step import run_step, set_outputs

STEP = STEPS["log_onnx_wrapper"]


def log(args, config, settings) -> None:
    onnx_dir = local_folder(args.onnx_uri, settings, marker="genai_config.json")
    name = tags.onnx_model_name(args.variant)
    set_outputs(STEP, model_uri=log_onnx_chat_model(onnx_dir, config.generation, config.runtime, name))


if __name__ == "__main__":
    run_step(STEP, log)
