"""Speed of the logged ONNX chat model against a plain onnxruntime-genai loop, on two model sizes.

Every comparison is measured in the same process, interleaved, repeated; medians are reported with
ratios. The plain loop is what a user would write: encode, append_tokens, generate_next_token until
done, decode. Both sides generate exactly the same number of tokens (min_length = max_length).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from functools import partial
from pathlib import Path

from benchmarks.measure import (
    decode_tokens_per_second,
    median,
    paired_ratio,
    plain_loop,
    pyfunc_batch,
    pyfunc_single,
    pyfunc_ttft,
    read_bandwidth_gb_s,
    run_in_fresh_process,
    tokens_per_second,
    weight_bytes,
)
from benchmarks.report import write_report
from slmflow.evaluation.metrics import completion_tokens
from slmflow.evaluation.runner import peak_rss_mb

MODELS = {"tiny-phi3": "builtin:tiny-phi3", "bench-phi3-100m": "builtin:bench-phi3-100m"}
SETTLE_SECONDS = 0.2
COUNTRIES = ["Spain", "Kenya", "Peru", "Japan", "Norway", "Chile", "Egypt", "Poland"]


def messages(country: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"What is the capital of {country}?"}]


def pyfunc_sequential(pyfunc, countries: list[str], new_tokens: int) -> dict[str, float]:
    runs = [pyfunc_single(pyfunc, messages(c), new_tokens) for c in countries]
    return {"seconds": sum(r["seconds"] for r in runs), "tokens": sum(r["tokens"] for r in runs)}


def predict_sequential(pyfunc, countries: list[str], new_tokens: int) -> dict[str, float]:
    """Plain chat requests one after another, ending where each model ends them (any flavor)."""
    started = time.perf_counter()
    tokens = 0
    for country in countries:
        tokens += completion_tokens(pyfunc.predict({"messages": messages(country), "max_tokens": new_tokens}))
    return {"seconds": time.perf_counter() - started, "tokens": tokens}


def one_request_peak_rss_mb(kind: str, target: str, new_tokens: int) -> float:
    """Peak RSS of a fresh process that loads one model and answers one request."""
    return run_in_fresh_process(_one_request_rss, kind, target, new_tokens)


def _one_request_rss(kind: str, target: str, new_tokens: int) -> float:
    if kind == "plain":
        import onnxruntime_genai as og

        model = og.Model(target)
        tokenizer = og.Tokenizer(model)
        prompt = tokenizer.apply_chat_template(json.dumps(messages("Spain")), add_generation_prompt=True)
        plain_loop(model, tokenizer, [prompt], new_tokens)
    else:
        import mlflow

        pyfunc_single(mlflow.pyfunc.load_model(target), messages("Spain"), new_tokens)
    return peak_rss_mb()


def measure(name: str, source: str, new_tokens: int, repeats: int, store: Path) -> dict:
    import mlflow

    from slmflow.config import GenerationConfig, RuntimeConfig, Settings, SourceConfig
    from slmflow.fetch.sources import fetch_model
    from slmflow.flavors.onnx_chat import log_onnx_chat_model
    from slmflow.flavors.transformers_chat import log_transformers_chat_model

    fetched = fetch_model(SourceConfig(model=source), Settings.from_environment())
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    generation = GenerationConfig(max_new_tokens=new_tokens)
    with mlflow.start_run():
        onnx_uri = log_onnx_chat_model(fetched.onnx_dir, generation, RuntimeConfig())
        transformers_uri = log_transformers_chat_model(fetched.checkpoint_dir, SourceConfig(model=source), generation)
    pyfunc = mlflow.pyfunc.load_model(onnx_uri)
    # The plain loop drives the very og.Model the pyfunc loaded from the same folder: two instances
    # of one model differ by a percent or two in speed (memory placement), which is not the wrapper's doing.
    engine = pyfunc.unwrap_python_model().engine
    model, tokenizer = engine.model, engine.tokenizer
    prompts = [tokenizer.apply_chat_template(json.dumps(messages(c)), add_generation_prompt=True) for c in COUNTRIES]

    # Warm up every path once, then interleave the repeats so drift hits all of them alike.
    plain_loop(model, tokenizer, prompts[:1], new_tokens)
    pyfunc_single(pyfunc, messages(COUNTRIES[0]), new_tokens)
    samples: dict[str, list] = {k: [] for k in ("plain1", "pyfunc1", "plain8", "pyfunc8", "seq8", "ttft")}
    for repeat in range(repeats):
        country, prompt = COUNTRIES[repeat % len(COUNTRIES)], prompts[repeat % len(prompts)]
        runs = {
            "plain1": partial(plain_loop, model, tokenizer, [prompt], new_tokens),
            "pyfunc1": partial(pyfunc_single, pyfunc, messages(country), new_tokens),
            "plain8": partial(plain_loop, model, tokenizer, prompts, new_tokens),
            "pyfunc8": partial(pyfunc_batch, pyfunc, [messages(c) for c in COUNTRIES], new_tokens),
            "seq8": partial(pyfunc_sequential, pyfunc, COUNTRIES, new_tokens),
            "ttft": partial(pyfunc_ttft, pyfunc, messages(country), new_tokens),
        }
        # Alternate the order so that whatever runs just before (a session's spinning threads,
        # a warm cache) favours neither side; let idle thread pools settle between runs.
        for key in runs if repeat % 2 == 0 else reversed(runs):
            time.sleep(SETTLE_SECONDS)
            samples[key].append(runs[key]())

    # The transformers flavor comes last: torch's idle threads must not slow the ONNX measurements.
    transformers = mlflow.pyfunc.load_model(transformers_uri)
    for key, flavor in (("tf", transformers), ("onnx_natural", pyfunc)):
        predict_sequential(flavor, COUNTRIES[:1], new_tokens)
        samples[key] = []
    for _ in range(3):
        for key, flavor in (("tf", transformers), ("onnx_natural", pyfunc)):
            time.sleep(SETTLE_SECONDS)
            samples[key].append(predict_sequential(flavor, COUNTRIES[:4], new_tokens))

    plain1, pyfunc1 = tokens_per_second(samples["plain1"]), tokens_per_second(samples["pyfunc1"])
    plain8, pyfunc8, seq8 = (tokens_per_second(samples[k]) for k in ("plain8", "pyfunc8", "seq8"))
    plain_ttft = median([r["ttft"] for r in samples["plain1"]])
    decode = median([decode_tokens_per_second(r) for r in samples["plain1"]])
    bandwidth = read_bandwidth_gb_s()
    weights = weight_bytes(fetched.onnx_dir)
    bound = bandwidth * 1e9 / weights
    return {
        "model": name,
        "weights_mb": round(weights / 2**20, 2),
        "new_tokens": new_tokens,
        "repeats": repeats,
        "tokens_per_second": {
            "plain_single": plain1,
            "pyfunc_single": pyfunc1,
            "plain_batch8": plain8,
            "pyfunc_batch8": pyfunc8,
            "pyfunc_sequential8": seq8,
            "onnx_pyfunc_chat": tokens_per_second(samples["onnx_natural"]),
            "transformers_pyfunc_chat": tokens_per_second(samples["tf"]),
        },
        "ratios": {
            "pyfunc_single / plain_single": paired_ratio(samples["pyfunc1"], samples["plain1"]),
            "pyfunc_batch8 / plain_batch8": paired_ratio(samples["pyfunc8"], samples["plain8"]),
            "pyfunc_batch8 / pyfunc_sequential8": paired_ratio(samples["pyfunc8"], samples["seq8"]),
            "onnx / transformers (chat predict)": paired_ratio(samples["onnx_natural"], samples["tf"]),
        },
        "ttft_ms": {"plain": plain_ttft * 1000, "pyfunc_stream": median(samples["ttft"]) * 1000},
        "peak_rss_mb": {
            "plain": one_request_peak_rss_mb("plain", str(fetched.onnx_dir), new_tokens),
            "pyfunc": one_request_peak_rss_mb("pyfunc", onnx_uri, new_tokens),
        },
        "memory_bandwidth": {
            "read_gb_s": bandwidth,
            "decode_tokens_per_second": decode,
            "bound_tokens_per_second": bound,
            "fraction_of_bound": decode / bound,
        },
    }


def table(results: list[dict]) -> str:
    lines = [
        "| model | weights MB | plain 1 tok/s | pyfunc 1 tok/s | ratio (≥0.97) | plain 8 tok/s | pyfunc 8 tok/s "
        "| ratio (≥0.95) | 8 one-by-one tok/s | batch gain (≥1.5) | vs transformers | TTFT plain / stream ms "
        "| peak RSS plain / pyfunc MB | decode / bandwidth bound |",
        "|" + "---|" * 14,
    ]
    for r in results:
        t, q = r["tokens_per_second"], r["ratios"]
        lines.append(
            f"| {r['model']} | {r['weights_mb']} | {t['plain_single']:.0f} | {t['pyfunc_single']:.0f} "
            f"| {q['pyfunc_single / plain_single']:.3f} | {t['plain_batch8']:.0f} | {t['pyfunc_batch8']:.0f} "
            f"| {q['pyfunc_batch8 / plain_batch8']:.3f} | {t['pyfunc_sequential8']:.0f} "
            f"| {q['pyfunc_batch8 / pyfunc_sequential8']:.2f}x | {q['onnx / transformers (chat predict)']:.1f}x "
            f"| {r['ttft_ms']['plain']:.1f} / {r['ttft_ms']['pyfunc_stream']:.1f} "
            f"| {r['peak_rss_mb']['plain']:.0f} / {r['peak_rss_mb']['pyfunc']:.0f} "
            f"| {r['memory_bandwidth']['decode_tokens_per_second']:.0f} / "
            f"{r['memory_bandwidth']['bound_tokens_per_second']:.0f} tok/s "
            f"({r['memory_bandwidth']['fraction_of_bound']:.0%}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = []
    with tempfile.TemporaryDirectory() as store:
        for name in args.models:
            results.append(measure(name, MODELS[name], args.new_tokens, args.repeats, Path(store)))
            print(json.dumps(results[-1], indent=2), flush=True)
    write_report("onnx-chat-speed", results, table(results))


if __name__ == "__main__":
    main()
