"""Small GGUF files written with the `gguf` package's writer from a checkpoint folder (the tiny model's weights).

Written the way llama.cpp's converter lays them out (tensor names, metadata keys, a byte-level BPE
vocabulary with its control tokens), so transformers' GGUF loader reads them as it reads a real file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

_CONTROL, _NORMAL = 3, 1  # gguf token types
_FLOAT_TYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


def write_gguf(
    checkpoint: Path,
    out_file: Path,
    quantization: str = "Q8_0",
    chat_template: str | None = "own",
    architecture: str = "phi3",
) -> Path:
    """Write `checkpoint` (a Phi-3-architecture folder) as a GGUF; 2-D weights in `quantization` (a ggml
    type name: Q8_0, Q4_1, F16, F64...), the rest F32.

    `chat_template="own"` embeds the folder's template, None embeds none; `architecture` may name another
    (a file the loader must refuse).
    """
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((checkpoint / "config.json").read_text())
    layers = config["num_hidden_layers"]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.PHI3, layers)
    qtype = gguf.GGMLQuantizationType[quantization]
    writer = gguf.GGUFWriter(str(out_file), architecture)
    writer.add_name(checkpoint.name)
    writer.add_file_type(_file_type(qtype))
    # transformers reads no original context length for phi3 (it defaults to 4096): a shorter context
    # would load as a long-RoPE model, so the file states 4096, which changes no rotary angle.
    writer.add_context_length(max(config["max_position_embeddings"], 4096))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(layers)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config.get("rope_theta", 10000.0))
    writer.add_rope_dimension_count(config["hidden_size"] // config["num_attention_heads"])
    writer.add_vocab_size(config["vocab_size"])
    _add_tokenizer(writer, checkpoint, chat_template)

    for hf_name, array in load_file(str(checkpoint / "model.safetensors")).items():
        base, _, suffix = hf_name.rpartition(".")
        gguf_name = names.get_name(base)
        if gguf_name is None:
            raise ValueError(f"no GGUF name for {hf_name}")
        array = array.astype(np.float32)
        if array.ndim == 2 and quantization in _FLOAT_TYPES:
            writer.add_tensor(f"{gguf_name}.{suffix}", array.astype(_FLOAT_TYPES[quantization]))
        elif array.ndim == 2:
            writer.add_tensor(f"{gguf_name}.{suffix}", gguf.quants.quantize(array, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(f"{gguf_name}.{suffix}", array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_file


def _file_type(qtype) -> int:
    import gguf

    return {"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16}.get(
        qtype.name, getattr(gguf.LlamaFileType, f"MOSTLY_{qtype.name}", gguf.LlamaFileType.GUESSED)
    )


def _add_tokenizer(writer, checkpoint: Path, chat_template: str | None) -> None:
    tokenizer = json.loads((checkpoint / "tokenizer.json").read_text())
    tokenizer_config = json.loads((checkpoint / "tokenizer_config.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    special = {added["content"] for added in tokenizer["added_tokens"] if added["special"]}
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in tokenizer["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([_CONTROL if token in special else _NORMAL for token in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab[tokenizer_config["bos_token"]])
    writer.add_eos_token_id(vocab[tokenizer_config["eos_token"]])
    writer.add_pad_token_id(vocab[tokenizer_config["pad_token"]])
    writer.add_add_bos_token(False)
    if chat_template == "own":
        writer.add_chat_template((checkpoint / "chat_template.jinja").read_text())
    elif chat_template is not None:
        writer.add_chat_template(chat_template)
