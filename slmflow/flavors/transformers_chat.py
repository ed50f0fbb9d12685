"""Logging the `transformers-chat` flavor: the checkpoint as a transformers pipeline with the llm/v1/chat task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow

from slmflow import tags
from slmflow.config import GenerationConfig, SourceConfig
from slmflow.flavors.common import CHAT_EXAMPLE, pinned_requirements

TRANSFORMERS_REQUIREMENTS = ("mlflow", "torch", "transformers", "tokenizers", "huggingface-hub")


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
        name=tags.TRANSFORMERS_MODEL_NAME,
        task="llm/v1/chat",
        model_config=transformers_generation_kwargs(generation),
        # The pipeline takes model_config as generate() arguments; the serving policy goes in the metadata.
        metadata=generation.serving_policy().as_mapping(),
        input_example=CHAT_EXAMPLE,
        # MLflow's inferred requirements add torchvision, which would pull a CUDA torch here.
        pip_requirements=pinned_requirements(*TRANSFORMERS_REQUIREMENTS),
    )
    return f"models:/{info.model_id}"
