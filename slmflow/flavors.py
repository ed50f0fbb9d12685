"""Logging the two chat flavors: the ONNX GenAI pyfunc model and the transformers pipeline."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import mlflow
from mlflow.models import ModelSignature
from mlflow.types.llm import CHAT_MODEL_OUTPUT_SCHEMA
from mlflow.types.schema import AnyType, ColSpec, Object, ParamSchema, ParamSpec, Property, Schema

from slmflow.config import GenerationConfig, RuntimeConfig, SourceConfig
from slmflow.onnx_chat import ONNX_ARTIFACT
from slmflow.requests import SAMPLING_FIELDS, UNSUPPORTED_FIELDS

PACKAGE_DIR = Path(__file__).resolve().parent
REQUIREMENTS_FILE = PACKAGE_DIR.parent / "requirements.txt"
ONNX_MODEL_NAME = "onnx-chat"
TRANSFORMERS_MODEL_NAME = "transformers-chat"
CHAT_EXAMPLE = {"messages": [{"role": "user", "content": "What is the capital of Spain?"}]}

ONNX_REQUIREMENTS = ("mlflow", "onnxruntime", "onnxruntime-genai")
TRANSFORMERS_REQUIREMENTS = ("mlflow", "torch", "transformers", "tokenizers", "huggingface-hub")


def pinned_requirements(*names: str) -> list[str]:
    """Pins for the given packages, read from requirements.txt (the one source of truth)."""
    pins = {}
    for line in REQUIREMENTS_FILE.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line.strip())
        if match:
            pins[match.group(1).lower()] = line.strip()
    missing = [name for name in names if name.lower() not in pins]
    if missing:
        raise ValueError(f"{REQUIREMENTS_FILE} pins none of: {', '.join(missing)}")
    return [pins[name.lower()] for name in names]


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
        ]
    )
    # Outputs: an OpenAI chat.completion, the schema MLflow gives the transformers flavor's llm/v1/chat task.
    return ModelSignature(inputs=inputs, outputs=CHAT_MODEL_OUTPUT_SCHEMA, params=params)


def generation_model_config(generation: GenerationConfig, runtime: RuntimeConfig) -> dict[str, Any]:
    config = generation.model_dump(exclude_none=True)
    config.update(runtime.model_dump())
    config["model_name"] = ONNX_MODEL_NAME
    return config


def log_onnx_chat_model(onnx_dir: Path, generation: GenerationConfig, runtime: RuntimeConfig) -> str:
    """Log the ONNX folder as a models-from-code pyfunc; return its `models:/<model_id>` URI."""
    info = mlflow.pyfunc.log_model(
        name=ONNX_MODEL_NAME,
        python_model=str(PACKAGE_DIR / "onnx_chat_entry.py"),
        artifacts={ONNX_ARTIFACT: str(onnx_dir)},
        code_paths=[str(PACKAGE_DIR)],
        model_config=generation_model_config(generation, runtime),
        signature=onnx_chat_signature(),
        input_example=CHAT_EXAMPLE,
        pip_requirements=pinned_requirements(*ONNX_REQUIREMENTS),
    )
    return f"models:/{info.model_id}"


def transformers_generation_kwargs(generation: GenerationConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"max_new_tokens": generation.max_new_tokens}
    if generation.temperature > 0:
        kwargs.update(
            do_sample=True, temperature=generation.temperature, top_p=generation.top_p, top_k=generation.top_k
        )
    else:
        kwargs["do_sample"] = False
    return kwargs


def log_transformers_chat_model(checkpoint_dir: Path, source: SourceConfig, generation: GenerationConfig) -> str:
    """Log the checkpoint as a transformers text-generation pipeline with the llm/v1/chat task."""
    import transformers

    pipeline = transformers.pipeline(
        "text-generation",
        model=str(checkpoint_dir),
        tokenizer=str(checkpoint_dir),
        trust_remote_code=source.trust_remote_code,
    )
    info = mlflow.transformers.log_model(
        transformers_model=pipeline,
        name=TRANSFORMERS_MODEL_NAME,
        task="llm/v1/chat",
        model_config=transformers_generation_kwargs(generation),
        input_example=CHAT_EXAMPLE,
        # MLflow's inferred requirements add torchvision, which would pull a CUDA torch here.
        pip_requirements=pinned_requirements(*TRANSFORMERS_REQUIREMENTS),
    )
    return f"models:/{info.model_id}"
