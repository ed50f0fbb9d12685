"""Builtin offline models: tiny Phi-3-architecture checkpoints built by code, with no network.

The trained variant memorises a shipped country -> capital chat set, so the offline pipeline
gives real, checkable answers; the untrained variant has the same shape and answers nonsense,
which is what a quality gate must refuse.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from slmflow.errors import UnknownBuiltinModelError
from slmflow.fetch.cache import build_once

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PACKAGE_DIR = Path(__file__).resolve().parent
CAPITALS_FILE = PACKAGE_DIR / "data" / "capitals.jsonl"

SPECIAL_TOKENS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
END_TOKEN = "<|end|>"
PAD_TOKEN = "<|endoftext|>"

# Phi-3's own chat template: the same file serves transformers and onnxruntime-genai.
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '<|end|>\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '<|end|>\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

QUESTION_TEMPLATES = [
    "What is the capital of {country}?",
    "Which city is the capital of {country}?",
    "Tell me the capital of {country}.",
]
SYSTEM_PROMPT = "You are a helpful assistant."


@dataclass(frozen=True)
class BuiltinSpec:
    """Shape and training budget of one builtin model."""

    name: str
    train_steps: int
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    # Differs from every Linear's width: the onnxruntime-genai builder takes any Linear whose
    # out_features equals the vocabulary size for the LM head.
    vocab_size: int = 448
    max_position_embeddings: int = 512
    seed: int = 0
    learning_rate: float = 3e-3
    batch_size: int = 48
    # Random words added to the tokenizer's training text, so a large vocabulary is all real tokens.
    filler_words: int = 0
    # The checkpoint's dtype: float16 halves a large model's build memory and disk.
    torch_dtype: str = "float32"


BUILTIN_MODELS: dict[str, BuiltinSpec] = {
    "tiny-phi3": BuiltinSpec(name="tiny-phi3", train_steps=400),
    "tiny-phi3-untrained": BuiltinSpec(name="tiny-phi3-untrained", train_steps=0),
    # ~100M parameters with random weights: speed does not depend on weight values.
    "bench-phi3-100m": BuiltinSpec(
        name="bench-phi3-100m",
        train_steps=0,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=8,
        num_attention_heads=16,
        max_position_embeddings=2048,
    ),
    # Phi-3-mini-4k-instruct's shape (3.8B parameters) with random weights, for
    # `python -m benchmarks.real_shape`; it may be built with fewer layers (`with_layers`).
    "bench-phi3-mini-shape": BuiltinSpec(
        name="bench-phi3-mini-shape",
        train_steps=0,
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=32,
        num_attention_heads=32,
        vocab_size=32064,
        max_position_embeddings=4096,
        filler_words=400_000,
        torch_dtype="float16",
    ),
}


def builtin_spec(name: str) -> BuiltinSpec:
    if name not in BUILTIN_MODELS:
        known = ", ".join(sorted(BUILTIN_MODELS))
        raise UnknownBuiltinModelError(f"unknown builtin model 'builtin:{name}' (known: {known})")
    return BUILTIN_MODELS[name]


def with_layers(spec: BuiltinSpec, layers: int) -> BuiltinSpec:
    """The same recipe with fewer (or more) decoder layers, under its own name and cache entry."""
    if layers < 1:
        raise ValueError(f"a model needs at least one layer, got {layers}")
    if layers == spec.num_hidden_layers:
        return spec
    return replace(spec, name=f"{spec.name}-{layers}l", num_hidden_layers=layers)


def capital_pairs() -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in CAPITALS_FILE.read_text().splitlines() if line.strip()]
    return [(row["country"], row["capital"]) for row in rows]


def capital_answer(country: str, capital: str) -> str:
    return f"The capital of {country} is {capital}."


def training_conversations() -> list[list[dict[str, str]]]:
    """Every question phrasing, with and without a system prompt, for every country."""
    conversations = []
    for country, capital in capital_pairs():
        for template in QUESTION_TEMPLATES:
            turns = [
                {"role": "user", "content": template.format(country=country)},
                {"role": "assistant", "content": capital_answer(country, capital)},
            ]
            conversations.append(turns)
            conversations.append([{"role": "system", "content": SYSTEM_PROMPT}, *turns])
    return conversations


def render_chat(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    """Python rendering of PHI3_CHAT_TEMPLATE, used to build training text."""
    text = "".join(f"<|{m['role']}|>\n{m['content']}{END_TOKEN}\n" for m in messages)
    return text + ("<|assistant|>\n" if add_generation_prompt else PAD_TOKEN)


def spec_fingerprint(spec: BuiltinSpec) -> str:
    """Changes whenever the recipe (code, data or shape) changes, so the cache never serves a stale build."""
    digest = hashlib.sha256()
    digest.update(Path(__file__).read_bytes())
    digest.update(CAPITALS_FILE.read_bytes())
    digest.update(repr(spec).encode())
    return digest.hexdigest()[:16]


def ensure_builtin_model(name: str, cache_root: Path) -> Path:
    """Return the folder of a builtin model, building it once per recipe into the cache."""
    return ensure_builtin_spec(builtin_spec(name), cache_root)


def ensure_builtin_spec(spec: BuiltinSpec, cache_root: Path) -> Path:
    target = cache_root / "builtin" / f"{spec.name}-{spec_fingerprint(spec)}"
    return build_once(target, "config.json", lambda output: build_builtin_model(spec, output))


def filler_text(words: int, seed: int) -> list[str]:
    """Deterministic random lower-case words, a line of 64 each: enough distinct pairs to fill a vocabulary."""
    import random

    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    drawn = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(words)]
    return [" ".join(drawn[start : start + 64]) for start in range(0, len(drawn), 64)]


def _train_tokenizer(spec: BuiltinSpec):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [render_chat(c, add_generation_prompt=False) for c in training_conversations()]
    tokenizer.train_from_iterator(texts + filler_text(spec.filler_words, spec.seed), trainer=trainer)
    return tokenizer


def _special_token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    """One token's id (`convert_tokens_to_ids` is typed for a list of tokens too)."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(token_id, int):
        raise TypeError(f"the tokenizer gave {token_id!r} for the single token {token!r}")
    return token_id


