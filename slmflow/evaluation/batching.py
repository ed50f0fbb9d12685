"""Answering eval items many at a time: the accuracy pass of `evaluate` sends batches, not single requests.

The `onnx-chat` model batches a multi-row `predict` itself. MLflow's transformers flavor runs its pipeline
one prompt after another and counts padding as completion tokens, so the `transformers-chat` model is
batched here: its own tokenizer renders each chat as `predict` does (MLflow's `convert_messages_to_prompt`),
the prompts are left-padded into one batch, and the pipeline's model generates them together with the
logged generation settings. Greedy answers equal `predict`'s one-by-one answers; the evaluation checks that
again on its latency sample (`batch_mismatches`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from slmflow.chat.response import chat_completion

# The logged model_config keys that are generate() arguments (see flavors/transformers_chat.py).
GENERATE_KEYS = ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k")

Answerer = Callable[[Sequence[Mapping[str, Any]]], list[Any]]


def transformers_answerer(pipeline: Any, model_config: Mapping[str, Any], model_name: str) -> Answerer:
    """Answers to many chat requests ({"messages", "max_tokens"?}) from one left-padded generate() call."""

    def answer(requests: Sequence[Mapping[str, Any]]) -> list[Any]:
        return transformers_batch(pipeline, model_config, requests, model_name)

    return answer


def transformers_batch(
    pipeline: Any, model_config: Mapping[str, Any], requests: Sequence[Mapping[str, Any]], model_name: str
) -> list[dict[str, Any]]:
    import torch
    from mlflow.transformers.llm_inference_utils import convert_messages_to_prompt

    budgets = {request.get("max_tokens") for request in requests}
    if len(budgets) != 1:
        raise ValueError(f"the requests of one batch share max_tokens, got {sorted(map(str, budgets))}")
    tokenizer = pipeline.tokenizer
    prompts = [convert_messages_to_prompt(list(request["messages"]), tokenizer) for request in requests]
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues every row from its last prompt token
    try:
        inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = padding_side
    kwargs = {key: model_config[key] for key in GENERATE_KEYS if key in model_config}
    [budget] = budgets
    if budget is not None:
        kwargs["max_new_tokens"] = int(budget)
    with torch.inference_mode():
        output = pipeline.model.generate(**inputs, **kwargs, pad_token_id=tokenizer.pad_token_id)
    generated = output[:, inputs["input_ids"].shape[1] :].tolist()
    prompt_lengths = inputs["attention_mask"].sum(dim=1).tolist()
    stops = _eos_ids(pipeline.model.generation_config)
    limit = int(kwargs.get("max_new_tokens") or pipeline.model.generation_config.max_new_tokens or 2**31)
    return [
        _completion(tokenizer, tokens, stops, int(prompt_tokens), limit, model_name)
        for tokens, prompt_tokens in zip(generated, prompt_lengths, strict=True)
    ]


def _eos_ids(generation_config: Any) -> set[int]:
    eos = generation_config.eos_token_id
    if eos is None:
        return set()
    return {int(eos)} if isinstance(eos, int) else {int(token) for token in eos}


def _completion(
    tokenizer: Any, tokens: list[int], stops: set[int], prompt_tokens: int, budget: int, model_name: str
) -> dict:
    """One row's answer: its tokens up to and including the first end-of-sequence token (the rest is padding).
    finish_reason as MLflow's flavor reports it: "length" when the answer used its whole budget."""
    end = next((index for index, token in enumerate(tokens) if token in stops), None)
    kept = tokens if end is None else tokens[: end + 1]
    text = tokenizer.decode(kept, skip_special_tokens=True, clean_up_tokenization_spaces=True).lstrip()
    return chat_completion(text, "length" if len(kept) >= budget else "stop", prompt_tokens, len(kept), model_name)
