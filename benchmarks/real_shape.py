"""Phi-3-mini's real shape through the logged onnx-chat model, against llama.cpp on the same weights.

The model is the builtin `bench-phi3-mini-shape` recipe (hidden 3072, intermediate 8192, 32 heads,
vocabulary 32064, context 4096, random fp16 weights), built with `--layers` decoder layers. With two
or more layer counts, every time and size is also fitted linearly in the layer count and reported at
32 layers, labelled "extrapolated". llama.cpp gets the same checkpoint through its own
`convert_hf_to_gguf.py` (from the llama-cpp-python sdist) and `llama_model_quantize` (Q4_0,
Q4_K_M), and runs through llama-cpp-python with the same prompt token ids, threads and token counts.
Every runtime is measured in one process, alternating, repeated; ratios are medians of back-to-back
pairs. Opt-in and slow: `python -m benchmarks --real-shape` (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks import llamacpp
from benchmarks.measure import (
    decode_tokens_per_second,
    median,
    paired_ratio,
    paired_value_ratio,
    plain_loop,
    pyfunc_batch,
    pyfunc_single,
    pyfunc_ttft,
    read_bandwidth_gb_s,
    run_in_fresh_process,
    weight_bytes,
)
from benchmarks.report import write_report
from slmflow.config import BuilderOptions, GenerationConfig, RuntimeConfig, Settings
from slmflow.evaluation.runner import peak_rss_mb
from slmflow.fetch.builtin import (
    BuiltinSpec,
    builtin_spec,
    ensure_builtin_spec,
    filler_text,
    spec_fingerprint,
    with_layers,
)
from slmflow.fetch.onnx_build import build_onnx

SPEC = builtin_spec("bench-phi3-mini-shape")
FULL_LAYERS = SPEC.num_hidden_layers
BUILDER_SETTINGS = {
    f"b{options.block_size}-a{options.accuracy_level}": options
    for options in (
        BuilderOptions(block_size=32, accuracy_level=4),
        BuilderOptions(block_size=32, accuracy_level=1),
        BuilderOptions(block_size=128, accuracy_level=4),
        BuilderOptions(block_size=128, accuracy_level=1),
    )
}
# The logged onnx-chat model is built with the config defaults; the sweep compares the others with it.
DEFAULT_SETTING = f"b{BuilderOptions().block_size}-a{BuilderOptions().accuracy_level}"
QUANTS = ("q4_0", "q4_k_m")
PROMPT_LENGTHS = (512, 2048)
SHORT_PROMPT_WORDS = 24
BATCH = 4
SETTLE_SECONDS = 0.2


# Building: the checkpoint, its ONNX builds and its GGUF files, each cached once per recipe.


# Our tokenizer is a byte-level BPE with GPT-2's pre-tokenizer, trained here: llama.cpp's converter
# recognises pre-tokenizers by hashing known models' encodings and refuses unknown ones, so it is told
# the pre-tokenizer by name. Nothing else of the converter is changed.
def ensure_gguf(checkpoint: Path, name: str, kind: str, cache: Path) -> Path:
    """The checkpoint as GGUF: `f16` by llama.cpp's converter, a quantisation by llama_model_quantize."""

    def make_f16(out_file: Path) -> None:
        # llama.cpp gives a model whose general.name contains "phi3" Phi-3's SentencePiece special
        # tokens (`</s>`, `<unk>`) and fails to load without them; the name is metadata only.
        source = llamacpp.llama_cpp_source(cache)
        llamacpp.convert_to_f16(source, checkpoint, out_file, "gpt-2", "--model-name", "bench-mini-shape")

    return llamacpp.ensure_gguf(cache / "gguf" / name, kind, make_f16)


def streamed_weight_bytes(onnx_dir: Path) -> int:
    """Bytes every decoded token reads: the MatMulNBits weights, scales and zero points.

    The embedding table is not streamed (one row is gathered per token), so it does not count.
    """
    import onnx

    total = 0
    for model_file in onnx_dir.glob("*.onnx"):
        graph = onnx.load(str(model_file), load_external_data=False).graph
        sizes = {}
        for tensor in graph.initializer:
            external = {entry.key: entry.value for entry in tensor.external_data}
            sizes[tensor.name] = int(external.get("length", 0)) or len(tensor.raw_data)
        for node in graph.node:
            if node.op_type == "MatMulNBits":
                total += sum(sizes.get(name, 0) for name in node.input[1:])
    return total