def build_builtin_model(spec: BuiltinSpec, out_dir: Path) -> None:
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(spec.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # a fixed thread count keeps the float reductions, and so the weights, repeatable
    try:
        raw_tokenizer = _train_tokenizer(spec)
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=raw_tokenizer,
            bos_token=PAD_TOKEN,
            eos_token=END_TOKEN,
            pad_token=PAD_TOKEN,
            unk_token=PAD_TOKEN,
            chat_template=PHI3_CHAT_TEMPLATE,
        )
        end_id, pad_id = _special_token_id(tokenizer, END_TOKEN), _special_token_id(tokenizer, PAD_TOKEN)
        config = Phi3Config(
            vocab_size=spec.vocab_size,
            hidden_size=spec.hidden_size,
            intermediate_size=spec.intermediate_size,
            num_hidden_layers=spec.num_hidden_layers,
            num_attention_heads=spec.num_attention_heads,
            num_key_value_heads=spec.num_attention_heads,
            max_position_embeddings=spec.max_position_embeddings,
            original_max_position_embeddings=spec.max_position_embeddings,
            bos_token_id=pad_id,
            eos_token_id=[end_id, pad_id],
            pad_token_id=pad_id,
            tie_word_embeddings=False,
        )
        model = Phi3ForCausalLM._from_config(config, dtype=getattr(torch, spec.torch_dtype))
        if spec.train_steps:
            _train(model, tokenizer, spec)
        model.eval()
        model.generation_config.eos_token_id = [end_id, pad_id]
        model.generation_config.pad_token_id = pad_id
        model.generation_config.do_sample = False
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        _write_tokenizer_class(out_dir)
    finally:
        torch.set_num_threads(threads)


def _write_tokenizer_class(out_dir: Path) -> None:
    """Name a class that both transformers and onnxruntime-genai load as a byte-level BPE."""
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "GPT2Tokenizer"
    config["add_bos_token"] = False
    config_path.write_text(json.dumps(config, indent=2))
    if not (out_dir / "chat_template.jinja").exists():
        (out_dir / "chat_template.jinja").write_text(PHI3_CHAT_TEMPLATE)


def _train(model, tokenizer, spec: BuiltinSpec) -> None:
    """Teach the answers only: the loss is masked to the assistant's reply."""
    import torch

    generator = torch.Generator().manual_seed(spec.seed)
    examples = []
    for conversation in training_conversations():
        prompt_ids = tokenizer.encode(render_chat(conversation[:-1], add_generation_prompt=True))
        answer_ids = tokenizer.encode(conversation[-1]["content"] + END_TOKEN)
        examples.append((prompt_ids, answer_ids))
    width = max(len(p) + len(a) for p, a in examples)
    pad_id = tokenizer.pad_token_id
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (prompt_ids, answer_ids) in enumerate(examples):
        ids = prompt_ids + answer_ids
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, len(prompt_ids) : len(ids)] = torch.tensor(answer_ids)
        attention[row, : len(ids)] = 1

    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=spec.learning_rate, total_steps=spec.train_steps, pct_start=0.1
    )
    model.train()
    for _ in range(spec.train_steps):
        batch = torch.randperm(len(examples), generator=generator)[: spec.batch_size]
        loss = model(input_ids=input_ids[batch], attention_mask=attention[batch], labels=labels[batch]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
