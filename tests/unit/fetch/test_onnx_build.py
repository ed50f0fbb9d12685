import json
from pathlib import Path

import pytest

from slmflow.config import BuilderOptions
from slmflow.errors import OnnxBuildError
from slmflow.fetch.onnx_build import build_onnx, builder_command, matmul_nbits_attributes, verify_quantization
from testkit.processes import PROJECT_DIR

EVAL_SET = PROJECT_DIR / "configs" / "eval" / "capitals.jsonl"


def test_built_graph_carries_the_configured_block_size_and_accuracy_level(tiny_onnx, tiny_config):
    nodes = matmul_nbits_attributes(tiny_onnx)
    options = tiny_config.source.variants[0]
    assert len(nodes) >= 8  # qkv, o, gate, up, down per layer and the LM head
    assert {(n["block_size"], n["accuracy_level"], n["bits"]) for n in nodes} == {
        (options.block_size, options.accuracy_level, 4)
    }
    assert (tiny_onnx / "chat_template.jinja").exists()
    assert (tiny_onnx / "genai_config.json").exists()


def test_other_quantization_options_reach_the_graph(tiny_checkpoint, tmp_path):
    options = BuilderOptions(block_size=16, accuracy_level=1)
    built = build_onnx(tiny_checkpoint, tmp_path / "onnx-16", options)
    assert {(n["block_size"], n["accuracy_level"]) for n in matmul_nbits_attributes(built)} == {(16, 1)}


def test_command_uses_the_current_option_names(tmp_path):
    command = builder_command(tmp_path / "in", tmp_path / "out", tmp_path / "c", BuilderOptions())
    assert command[command.index("--extra_options") + 1 :] == ["accuracy_level=4", "block_size=32"]
    assert not any("int4_" in part for part in command)


def test_mismatched_quantization_is_refused(tiny_onnx):
    with pytest.raises(OnnxBuildError, match="MatMulNBits nodes differ"):
        verify_quantization(tiny_onnx, BuilderOptions(block_size=64))


def test_builder_failure_names_the_checkpoint_and_leaves_nothing(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    with pytest.raises(OnnxBuildError, match="builder failed on .*broken"):
        build_onnx(broken, tmp_path / "out" / "model", BuilderOptions())
    assert list((tmp_path / "out").iterdir()) == []


def greedy_answers(onnx_dir: Path, conversations: list[list[dict[str, str]]]) -> list[str]:
    import onnxruntime_genai as og

    from slmflow.chat.onnx.engine import OnnxChatEngine

    engine = OnnxChatEngine(onnx_dir)
    answers = []
    for messages in conversations:
        ids = engine.tokenizer.encode(engine.prompts.render(messages))
        params = og.GeneratorParams(engine.model)
        params.set_search_options(max_length=len(ids) + 24, do_sample=False)
        generator = og.Generator(engine.model, params)
        generator.append_tokens(ids)
        while not generator.is_done():
            generator.generate_next_token()
        answers.append(engine.tokenizer.decode(generator.get_sequence(0)[len(ids) :]))
    return answers


def test_default_block_size_keeps_the_tiny_models_answers(tiny_onnx):
    """block_size 32 is the default: on SmolLM2-135M, block 128 lost half the right answers."""
    assert BuilderOptions().block_size == 32
    rows = [json.loads(line) for line in EVAL_SET.read_text().splitlines() if line.strip()]
    answers = greedy_answers(tiny_onnx, [row["messages"] for row in rows])
    assert sum(row["answer"] in answer for row, answer in zip(rows, answers, strict=True)) >= 0.9 * len(rows)