# Prompts: the same token ids for both runtimes.


def prompt_messages(tokenizer, target_tokens: int) -> list[dict[str, str]]:
    """A user message of filler words whose chat-formatted prompt is at most `target_tokens` long."""
    words = " ".join(filler_text(target_tokens * 2, seed=1)).split()

    def length(count: int) -> int:
        text = tokenizer.apply_chat_template(json.dumps(user(words[:count])), add_generation_prompt=True)
        return len(tokenizer.encode(text))

    low, high = 1, len(words)
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if length(middle) <= target_tokens else (low, middle - 1)
    return user(words[:low])


def user(words: list[str]) -> list[dict[str, str]]:
    return [{"role": "user", "content": " ".join(words)}]


def prompt_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    text = tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
    return [int(token) for token in tokenizer.encode(text)]


def prompt_text(tokenizer, messages: list[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)


# llama.cpp through llama-cpp-python.


def load_llama(gguf: Path, threads: int, context: int) -> llamacpp.LlamaRunner:
    """llama.cpp over its C API, weight repacking off (its AMX kernels die with an illegal instruction on
    this machine's virtual CPU, through llama-cpp-python's `Llama` too)."""
    return llamacpp.LlamaRunner(gguf, threads, context, extra_buffers=False)


def llama_generate(llm: llamacpp.LlamaRunner, tokens: list[int], new_tokens: int) -> dict[str, float]:
    """Greedy, exactly new_tokens tokens, from an empty cache."""
    return llm.generate([tokens], new_tokens)


def pyfunc_stream(pyfunc, messages: list[dict[str, str]], new_tokens: int) -> dict[str, float]:
    """The logged model streaming exactly new_tokens tokens: its time to first token and its decode rate."""
    request = {"messages": messages, "max_tokens": new_tokens, "min_tokens": new_tokens}
    started = time.perf_counter()
    first = None
    for chunk in pyfunc.predict_stream(request):
        if first is None and chunk["choices"][0]["delta"].get("content"):
            first = time.perf_counter() - started
    return {"seconds": time.perf_counter() - started, "tokens": new_tokens, "ttft": first}


def first_token_seconds(generate: Callable[..., dict[str, float]], *args: Any) -> float:
    """Time to first token of a generate function asked for one token."""
    return generate(*args, 1)["ttft"]


# Fresh processes: load time and peak RSS of one model answering one 512-token prompt.


def _pyfunc_cold(model_uri: str, messages: list[dict[str, str]], new_tokens: int) -> dict[str, float]:
    import mlflow

    started = time.perf_counter()
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    loaded = time.perf_counter() - started
    pyfunc_single(pyfunc, messages, new_tokens)
    return {"load_seconds": loaded, "peak_rss_mb": peak_rss_mb()}


def _llama_cold(gguf: str, tokens: list[int], new_tokens: int, threads: int, context: int) -> dict[str, float]:
    started = time.perf_counter()
    llm = load_llama(Path(gguf), threads, context)
    loaded = time.perf_counter() - started
    llama_generate(llm, tokens, new_tokens)
    return {"load_seconds": loaded, "peak_rss_mb": peak_rss_mb()}


# One layer count: every runtime, alternating.


def interleave(runs: dict, repeats: int, samples: dict[str, list]) -> None:
    """Repeat every run, alternating the order so that what ran just before favours nobody."""
    for repeat in range(repeats):
        for key in runs if repeat % 2 == 0 else reversed(runs):
            time.sleep(SETTLE_SECONDS)
            samples.setdefault(key, []).append(runs[key]())


def measure_layers(layers: int, args: argparse.Namespace, cache: Path, store: Path) -> dict:
    """Every runtime on the model with `layers` decoder layers: decode, time to first token, cold start and,
    with args.sweep, the builder and runtime settings."""
    import mlflow

    onnx_dirs, ggufs = build_models(with_layers(SPEC, layers), args.sweep, cache)
    onnx_dir = onnx_dirs[DEFAULT_SETTING]
    model_uri = log_onnx_chat(onnx_dir, args, store)
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    tokenizer = pyfunc.unwrap_python_model().engine.tokenizer

    short = short_chats()
    long = {length: prompt_messages(tokenizer, length) for length in PROMPT_LENGTHS}
    context = max(PROMPT_LENGTHS) + args.new_tokens + 8
    llamas = {kind: load_llama(path, args.threads, context) for kind, path in ggufs.items()}
    samples, bandwidth = measure_decode(pyfunc, llamas, short, args)
    ttft = measure_ttft(pyfunc, llamas, long, args.ttft_repeats)
    for llm in llamas.values():  # free llama.cpp's memory before the sweep
        llm.close()
    del llamas

    short_text = prompt_text(tokenizer, short[0])
    sweep = measure_sweep(onnx_dirs, tokenizer, short_text, long[512], args) if args.sweep else None
    cold = measure_cold(model_uri, ggufs, long[512], prompt_ids(tokenizer, long[512]), context, args)
    decode = {key: median([decode_tokens_per_second(r) for r in samples[key]]) for key in ("onnx_stream", *QUANTS)}
    bound_bytes = streamed_weight_bytes(onnx_dir)
    return {
        "layers": layers,
        "threads": args.threads,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "prompt_tokens": {
            "short": len(prompt_ids(tokenizer, short[0])),
            **{str(length): len(prompt_ids(tokenizer, messages)) for length, messages in long.items()},
        },
        "weights_mb": weights_mb(onnx_dir, bound_bytes, ggufs),
        "decode_seconds_per_token": {key: 1 / rate for key, rate in decode.items()},
        "seconds_per_token": {
            key: median([r["seconds"] / r["tokens"] for r in samples[key]])
            for key in ("onnx_plain", "onnx_pyfunc", "onnx_plain_batch", "onnx_pyfunc_batch")
        },
        "ttft_seconds": {length: {k: median(v) for k, v in found.items()} for length, found in ttft.items()},
        "ratios": paired_ratios(samples, ttft),
        "memory_bandwidth": memory_bandwidth(decode["onnx_stream"], bound_bytes, bandwidth),
        "cold": cold,
        "sweep": sweep,
    }


def build_models(spec: BuiltinSpec, sweep: bool, cache: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """The checkpoint's ONNX builds (the default setting, or every setting for the sweep) and its GGUF files."""
    name = f"{spec.name}-{spec_fingerprint(spec)}"
    started = time.perf_counter()
    checkpoint = ensure_builtin_spec(spec, cache)
    onnx_dirs = {
        setting: build_onnx(checkpoint, cache / "onnx" / f"{name}-{setting}", options)
        for setting, options in BUILDER_SETTINGS.items()
        if setting == DEFAULT_SETTING or sweep
    }
    ggufs = {kind: ensure_gguf(checkpoint, name, kind, cache) for kind in QUANTS}
    print(f"{spec.name}: built in {time.perf_counter() - started:.0f} s", flush=True)
    return onnx_dirs, ggufs


def log_onnx_chat(onnx_dir: Path, args: argparse.Namespace, store: Path) -> str:
    """The ONNX build logged as the onnx-chat model, as the pipeline logs it, into a throwaway store."""
    import mlflow

    from slmflow.flavors.onnx_chat import log_onnx_chat_model

    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    with mlflow.start_run():
        return log_onnx_chat_model(
            onnx_dir, GenerationConfig(max_new_tokens=args.new_tokens), RuntimeConfig(intra_op_num_threads=args.threads)
        )


def short_chats() -> list[list[dict[str, str]]]:
    """BATCH different short user turns; the first is the one-request prompt."""
    words = " ".join(filler_text(SHORT_PROMPT_WORDS * BATCH, seed=2)).split()
    return [user(words[i * SHORT_PROMPT_WORDS : (i + 1) * SHORT_PROMPT_WORDS]) for i in range(BATCH)]


def measure_decode(
    pyfunc, llamas: dict[str, llamacpp.LlamaRunner], short: list[list[dict[str, str]]], args: argparse.Namespace
) -> tuple[dict[str, list], list[float]]:
    """Decode runs on the short prompts (plain loop, pyfunc, stream, batches, llama.cpp), each warmed once, then
    alternated args.repeats times; with the memory read bandwidth measured before and after."""
    engine = pyfunc.unwrap_python_model().engine
    model, tokenizer, new_tokens = engine.model, engine.tokenizer, args.new_tokens
    short_ids, short_text = prompt_ids(tokenizer, short[0]), prompt_text(tokenizer, short[0])
    runs = {
        "onnx_plain": partial(plain_loop, model, tokenizer, [short_text], new_tokens),
        "onnx_pyfunc": partial(pyfunc_single, pyfunc, short[0], new_tokens),
        "onnx_stream": partial(pyfunc_stream, pyfunc, short[0], new_tokens),
        "onnx_plain_batch": partial(
            plain_loop, model, tokenizer, [prompt_text(tokenizer, m) for m in short], new_tokens
        ),
        "onnx_pyfunc_batch": partial(pyfunc_batch, pyfunc, short, new_tokens),
        **{kind: partial(llama_generate, llm, short_ids, new_tokens) for kind, llm in llamas.items()},
    }
    for run in runs.values():  # warm every path once
        run()
    bandwidth = [read_bandwidth_gb_s()]
    samples: dict[str, list] = {}
    interleave(runs, args.repeats, samples)
    bandwidth.append(read_bandwidth_gb_s())
    return samples, bandwidth


def measure_ttft(
    pyfunc, llamas: dict[str, llamacpp.LlamaRunner], long: dict[int, list[dict[str, str]]], repeats: int
) -> dict[str, dict[str, list[float]]]:
    """Time to first token of the pyfunc and of llama.cpp on each long prompt, alternated, by prompt length."""
    tokenizer = pyfunc.unwrap_python_model().engine.tokenizer
    ttft: dict[str, dict[str, list[float]]] = {}
    for length, messages in long.items():
        ids = prompt_ids(tokenizer, messages)
        runs = {
            "onnx_pyfunc": partial(pyfunc_ttft, pyfunc, messages, 8),
            **{kind: partial(first_token_seconds, llama_generate, llm, ids) for kind, llm in llamas.items()},
        }
        found: dict[str, list] = {}
        interleave(runs, repeats, found)
        ttft[str(length)] = found
    return ttft


def measure_cold(
    model_uri: str,
    ggufs: dict[str, Path],
    messages: list[dict[str, str]],
    ids: list[int],
    context: int,
    args: argparse.Namespace,
) -> dict[str, dict[str, float]]:
    """Load time and peak RSS of each runtime answering one prompt, each in a fresh process."""
    return {
        "onnx_pyfunc": run_in_fresh_process(_pyfunc_cold, model_uri, messages, args.new_tokens),
        **{
            kind: run_in_fresh_process(_llama_cold, str(path), ids, args.new_tokens, args.threads, context)
            for kind, path in ggufs.items()
        },
    }


def weights_mb(onnx_dir: Path, bound_bytes: int, ggufs: dict[str, Path]) -> dict[str, float]:
    return {
        "onnx_int4": weight_bytes(onnx_dir) / 2**20,
        "onnx_streamed_per_token": bound_bytes / 2**20,
        **{kind: path.stat().st_size / 2**20 for kind, path in ggufs.items()},
    }


def paired_ratios(samples: dict[str, list], ttft: dict[str, dict[str, list[float]]]) -> dict[str, float]:
    """Each comparison as the median of back-to-back pairs: onnx vs llama.cpp decode, pyfunc overhead, ttft."""
    return {
        **{
            f"onnx decode / llama.cpp {kind}": paired_value_ratio(
                [decode_tokens_per_second(r) for r in samples["onnx_stream"]],
                [decode_tokens_per_second(r) for r in samples[kind]],
            )
            for kind in QUANTS
        },
        "pyfunc / plain": paired_ratio(samples["onnx_pyfunc"], samples["onnx_plain"]),
        "pyfunc batch / plain batch": paired_ratio(samples["onnx_pyfunc_batch"], samples["onnx_plain_batch"]),
        **{
            f"ttft {length} llama.cpp {kind} / onnx": paired_value_ratio(found[kind], found["onnx_pyfunc"])
            for length, found in ttft.items()
            for kind in QUANTS
        },
    }


def memory_bandwidth(decode_rate: float, bound_bytes: int, bandwidth: list[float]) -> dict[str, float]:
    """How close the decode rate (tokens/s) comes to the rate at which the machine streams the weights a token reads."""
    read_gb_s = median(bandwidth)
    return {
        "read_gb_s": read_gb_s,
        "bound_tokens_per_second": read_gb_s * 1e9 / bound_bytes,
        "fraction_of_bound": decode_rate * bound_bytes / (read_gb_s * 1e9),
    }


def measure_sweep(onnx_dirs: dict[str, Path], tokenizer, short_text: str, long_messages, args) -> dict:
    """Builder and runtime settings through the plain loop, all loaded at once and alternated:
    decode rate and 512-token time to first token, each paired with the default setting's."""
    from slmflow.chat.onnx.engine import OnnxChatEngine

    long_text = prompt_text(tokenizer, long_messages)
    variants = {f"{setting} t{args.threads}": (path, args.threads) for setting, path in onnx_dirs.items()}
    variants.update({f"{DEFAULT_SETTING} t{t}": (onnx_dirs[DEFAULT_SETTING], t) for t in (0, 1, 2)})
    engines = {label: OnnxChatEngine(path, intra_op_num_threads=threads) for label, (path, threads) in variants.items()}
    runs = {}
    for label, engine in engines.items():
        runs[f"{label}|decode"] = partial(plain_loop, engine.model, engine.tokenizer, [short_text], args.new_tokens)
        runs[f"{label}|ttft"] = partial(first_token_seconds, plain_loop, engine.model, engine.tokenizer, [long_text])
        runs[f"{label}|decode"]()
    found: dict[str, list] = {}
    interleave(runs, args.sweep_repeats, found)
    reference = f"{DEFAULT_SETTING} t{args.threads}"

    def rates(label: str) -> list[float]:
        return [decode_tokens_per_second(r) for r in found[f"{label}|decode"]]

    def ttfts(label: str) -> list[float]:
        return found[f"{label}|ttft"]

    return {
        label: {
            "decode_tokens_per_second": median(rates(label)),
            "ttft_512_seconds": median(ttfts(label)),
            "decode_vs_default": paired_value_ratio(rates(label), rates(reference)),
            "ttft_512_vs_default": paired_value_ratio(ttfts(label), ttfts(reference)),
        }
        for label in engines
    }


# Extrapolation to 32 layers and the report.


def extrapolate(results: list[dict], layers: int = FULL_LAYERS) -> dict:
    """Fit every time and size as a + b * layers through the two largest layer counts; evaluate at `layers`."""
    low, high = sorted(results, key=lambda r: r["layers"])[-2:]
    scale = (layers - high["layers"]) / (high["layers"] - low["layers"])

    def fit(a, b):
        if isinstance(b, dict):
            return {key: fit(a[key], b[key]) for key in b}
        return b + (b - a) * scale

    keys = ("weights_mb", "decode_seconds_per_token", "seconds_per_token", "ttft_seconds", "cold")
    fitted = {key: fit(low[key], high[key]) for key in keys}
    decode, per_token = fitted["decode_seconds_per_token"], fitted["seconds_per_token"]
    read_gb_s = high["memory_bandwidth"]["read_gb_s"]
    streamed = fitted["weights_mb"]["onnx_streamed_per_token"] * 2**20
    fitted["ratios"] = {
        **{f"onnx decode / llama.cpp {kind}": decode[kind] / decode["onnx_stream"] for kind in QUANTS},
        "pyfunc / plain": per_token["onnx_plain"] / per_token["onnx_pyfunc"],
        "pyfunc batch / plain batch": per_token["onnx_plain_batch"] / per_token["onnx_pyfunc_batch"],
        **{
            f"ttft {length} llama.cpp {kind} / onnx": found[kind] / found["onnx_pyfunc"]
            for length, found in fitted["ttft_seconds"].items()
            for kind in QUANTS
        },
    }
    fitted["memory_bandwidth"] = {
        "read_gb_s": read_gb_s,
        "bound_tokens_per_second": read_gb_s * 1e9 / streamed,
        "fraction_of_bound": streamed / (read_gb_s * 1e9) / decode["onnx_stream"],
    }
    return {"layers": layers, "extrapolated_from": [low["layers"], high["layers"]], **fitted}


def rows(result: dict) -> list[str]:
    label = f"{result['layers']} layer{'s' if result['layers'] > 1 else ''}" + (
        " (extrapolated)" if "extrapolated_from" in result else ""
    )
    weights, ttft, ratios = result["weights_mb"], result["ttft_seconds"], result["ratios"]
    decode, cold = result["decode_seconds_per_token"], result["cold"]
    bound = result["memory_bandwidth"]
    per_token = result["seconds_per_token"]
    onnx = (
        f"| {label} | ONNX int4 {DEFAULT_SETTING} (onnx-chat) | {weights['onnx_int4']:.0f} "
        f"| {1 / decode['onnx_stream']:.1f} | {1 / per_token['onnx_pyfunc_batch']:.1f} "
        f"| {ttft['512']['onnx_pyfunc']:.2f} | {ttft['2048']['onnx_pyfunc']:.2f} "
        f"| {cold['onnx_pyfunc']['peak_rss_mb']:.0f} | {cold['onnx_pyfunc']['load_seconds']:.1f} "
        f"| {bound['fraction_of_bound']:.0%} of {bound['bound_tokens_per_second']:.1f} tok/s "
        f"| {ratios['pyfunc / plain']:.3f} / {ratios['pyfunc batch / plain batch']:.3f} | reference |"
    )
    lines = [onnx]
    for kind in QUANTS:
        lines.append(
            f"| {label} | llama.cpp {kind.upper()} | {weights[kind]:.0f} | {1 / decode[kind]:.1f} | n/a "
            f"| {ttft['512'][kind]:.2f} | {ttft['2048'][kind]:.2f} | {cold[kind]['peak_rss_mb']:.0f} "
            f"| {cold[kind]['load_seconds']:.1f} | - | - | {ratios[f'onnx decode / llama.cpp {kind}']:.2f}x decode; "
            f"TTFT {ratios[f'ttft 512 llama.cpp {kind} / onnx']:.2f}x / "
            f"{ratios[f'ttft 2048 llama.cpp {kind} / onnx']:.2f}x |"
        )
    return lines


def table(results: list[dict], extrapolated: dict | None) -> str:
    lines = [
        "| model | runtime | weights MB | decode tok/s | batch of 4, total tok/s | TTFT 512 s | TTFT 2048 s "
        "| peak RSS MB | load s | decode / bandwidth bound | pyfunc / plain (1 / batch 4) "
        "| ONNX vs this runtime: decode rate ratio; TTFT ratio (its time / ONNX's), 512 / 2048 |",
        "|" + "---|" * 12,
    ]
    for result in [*results, *([extrapolated] if extrapolated else [])]:
        lines += rows(result)
    return "\n".join(lines)


def sweep_table(results: list[dict]) -> str:
    sweep = next(r for r in results if r["sweep"])
    lines = [
        f"Sweep on {sweep['layers']} layers, plain loop, paired with the default ({DEFAULT_SETTING}, "
        f"{sweep['threads']} threads):",
        "",
        "| setting | decode tok/s | decode vs default | TTFT 512 s | TTFT vs default |",
        "|---|---|---|---|---|",
    ]
    for label, found in sweep["sweep"].items():
        lines.append(
            f"| {label} | {found['decode_tokens_per_second']:.1f} | {found['decode_vs_default']:.3f} "
            f"| {found['ttft_512_seconds']:.2f} | {found['ttft_512_vs_default']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 4], help="decoder layers to build (≤ 32)")
    parser.add_argument("--threads", type=int, default=2, help="threads for both runtimes")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ttft-repeats", type=int, default=3)
    parser.add_argument("--sweep-repeats", type=int, default=5)
    parser.add_argument("--no-sweep", dest="sweep", action="store_false", help="skip the settings sweep")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cache = Settings.from_environment().cache_dir / "real-shape"
    results = []
    with tempfile.TemporaryDirectory() as store:
        for layers in sorted(args.layers):
            # The settings sweep runs once, on the largest model: the closest to the real shape.
            options = argparse.Namespace(**{**vars(args), "sweep": args.sweep and layers == max(args.layers)})
            results.append(measure_layers(layers, options, cache, Path(store)))
            print(json.dumps(results[-1], indent=2), flush=True)
    extrapolated = extrapolate(results) if len(results) > 1 and max(args.layers) < FULL_LAYERS else None
    report = {"measured": results, "extrapolated": extrapolated}
    text = table(results, extrapolated) + ("\n\n" + sweep_table(results) if args.sweep else "")
    write_report("real-shape", report, text)


if __name__ == "__main__":
    main()
