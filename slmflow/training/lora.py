"""Which layers the LoRA adapter wraps: a default per architecture, and a check against the model's own layers."""

from __future__ import annotations

from collections.abc import Iterable

from slmflow.errors import TrainingDataError

# The attention projections, as each architecture names them (Phi-3 fuses q, k and v into one layer).
DEFAULT_TARGET_MODULES: dict[str, tuple[str, ...]] = {
    "llama": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
    "qwen3": ("q_proj", "v_proj"),
    "gemma": ("q_proj", "v_proj"),
    "gemma2": ("q_proj", "v_proj"),
    "gemma3_text": ("q_proj", "v_proj"),
    "phi3": ("qkv_proj",),
}


def target_modules(configured: tuple[str, ...] | None, model_type: str) -> tuple[str, ...]:
    if configured:
        return configured
    if model_type not in DEFAULT_TARGET_MODULES:
        raise TrainingDataError(
            f"training.lora.target_modules: no default for architecture '{model_type}': name the layers to adapt"
        )
    return DEFAULT_TARGET_MODULES[model_type]


def check_target_modules(requested: Iterable[str], linear_layers: Iterable[str], model_type: str) -> None:
    """Every requested name must be the last part of one of the model's linear layers' names."""
    names = {layer.rsplit(".", 1)[-1] for layer in linear_layers}
    missing = [module for module in requested if module not in names]
    if missing:
        raise TrainingDataError(
            f"training.lora.target_modules: the {model_type} model has no layer {', '.join(missing)} "
            f"(its linear layers: {', '.join(sorted(names))})"
        )
