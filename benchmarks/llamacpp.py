"""llama.cpp as a peer: its source from the pinned llama-cpp-python sdist, its converter and quantizer, and a
greedy generation loop over its C API (through llama-cpp-python) that takes token ids and decodes 1 to N rows.

Shared by `real_shape.py` (random weights at Phi-3-mini's shape) and `same_weights.py` (SmolLM2's real ones).
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from benchmarks.report import BENCHMARKS_DIR
from slmflow.fetch.cache import build_once

# llama.cpp's file types by the names used in this project's tables.
QUANT_TYPES = {
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
}


def llama_cpp_python_version() -> str:
    for line in (BENCHMARKS_DIR / "requirements.txt").read_text().splitlines():
        if line.startswith("llama-cpp-python=="):
            return line.split("==", 1)[1].strip()
    raise RuntimeError("benchmarks/requirements.txt pins no llama-cpp-python")


def llama_cpp_source(cache: Path, sdist: Path | None = None) -> Path:
    """llama.cpp's source tree from the pinned llama-cpp-python sdist (`sdist`, or downloaded by pip)."""
    version = llama_cpp_python_version()

    def unpack(out_dir: Path) -> None:
        out_dir.mkdir(parents=True)
        archive = sdist
        if archive is None:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d"]
            subprocess.run([*command, str(out_dir), f"llama-cpp-python=={version}"], check=True)
            archive = next(out_dir.glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(archive) as opened:
            opened.extractall(out_dir, filter="data")

    sdist_dir = f"llama_cpp_python-{version}"
    return build_once(cache / "llama-cpp-python" / version, sdist_dir, unpack) / sdist_dir / "vendor" / "llama.cpp"


# llama.cpp's converter recognises a tokenizer's pre-tokenizer by hashing known models' encodings and
# refuses unknown ones; a tokenizer trained here is named explicitly (argv[2], "" for none).
CONVERT_SCRIPT = """
import runpy, sys
llama_dir, pre_tokenizer = sys.argv[1], sys.argv[2]
sys.path[:0] = [llama_dir, llama_dir + "/gguf-py"]
if pre_tokenizer:
    import conversion.base
    conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre_tokenizer
sys.argv = [llama_dir + "/convert_hf_to_gguf.py", *sys.argv[3:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def convert_to_f16(llama_dir: Path, checkpoint: Path, out_file: Path, pre_tokenizer: str = "", *extra: str) -> None:
    """An HF checkpoint to an f16 GGUF by llama.cpp's own `convert_hf_to_gguf.py`."""
    command = [sys.executable, "-c", CONVERT_SCRIPT, str(llama_dir), pre_tokenizer, str(checkpoint), *extra]
    command += ["--outtype", "f16", "--outfile", str(out_file)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed:\n{result.stderr[-3000:]}")


def quantize(source: Path, out_file: Path, kind: str) -> None:
    """A GGUF requantized by llama.cpp's `llama_model_quantize` to `kind` (a QUANT_TYPES key)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[kind])
    params.nthread = os.cpu_count() or 1
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(out_file).encode(), ctypes.byref(params))
    if code != 0:
        raise RuntimeError(f"llama_model_quantize to {kind} failed with code {code}")


def ensure_gguf(folder: Path, kind: str, make_f16) -> Path:
    """`folder/kind/model.gguf`, built once: `make_f16(out_file)` for f16, a quantization of that f16 otherwise."""

    def build(out_dir: Path) -> None:
        out_dir.mkdir(parents=True)
        if kind == "f16":
            make_f16(out_dir / "model.gguf")
        else:
            quantize(ensure_gguf(folder, "f16", make_f16), out_dir / "model.gguf", kind)

    return build_once(folder / kind, "model.gguf", build) / "model.gguf"


class LlamaRunner:
    """One llama.cpp model and context over its C API: greedy decoding of up to `rows` sequences at once."""

    def __init__(self, gguf: Path, threads: int, context: int, rows: int = 1, extra_buffers: bool = True) -> None:
        import llama_cpp as lc

        self._lc = lc
        lc.llama_backend_init()
        model_params = lc.llama_model_default_params()
        model_params.use_extra_bufts = extra_buffers
        self.model = lc.llama_model_load_from_file(str(gguf).encode(), model_params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf}")
        params = lc.llama_context_default_params()
        params.n_ctx, params.n_seq_max = context * rows, rows
        params.n_batch = params.n_ubatch = 512
        params.n_threads = params.n_threads_batch = threads
        params.kv_unified = True
        self.ctx = lc.llama_init_from_model(self.model, params)
        self.vocab_size = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        self.batch = lc.llama_batch_init(512, 0, rows)

    def close(self) -> None:
        lc = self._lc
        lc.llama_batch_free(self.batch)
        lc.llama_free(self.ctx)
        lc.llama_model_free(self.model)

    def generate(self, prompts: list[list[int]], new_tokens: int, stop_ids=frozenset()) -> dict:
        """Greedy tokens for every prompt (all of one length when several): exactly `new_tokens` per row unless
        a row meets a token of `stop_ids`. Returns seconds, tokens, ttft (first token of every row) and the ids."""
        import numpy as np

        self._lc.llama_memory_clear(self._lc.llama_get_memory(self.ctx), True)
        started = time.perf_counter()
        last = self._prefill(prompts)
        outputs: list[list[int]] = [[] for _ in prompts]
        position, ttft, live = len(prompts[0]), None, list(range(len(prompts)))
        while live:
            for row, index in zip(live, last, strict=True):
                logits = self._lc.llama_get_logits_ith(self.ctx, index)
                outputs[row].append(int(np.argmax(np.ctypeslib.as_array(logits, shape=(self.vocab_size,)))))
            ttft = ttft if ttft is not None else time.perf_counter() - started
            live = [r for r in live if len(outputs[r]) < new_tokens and outputs[r][-1] not in stop_ids]
            if live:
                last = self._step([(row, outputs[row][-1]) for row in live], position)
                position += 1
        tokens = sum(len(out) for out in outputs)
        return {"seconds": time.perf_counter() - started, "tokens": tokens, "ttft": ttft, "ids": outputs}

    def _prefill(self, prompts: list[list[int]]) -> list[int]:
        """Every prompt into the cache, 512 tokens a call; the batch index of each row's last logits.

        Only the last call's logits survive it: several rows must fit in one call together."""
        if len(prompts) > 1 and (sum(map(len, prompts)) > 512 or len(set(map(len, prompts))) > 1):
            raise ValueError("several prompts must be of one length and hold at most 512 tokens together")
        entries = [(row, token, position) for row, ids in enumerate(prompts) for position, token in enumerate(ids)]
        for start in range(0, len(entries), 512):
            chunk = entries[start : start + 512]
            ends = [i for i, (row, _, position) in enumerate(chunk) if position == len(prompts[row]) - 1]
            self._decode(chunk, set(ends))
        return ends

    def _step(self, tokens: list[tuple[int, int]], position: int) -> list[int]:
        self._decode([(row, token, position) for row, token in tokens], set(range(len(tokens))))
        return list(range(len(tokens)))

    def _decode(self, entries: list[tuple[int, int, int]], wanted: set[int]) -> None:
        batch = self.batch
        for i, (row, token, position) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, position, 1
            batch.seq_id[i][0], batch.logits[i] = row, i in wanted
        batch.n_tokens = len(entries)
        code = self._lc.llama_decode(self.ctx, batch)
        if code != 0:
            raise RuntimeError(f"llama_decode failed with code {code}")
