"""Logging the `transformers-chat` flavor: the checkpoint as a transformers pipeline with the llm/v1/chat task."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow

from slmflow import tags
from slmflow.config import GenerationConfig, SourceConfig
from slmflow.flavors.common import CHAT_EXAMPLE, pinned_requirements

TRANSFORMERS_REQUIREMENTS = ("mlflow", "torch", "transformers", "tokenizers", "huggingface-hub")
# A Unicode noncharacter (reserved for a program's internal use): it splits typed special-token text.
CONTENT_MARK = "\ufdd0"


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
    keep_typed_special_tokens_as_text(pipeline.tokenizer)
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


def keep_typed_special_tokens_as_text(tokenizer) -> None:
    """Make special-token text typed in message content (`<|im_end|>`) encode as the text it is.

    MLflow's llm/v1/chat renders the messages with the chat template into one string, which the
    pipeline tokenizes: any special-token text in it, the template's or a user's, becomes a control
    token, so a user could forge a turn. The logged tokenizer's template therefore puts CONTENT_MARK
    after the first character of every special token in message content (so no special token
    matches there), and its normalizer, which runs after special tokens are matched, deletes the
    mark: the content's ids are those of its plain text, on every path that uses the model's
    tokenizer (predict, mlflow models serve, slmflow.serve, Spark).
    """
    from tokenizers import normalizers

    added = tokenizer.added_tokens_decoder.values()
    specials = sorted((t.content for t in added if t.special and len(t.content) > 1), key=len, reverse=True)
    if not specials or not isinstance(tokenizer.chat_template, str):
        return
    backend = tokenizer.backend_tokenizer
    mark_removal = normalizers.Replace(CONTENT_MARK, "")
    backend.normalizer = (
        mark_removal if backend.normalizer is None else normalizers.Sequence([mark_removal, backend.normalizer])
    )
    tokenizer.chat_template = escaping_template(tokenizer.chat_template, specials)


def escaping_template(template: str, specials: list[str]) -> str:
    """`template` behind a prelude that rewrites each message's text content with CONTENT_MARK in its specials."""
    escaped = "_message['content']" + "".join(
        f" | replace({_literal(token)}, {_literal(token[0] + CONTENT_MARK + token[1:])})" for token in specials
    )
    prelude = (
        "{%- set _slmflow = namespace(messages=[]) -%}"
        "{%- for _message in messages -%}"
        "{%- if _message['content'] is string -%}"
        f"{{%- set _slmflow.messages = _slmflow.messages + [dict(_message, content={escaped})] -%}}"
        "{%- else -%}{%- set _slmflow.messages = _slmflow.messages + [_message] -%}{%- endif -%}"
        "{%- endfor -%}"
        "{% set messages = _slmflow.messages %}"
    )
    return prelude + template


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)
