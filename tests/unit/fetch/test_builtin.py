import json
from dataclasses import replace

import pytest

from slmflow.digests import file_digests
from slmflow.errors import UnknownBuiltinModelError
from slmflow.fetch.builtin import (
    BUILTIN_MODELS,
    PHI3_CHAT_TEMPLATE,
    _train_tokenizer,
    build_builtin_model,
    builtin_spec,
    ensure_builtin_model,
    filler_text,
    render_chat,
    spec_fingerprint,
    training_conversations,
    with_layers,
)


def test_unknown_builtin_name_lists_the_known_ones():
    with pytest.raises(UnknownBuiltinModelError, match=r"unknown builtin model 'builtin:huge'.*tiny-phi3"):
        builtin_spec("huge")


def test_tiny_model_answers_capital_questions_through_transformers(tiny_checkpoint):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    for question, expected in [
        ("What is the capital of Spain?", "The capital of Spain is Madrid."),
        ("Tell me the capital of Kenya.", "The capital of Kenya is Nairobi."),
    ]:
        inputs = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        output = model.generate(**inputs, max_new_tokens=20, do_sample=False)
        answer = tokenizer.decode(output[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        assert answer == expected


def test_checkpoint_carries_the_phi3_chat_template_and_architecture(tiny_checkpoint, tiny_config):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert config["architectures"] == ["Phi3ForCausalLM"]
    assert (tiny_checkpoint / "chat_template.jinja").read_text() == PHI3_CHAT_TEMPLATE
    # The vocabulary must not equal any projection's width: the ONNX builder takes such a Linear for the LM head.
    widths = {config["hidden_size"], config["intermediate_size"] * 2, config["hidden_size"] * 3}
    assert config["vocab_size"] not in widths


def test_training_text_matches_the_template_rendering(tiny_checkpoint):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    conversation = training_conversations()[1]  # with a system prompt
    rendered = tokenizer.apply_chat_template(list(conversation[:-1]), add_generation_prompt=True, tokenize=False)
    assert rendered == render_chat(conversation[:-1], add_generation_prompt=True)


def test_build_is_deterministic(tmp_path):
    """The same recipe gives the same files, byte for byte, so a rebuild never changes the revision.

    The tiny model's own recipe with a few training steps: the same tokenizer training and training loop,
    in seconds rather than twice the whole training."""
    short = replace(BUILTIN_MODELS["tiny-phi3"], train_steps=8)
    build_builtin_model(short, tmp_path / "first")
    build_builtin_model(short, tmp_path / "again")
    assert file_digests(tmp_path / "again") == file_digests(tmp_path / "first")


def test_cache_returns_the_same_folder_without_rebuilding(cache_dir, tiny_checkpoint):
    mtime = (tiny_checkpoint / "model.safetensors").stat().st_mtime_ns
    assert ensure_builtin_model("tiny-phi3", cache_dir) == tiny_checkpoint
    assert (tiny_checkpoint / "model.safetensors").stat().st_mtime_ns == mtime


def test_untrained_variant_has_the_same_shape_but_other_weights(cache_dir, tiny_checkpoint):
    untrained = ensure_builtin_model("tiny-phi3-untrained", cache_dir)
    assert json.loads((untrained / "config.json").read_text()) == json.loads(
        (tiny_checkpoint / "config.json").read_text()
    )
    assert file_digests(untrained)["model.safetensors"] != file_digests(tiny_checkpoint)["model.safetensors"]


def test_real_shape_benchmark_model_has_phi3_minis_shape():
    spec = builtin_spec("bench-phi3-mini-shape")
    shape = (spec.hidden_size, spec.intermediate_size, spec.num_hidden_layers, spec.num_attention_heads)
    assert shape == (3072, 8192, 32, 32)
    assert (spec.vocab_size, spec.max_position_embeddings, spec.train_steps) == (32064, 4096, 0)


def test_fewer_layers_is_another_recipe_with_its_own_cache_entry():
    full = builtin_spec("bench-phi3-mini-shape")
    four = with_layers(full, 4)
    assert (four.name, four.num_hidden_layers, four.hidden_size) == ("bench-phi3-mini-shape-4l", 4, 3072)
    assert spec_fingerprint(four) != spec_fingerprint(full)
    assert with_layers(full, 32) == full
    with pytest.raises(ValueError, match="at least one layer"):
        with_layers(full, 0)


def test_filler_words_fill_a_large_vocabulary():
    """The chat set alone yields a few hundred tokens; random words make every id a real token."""
    spec = replace(BUILTIN_MODELS["tiny-phi3-untrained"], vocab_size=1500, filler_words=20_000)
    assert _train_tokenizer(spec).get_vocab_size() == 1500
    assert filler_text(100, seed=0) == filler_text(100, seed=0) != filler_text(100, seed=1)
