"""Building an ONNX GenAI folder with the onnxruntime-genai model builder, and checking what it built."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from slmflow.config import BuilderOptions
from slmflow.errors import OnnxBuildError
from slmflow.fetch.cache import build_once


def builder_command(checkpoint_dir: Path, out_dir: Path, cache_dir: Path, options: BuilderOptions) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(checkpoint_dir),
        "-o",
        str(out_dir),
        "-p",
        options.precision,
        "-e",
        options.execution_provider,
        "-c",
        str(cache_dir),
    ]
    if options.precision == "int4":
        # onnxruntime-genai 0.18 names; the older int4_block_size/int4_accuracy_level are silently ignored.
        command += ["--extra_options", f"accuracy_level={options.accuracy_level}", f"block_size={options.block_size}"]
    return command


def build_onnx(checkpoint_dir: Path, target: Path, options: BuilderOptions) -> Path:
    """Build into `target` once, verify the quantization, and return `target`."""

    def build(out_dir: Path) -> None:
        result = subprocess.run(
            builder_command(checkpoint_dir, out_dir, out_dir.parent / "builder-cache", options),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0 or not (out_dir / "genai_config.json").exists():
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
            raise OnnxBuildError(f"the onnxruntime-genai builder failed on {checkpoint_dir}:\n{tail}")
        copy_chat_template(checkpoint_dir, out_dir)
        verify_quantization(out_dir, options)

    return build_once(target, "genai_config.json", build)


def build_onnx_cached(checkpoint_dir: Path, content: str, cache_dir: Path, options: BuilderOptions) -> Path:
    """Built once per checkpoint content and options: the same weights from any source, path or step build once."""
    options_digest = hashlib.sha256(options.model_dump_json().encode()).hexdigest()[:8]
    return build_onnx(checkpoint_dir, cache_dir / "onnx" / f"{content[:24]}-{options_digest}", options)


def copy_chat_template(checkpoint_dir: Path, out_dir: Path) -> None:
    source = checkpoint_dir / "chat_template.jinja"
    if source.exists() and not (out_dir / "chat_template.jinja").exists():
        shutil.copy2(source, out_dir / "chat_template.jinja")


def matmul_nbits_attributes(onnx_dir: Path) -> list[dict[str, int]]:
    """The block_size, accuracy_level and bits of every MatMulNBits node in the folder's model."""
    import onnx

    found = []
    for model_file in sorted(onnx_dir.glob("*.onnx")):
        graph = onnx.load(str(model_file), load_external_data=False).graph
        for node in graph.node:
            if node.op_type == "MatMulNBits":
                attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
                found.append(
                    {
                        "block_size": int(attributes.get("block_size", 0)),
                        "accuracy_level": int(attributes.get("accuracy_level", 0)),
                        "bits": int(attributes.get("bits", 4)),
                    }
                )
    return found


def verify_quantization(onnx_dir: Path, options: BuilderOptions) -> None:
    if options.precision != "int4":
        return
    nodes = matmul_nbits_attributes(onnx_dir)
    if not nodes:
        raise OnnxBuildError(f"{onnx_dir}: int4 was asked for but the graph has no MatMulNBits node")
    wanted = {"block_size": options.block_size, "accuracy_level": options.accuracy_level, "bits": 4}
    wrong = [node for node in nodes if node != wanted]
    if wrong:
        raise OnnxBuildError(
            f"{onnx_dir}: {len(wrong)} of {len(nodes)} MatMulNBits nodes differ from {wanted}, e.g. {wrong[0]}"
        )
