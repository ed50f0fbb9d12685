"""GGUF files as a source, on small GGUFs written here from the tiny model's weights."""

import shutil

import pytest

from slmflow.config import SourceConfig
from slmflow.digests import sha256_file
from slmflow.errors import SourceError
from slmflow.fetch.gguf import read_gguf_info
from slmflow.fetch.sources import fetch_model, resolve_revision
from testkit.gguf_files import write_gguf

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def tiny_gguf(tiny_checkpoint, tmp_path_factory):
    return write_gguf(tiny_checkpoint, tmp_path_factory.mktemp("gguf") / "tiny-phi3.Q8_0.gguf")


def greedy_answer(checkpoint) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    inputs = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    return tokenizer.decode(output[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_a_gguf_is_dequantized_into_a_checkpoint_that_answers_and_is_recorded(settings, tiny_gguf):
    source = SourceConfig(model=f"local:{tiny_gguf}")
    fetched = fetch_model(source, settings)
    assert fetched.revision == sha256_file(tiny_gguf)
    assert fetched.gguf == {
        "sha256": sha256_file(tiny_gguf),
        "architecture": "phi3",
        "quantization": "Q8_0",
        "tensor_types": {"F32": 5, "Q8_0": 10},
    }
    assert fetched.manifest()["gguf"]["quantization"] == "Q8_0"
    assert "checkpoint/model.safetensors" in fetched.files and "checkpoint/chat_template.jinja" in fetched.files
    assert (fetched.onnx_dir / "genai_config.json").is_file()
    assert greedy_answer(fetched.checkpoint_dir) == "The capital of France is Paris."
    # Cached by content: fetched again, nothing is dequantized or built again.
    assert fetch_model(source, settings).checkpoint_dir == fetched.checkpoint_dir


def test_a_gguf_is_identified_by_its_content_not_its_path(settings, tiny_gguf, tmp_path):
    moved = tmp_path / "elsewhere" / "renamed.gguf"
    moved.parent.mkdir()
    shutil.copy(tiny_gguf, moved)
    revision = resolve_revision(SourceConfig(model=f"local:{tiny_gguf}"), settings)
    assert resolve_revision(SourceConfig(model=f"local:{moved}"), settings) == revision
    with moved.open("r+b") as handle:
        handle.seek(-1, 2)
        handle.write(b"\x01")
    assert resolve_revision(SourceConfig(model=f"local:{moved}"), settings) != revision


def test_the_dequantized_dtype_is_configurable(settings, tiny_gguf):
    import json

    fetched = fetch_model(SourceConfig(model=f"local:{tiny_gguf}", gguf_dtype="float16"), settings)
    assert json.loads((fetched.checkpoint_dir / "config.json").read_text())["dtype"] == "float16"


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_truncated_or_corrupt_gguf_is_refused_at_once(settings, tiny_gguf, tmp_path, damage):
    broken = tmp_path / "broken.gguf"
    data = tiny_gguf.read_bytes()
    broken.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"GGUF" + bytes(range(256)) * 8)
    with pytest.raises(SourceError, match=r"^GGUF file .*broken.gguf is truncated or corrupt: .+$"):
        fetch_model(SourceConfig(model=f"local:{broken}"), settings)


def test_an_unsupported_architecture_is_named_with_the_supported_ones(settings, tiny_checkpoint, tmp_path):
    other = write_gguf(tiny_checkpoint, tmp_path / "other.gguf", architecture="rwkv7")
    with pytest.raises(SourceError, match=r"architecture 'rwkv7', .*cannot read \(supported: .*llama.*phi3.*\)$"):
        fetch_model(SourceConfig(model=f"local:{other}"), settings)


def test_an_unsupported_tensor_type_is_named_with_the_supported_ones(settings, tiny_checkpoint, tmp_path):
    doubles = write_gguf(tiny_checkpoint, tmp_path / "doubles.gguf", quantization="F64")
    assert read_gguf_info(doubles).tensor_types["F64"] == 10
    with pytest.raises(SourceError, match=r"tensors of type F64, .*cannot dequantize \(supported: .*Q4_1.*Q8_0.*\)$"):
        fetch_model(SourceConfig(model=f"local:{doubles}"), settings)


def test_a_gguf_without_a_chat_template_needs_one_configured(settings, tiny_checkpoint, tmp_path):
    base = write_gguf(tiny_checkpoint, tmp_path / "base.gguf", chat_template=None)
    with pytest.raises(SourceError, match=r"has no chat template .*set source.chat_template to a Jinja file"):
        fetch_model(SourceConfig(model=f"local:{base}"), settings)
    template = tmp_path / "template.jinja"
    shutil.copy(tiny_checkpoint / "chat_template.jinja", template)
    fetched = fetch_model(SourceConfig(model=f"local:{base}", chat_template=template), settings)
    assert (fetched.checkpoint_dir / "chat_template.jinja").read_text() == template.read_text()
    assert (fetched.onnx_dir / "chat_template.jinja").read_text() == template.read_text()
    assert greedy_answer(fetched.checkpoint_dir) == "The capital of France is Paris."


@pytest.mark.parametrize("name", ["model.bin", "weights.safetensors"])
def test_a_path_neither_a_folder_nor_a_gguf_is_refused(settings, tmp_path, name):
    (tmp_path / name).write_bytes(b"weights")
    with pytest.raises(SourceError, match=rf"^local model path .*{name} is neither a folder nor a .gguf file$"):
        resolve_revision(SourceConfig(model=f"local:{tmp_path / name}"), settings)
