"""Measuring helpers shared by the benchmarks: the plain onnxruntime-genai loop, calls into the
logged pyfunc model, memory bandwidth, weight sizes and same-run ratios."""

from __future__ import annotations

import multiprocessing
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Messages = list[dict[str, str]]


def median(values: list[float]) -> float:
    return statistics.median(values)


# The plain onnxruntime-genai loop: the reference the pyfunc model is held to.


def plain_loop(model, tokenizer, prompts: list[str], new_tokens: int) -> dict[str, float]:
    import onnxruntime_genai as og

    started = time.perf_counter()
    if len(prompts) == 1:
        tokens = tokenizer.encode(prompts[0])
        prompt_length = len(tokens)
    else:
        tokens = tokenizer.encode_batch(prompts)
        prompt_length = max(len(tokenizer.encode(p)) for p in prompts)
    params = og.GeneratorParams(model)
    total = prompt_length + new_tokens
    params.set_search_options(max_length=total, min_length=total, batch_size=len(prompts), do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(tokens)
    first = None
    generated = 0
    while not generator.is_done():
        generator.generate_next_token()
        generator.get_next_tokens()
        generated += 1
        if first is None:
            first = time.perf_counter() - started
    for row in range(len(prompts)):
        tokenizer.decode(generator.get_sequence(row)[prompt_length:])
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "tokens": generated * len(prompts), "ttft": first}


# The logged onnx-chat model, called as a user would: exactly new_tokens tokens per answer.


def pyfunc_single(pyfunc, messages: Messages, new_tokens: int) -> dict[str, float]:
    request = {"messages": messages, "max_tokens": new_tokens, "min_tokens": new_tokens}
    started = time.perf_counter()
    [out] = pyfunc.predict(request)
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "tokens": out["usage"]["completion_tokens"]}


def pyfunc_ttft(pyfunc, messages: Messages, new_tokens: int) -> float:
    request = {"messages": messages, "max_tokens": new_tokens, "min_tokens": new_tokens}
    started = time.perf_counter()
    for chunk in pyfunc.predict_stream(request):
        if chunk["choices"][0]["delta"].get("content"):
            return time.perf_counter() - started
    raise RuntimeError("no content streamed")


def pyfunc_batch(pyfunc, conversations: list[Messages], new_tokens: int) -> dict[str, float]:
    import pandas as pd

    frame = pd.DataFrame({"messages": conversations})
    started = time.perf_counter()
    outs = pyfunc.predict(frame, params={"max_tokens": new_tokens, "min_tokens": new_tokens})
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "tokens": sum(o["usage"]["completion_tokens"] for o in outs)}


# Rates and ratios.


def tokens_per_second(runs: list[dict[str, float]]) -> float:
    return median([r["tokens"] / r["seconds"] for r in runs])


def decode_tokens_per_second(run: dict[str, float]) -> float:
    """Tokens after the first over the time after the first: the prompt's cost left out."""
    return (run["tokens"] - 1) / (run["seconds"] - run["ttft"])


def paired_ratio(numerators: list[dict[str, float]], denominators: list[dict[str, float]]) -> float:
    """Median of the ratios of runs made back to back: drift of a shared machine cancels out."""
    return median(
        [
            (a["tokens"] / a["seconds"]) / (b["tokens"] / b["seconds"])
            for a, b in zip(numerators, denominators, strict=True)
        ]
    )


def paired_value_ratio(numerators: list[float], denominators: list[float]) -> float:
    """The same pairing for plain values (rates or times) measured back to back."""
    return median([a / b for a, b in zip(numerators, denominators, strict=True)])


# The machine and the model files.


def read_bandwidth_gb_s(repeats: int = 7) -> float:
    """Sequential read bandwidth of this machine: sum over a 512 MiB array, median of repeats."""
    import numpy as np

    data = np.ones(64 * 2**20, dtype=np.float64)
    data.sum()
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        data.sum()
        timings.append(time.perf_counter() - started)
    return data.nbytes / median(timings) / 1e9


def weight_bytes(onnx_dir: Path) -> int:
    return sum(p.stat().st_size for p in onnx_dir.iterdir() if p.suffix in {".onnx", ".data"})


def run_in_fresh_process(function: Callable[..., Any], *args: Any) -> Any:
    """Call a module-level function in a newly spawned process (a clean peak RSS, a cold load)."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(function, args)
