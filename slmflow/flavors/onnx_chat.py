"""Logging the `onnx-chat` flavor: the ONNX GenAI folder as a models-from-code pyfunc chat model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from mlflow.models import ModelSignature
from mlflow.types.llm import CHAT_MODEL_OUTPUT_SCHEMA
from mlflow.types.schema import AnyType, ColSpec, Object, ParamSchema, ParamSpec, Property, Schema

from slmflow import tags
from slmflow.chat.pyfunc import ONNX_ARTIFACT
from slmflow.chat.request import UNSUPPORTED_FIELDS
from slmflow.code import PACKAGE_DIR, module_file
from slmflow.config import GenerationConfig, RuntimeConfig
from slmflow.flavors.common import CHAT_EXAMPLE, pinned_requirements
from slmflow.policy import SAMPLING_FIELDS

ONNX_REQUIREMENTS = ("mlflow", "onnxruntime", "onnxruntime-genai")
# The models-from-code file MLflow runs to build the model (named as a module, so cache keys follow it).
ENTRY_MODULE = "slmflow.chat.pyfunc_entry"


# Request fields MLflow type-checks itself when they come as params (or at the top level of a chat body);
# MLflow drops params it has no spec for, so the scalar unsupported fields are declared too, to be refused.
PARAM_TYPES = {
    "max_tokens": "long",
    "max_completion_tokens": "long",
    "temperature": "double",
    "top_p": "double",
    "top_k": "long",
    "seed": "long",
    "min_tokens": "long",
    "n": "long",
    "stream": "boolean",
    "logprobs": "boolean",
    "top_logprobs": "long",
    "presence_penalty": "double",
    "frequency_penalty": "double",
}


# OpenAI's response_format as a param: `mlflow models serve` hands a chat body's top-level fields over as
# params. MLflow checks this shape; the request model checks the rest (the schema itself is of any type).
RESPONSE_FORMAT_PARAM = Object(
    [
        Property("type", "string"),
        Property(
            "json_schema",
            Object(
                [
                    Property("name", "string"),
                    Property("description", "string", required=False),
                    Property("schema", AnyType(), required=False),
                    Property("strict", "boolean", required=False),
                ]
            ),
            required=False,
        ),
    ]
)


def onnx_chat_signature() -> ModelSignature:
    """Every request field as a column of any type, so the request model checks it and names it (MLflow's
    schema errors quote the whole input), and unsupported OpenAI fields reach it to be refused. A missing
    value in a row is NaN, which only a column of any type lets through."""
    columns = ("messages", "prompt", *SAMPLING_FIELDS, "max_completion_tokens", *UNSUPPORTED_FIELDS)
    inputs = Schema(
        [
            *(ColSpec(AnyType(), name, required=False) for name in columns),
            # MLflow reads a JSON chat body as one row only when the schema has an object or array column.
            ColSpec(Object([Property("include_usage", "boolean", required=False)]), "stream_options", required=False),
        ]
    )
    params = ParamSchema(
        [
            *(ParamSpec(name, dtype, None) for name, dtype in PARAM_TYPES.items()),
            ParamSpec("stop", "string", [], shape=(-1,)),
            ParamSpec("response_format", RESPONSE_FORMAT_PARAM, {"type": "text"}),
        ]
    )
    # Outputs: an OpenAI chat.completion, the schema MLflow gives the transformers flavor's llm/v1/chat task.
    return ModelSignature(inputs=inputs, outputs=CHAT_MODEL_OUTPUT_SCHEMA, params=params)


def generation_model_config(
    generation: GenerationConfig, runtime: RuntimeConfig, name: str = tags.ONNX_MODEL_NAME
) -> dict[str, Any]:
    """The serving policy, the runtime settings and the served name: what `OnnxChatModel.load_context` reads."""
    return {**generation.serving_policy().as_mapping(), **runtime.model_dump(), "model_name": name}


def log_onnx_chat_model(
    onnx_dir: Path, generation: GenerationConfig, runtime: RuntimeConfig, name: str = tags.ONNX_MODEL_NAME
) -> str:
    """Log the ONNX folder as a models-from-code pyfunc named `name` (a variant's `onnx-chat-<variant>`); return
    its `models:/<model_id>` URI."""
    info = mlflow.pyfunc.log_model(
        name=name,
        python_model=str(module_file(ENTRY_MODULE)),
        artifacts={ONNX_ARTIFACT: str(onnx_dir)},
        code_paths=[str(PACKAGE_DIR)],
        model_config=generation_model_config(generation, runtime, name),
        signature=onnx_chat_signature(),
        input_example=CHAT_EXAMPLE,
        pip_requirements=pinned_requirements(*ONNX_REQUIREMENTS),
    )
    return f"models:/{info.model_id}"
