"""GGUF files as a model source: checked from their header at once, then dequantized once into a checkpoint.

A GGUF is what most people hold a small model in (llama.cpp, Ollama, LM Studio). Its identity is
the sha256 of the file; transformers' GGUF loader turns it into a plain checkpoint folder (weights,
tokenizer and chat template from the file's metadata), which the rest of the pipeline takes like
any local folder.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from slmflow.errors import SourceError
from slmflow.fetch.cache import build_once

GGUF_SUFFIX = ".gguf"
# What llama.cpp calls an architecture in the file, where transformers' loader names it otherwise.
_LOADER_NAMES = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss", "minimax-m2": "minimax_m2"}


@dataclass(frozen=True)
class GgufInfo:
    """What the header says: enough to refuse a file before spending time on it, and to record it."""

    architecture: str
    quantization: str  # the file type llama.cpp wrote (e.g. Q4_1), or the most common tensor type
    tensor_types: dict[str, int]
    chat_template: str | None

    def manifest(self, sha256: str) -> dict:
        return {
            "sha256": sha256,
            "architecture": self.architecture,
            "quantization": self.quantization,
            "tensor_types": self.tensor_types,
        }


def read_gguf_info(path: Path) -> GgufInfo:
    """Parse the header and tensor table; a truncated or corrupt file fails here with one line."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
        architecture = str(reader.fields["general.architecture"].contents())
        end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    except Exception as error:  # the reader raises whatever the broken bytes make it raise
        raise SourceError(f"GGUF file {path} is truncated or corrupt: {type(error).__name__}: {error}") from None
    size = path.stat().st_size
    if not reader.tensors or end > size:
        raise SourceError(f"GGUF file {path} is truncated or corrupt: its tensors need {end} bytes, it has {size}")
    counts = Counter(t.tensor_type.name for t in reader.tensors)
    template = reader.fields.get("tokenizer.chat_template")
    return GgufInfo(
        architecture=architecture,
        quantization=_file_type(reader) or counts.most_common(1)[0][0],
        tensor_types=dict(sorted(counts.items())),
        chat_template=str(template.contents()) if template is not None else None,
    )


def _file_type(reader) -> str | None:
    import gguf

    field = reader.fields.get("general.file_type")
    try:
        name = gguf.LlamaFileType(int(field.contents())).name if field is not None else None
    except ValueError:
        return None
    return name.removeprefix("MOSTLY_").removeprefix("ALL_") if name else None


def supported_architectures() -> list[str]:
    from transformers.integrations.gguf.utils import GGUF_ARCHS
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return sorted((set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}) | set(GGUF_ARCHS))


def supported_tensor_types(architecture: str) -> list[str]:
    """The tensor types transformers can dequantize for this architecture (two loaders, two lists)."""
    import gguf
    import numpy as np
    from transformers.integrations.gguf.dequant import GGML_NAME
    from transformers.integrations.gguf.utils import is_gguf_arch_supported

    if is_gguf_arch_supported(architecture):
        return sorted({"F32", "F16", "BF16", *GGML_NAME.values()})
    supported = []
    for qtype in gguf.GGMLQuantizationType:
        try:  # one zero block tells whether the legacy loader's dequantizer knows the type
            gguf.quants.dequantize(np.zeros(gguf.GGML_QUANT_SIZES[qtype][1], dtype=np.uint8), qtype)
        except NotImplementedError:
            continue
        supported.append(qtype.name)
    return sorted(supported)


def check_loadable(path: Path, info: GgufInfo) -> None:
    """Refuse an architecture or tensor type transformers' GGUF loader cannot read, naming what it can."""
    known = supported_architectures()
    architecture = _LOADER_NAMES.get(info.architecture, info.architecture)
    if architecture not in known:
        raise SourceError(
            f"GGUF file {path} holds architecture '{info.architecture}', which transformers' GGUF loader "
            f"cannot read (supported: {', '.join(known)})"
        )
    types = supported_tensor_types(architecture)
    unsupported = sorted(set(info.tensor_types) - set(types))
    if unsupported:
        raise SourceError(
            f"GGUF file {path} holds tensors of type {', '.join(unsupported)}, which transformers' GGUF loader "
            f"cannot dequantize (supported: {', '.join(types)})"
        )


def dequantized_checkpoint(path: Path, sha256: str, dtype: str, cache_root: Path) -> Path:
    """The GGUF as a plain checkpoint folder in `dtype`, built once per file content and dtype."""
    target = cache_root / "gguf" / f"{sha256[:24]}-{dtype}"
    return build_once(target, "config.json", lambda output: _dequantize(path, output, dtype))


def _dequantize(path: Path, out_dir: Path, dtype: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=getattr(torch, dtype))
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    # Loaded from GGUF, the model counts as quantized and refuses to save: it is plain `dtype` weights now.
    model.hf_quantizer = None  # type: ignore[assignment]  # set by from_pretrained, undeclared on PreTrainedModel
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.generation_config.do_sample = False
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
