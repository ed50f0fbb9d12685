"""This project's OpenAI-compatible server against `mlflow models serve`, on the same logged onnx-chat model.

Both servers run as real processes on loopback, each in its own process group, both up at once
(an idle server takes no CPU). Each is sent the same chat requests at 1, 4 and 16 concurrent
clients, the two servers back to back at each level, alternating which goes first; every request
generates exactly `new_tokens` tokens (`min_tokens` = `max_tokens`), so both do the same work.
Ratios are medians of the back-to-back ratios (the machine is shared and noisy). Time to first token is
measured on our server with `stream: true`; `mlflow models serve` cannot stream, so its first
token arrives with its whole answer.

`python -m benchmarks.serving [--models tiny-phi3 bench-phi3-100m] [--rounds 3] [--new-tokens 64]`
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

from benchmarks.report import write_report
from slmflow.evaluation.metrics import completion_tokens
from testkit.processes import free_port, launched_server

MODELS = {"tiny-phi3": "builtin:tiny-phi3", "bench-phi3-100m": "builtin:bench-phi3-100m"}
CLIENTS = (1, 4, 16)
REQUESTS_PER_CLIENT = {1: 6, 4: 3, 16: 2}
COUNTRIES = ["Spain", "Kenya", "Peru", "Japan", "Norway", "Chile", "Egypt", "Poland"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def body(target: Target, index: int, new_tokens: int) -> dict:
    """A chat request for exactly `new_tokens` tokens: `min_tokens` here, or the target's own way."""
    return {
        "messages": [{"role": "user", "content": f"What is the capital of {COUNTRIES[index % len(COUNTRIES)]}?"}],
        "max_tokens": new_tokens,
        "temperature": 0,
        **(target.exact_length or {"min_tokens": new_tokens}),
    }


class Target:
    """A server under test: how to start it, where to send a chat request, and how to ask for an exact length."""

    def __init__(
        self, name: str, command: list[str], port: int, path: str, ready: str, exact_length: dict | None = None
    ) -> None:
        self.name, self.command, self.port, self.path, self.ready = name, command, port, path, ready
        self.exact_length = exact_length

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def slmflow_target(model_uri: str) -> Target:
    port = free_port()
    command = [sys.executable, "-m", "slmflow.serve", "--model-uri", model_uri, "--port", str(port)]
    command += ["--log-level", "warning", "--max-batch-size", "16", "--max-queue", "64"]
    return Target("slmflow.serve", command, port, "/v1/chat/completions", "/ready")


def targets(model_uri: str) -> list[Target]:
    theirs = free_port()
    return [
        slmflow_target(model_uri),
        Target(
            "mlflow models serve",
            [
                sys.executable,
                "-m",
                "mlflow",
                "models",
                "serve",
                "-m",
                model_uri,
                "--env-manager",
                "local",
                "--host",
                "127.0.0.1",
                "--port",
                str(theirs),
            ],
            theirs,
            "/invocations",
            "/ping",
        ),
    ]


def answered_tokens(payload) -> int:
    """Completion tokens of one answer: ours is a chat.completion, MLflow's scoring server wraps a list of one."""
    if isinstance(payload, dict) and "predictions" in payload:
        payload = payload["predictions"]
    return completion_tokens(payload)


def load_round(target: Target, clients: int, new_tokens: int) -> dict:
    """`clients` threads, each sending its requests one after another; tokens/s over the round's wall time."""
    per_client = REQUESTS_PER_CLIENT[clients]

    def client(number: int) -> list[tuple[float, int]]:
        results = []
        with requests.Session() as http:
            for request in range(per_client):
                started = time.perf_counter()
                response = http.post(
                    target.base + target.path, json=body(target, number * per_client + request, new_tokens), timeout=600
                )
                response.raise_for_status()
                results.append((time.perf_counter() - started, answered_tokens(response.json())))
        return results

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = [r for batch in pool.map(client, range(clients)) for r in batch]
    wall = time.perf_counter() - started
    latencies = [seconds for seconds, _ in results]
    tokens = sum(count for _, count in results)
    if tokens != len(results) * new_tokens:
        raise RuntimeError(f"{target.name}: expected {new_tokens} tokens per answer, got {tokens / len(results)}")
    return {
        "tokens_per_second": tokens / wall,
        "p50_s": statistics.median(latencies),
        "p95_s": percentile(latencies, 0.95),
    }


def streaming_ttft(target: Target, clients: int, new_tokens: int) -> list[float]:
    """Times to the first content chunk of `clients` streams opened at once."""

    def first_token(index: int) -> float:
        started = time.perf_counter()
        payload = {**body(target, index, new_tokens), "stream": True}
        with requests.post(target.base + target.path, json=payload, stream=True, timeout=600) as response:
            lines = response.iter_lines(chunk_size=None, decode_unicode=True)  # lines as they arrive
            for line in lines:
                if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                    ttft = time.perf_counter() - started
                    break
            for _ in lines:  # read to the end: the next round starts from an idle server
                pass
        return ttft

    with ThreadPoolExecutor(max_workers=clients) as pool:
        return list(pool.map(first_token, range(clients)))


Samples = dict[str, dict[int, list[dict]]]


def alternate_levels(servers: list[Target], round_number: int, new_tokens: int, samples: Samples, label: str) -> None:
    """One round: every client level, the servers back to back, alternating which goes first
    (the load of a shared machine drifts over minutes); results appended to `samples[server][clients]`."""
    for level, clients in enumerate(CLIENTS):
        order = servers if (round_number + level) % 2 == 0 else list(reversed(servers))
        for target in order:
            result = load_round(target, clients, new_tokens)
            samples.setdefault(target.name, {}).setdefault(clients, []).append(result)
            print(label, round_number, target.name, clients, json.dumps(result), flush=True)


def og_engine_against_plain_batches(onnx_dir: Path, requests: int, new_tokens: int, repeats: int = 3) -> dict:
    """onnxruntime-genai's own continuous-batching `og.Engine` against one plain Generator batch, in process.

    Our models have no paged key-value cache, so the Engine runs in its static-batching mode (its
    dynamic mode refuses them). Both generate `new_tokens` greedy tokens for `requests` prompts."""
    import onnxruntime_genai as og

    prompts = [
        f"<|user|>\nWhat is the capital of {COUNTRIES[index % len(COUNTRIES)]}?<|end|>\n<|assistant|>\n"
        for index in range(requests)
    ]
    config = og.Config(str(onnx_dir))
    config.overlay(json.dumps({"engine": {"static_batching": {"max_batch_size": requests}}}))
    model = og.Model(config)
    tokenizer = og.Tokenizer(model)
    encoded = [np.asarray(tokenizer.encode(prompt), dtype=np.int32) for prompt in prompts]

    def plain() -> float:
        started = time.perf_counter()
        longest = max(len(ids) for ids in encoded)
        batch = np.full((requests, longest), 0, dtype=np.int32)
        for row, ids in enumerate(encoded):
            batch[row, : len(ids)] = ids
        params = og.GeneratorParams(model)
        total = longest + new_tokens
        params.set_search_options(max_length=total, min_length=total, batch_size=requests, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(batch)
        while not generator.is_done():
            generator.generate_next_token()
        return requests * new_tokens / (time.perf_counter() - started)

    def engine() -> float:
        started = time.perf_counter()
        runner = og.Engine(model)
        handles = []
        for ids in encoded:
            handle = runner.create_request()
            options = og.TurnOptions(handle)
            options.set_do_sample(False)
            options.set_max_generated_tokens(new_tokens)
            options.set_min_generated_tokens(new_tokens)
            handle.begin_turn(ids, options)
            handles.append(handle)
        buffer = runner.create_event_buffer(4 * requests)
        tokens = 0
        while runner.has_pending_requests():
            tokens += len(runner.run(buffer))
        elapsed = time.perf_counter() - started
        if tokens != requests * new_tokens:
            raise RuntimeError(f"og.Engine generated {tokens} tokens, expected {requests * new_tokens}")
        return tokens / elapsed

    plain(), engine()  # warm up
    runs = {"plain": [], "engine": []}
    for repeat in range(repeats):
        for key, run in (
            (("plain", plain), ("engine", engine)) if repeat % 2 == 0 else (("engine", engine), ("plain", plain))
        ):
            runs[key].append(run())
    return {
        "requests": requests,
        "plain_batch_tokens_per_second": statistics.median(runs["plain"]),
        "og_engine_tokens_per_second": statistics.median(runs["engine"]),
        "og_engine_over_plain": statistics.median(e / p for e, p in zip(runs["engine"], runs["plain"], strict=True)),
    }


def measure(name: str, source: str, new_tokens: int, rounds: int, store: Path, logs: Path) -> dict:
    import mlflow

    from slmflow.config import GenerationConfig, RuntimeConfig, Settings, SourceConfig
    from slmflow.fetch.sources import fetch_model
    from slmflow.flavors.onnx_chat import log_onnx_chat_model

    fetched = fetch_model(SourceConfig(model=source), Settings.from_environment())
    engine_probe = og_engine_against_plain_batches(fetched.onnx_dir, 16, new_tokens)
    print(name, "og.Engine vs plain batch", json.dumps(engine_probe), flush=True)
    tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run():
        model_uri = log_onnx_chat_model(fetched.onnx_dir, GenerationConfig(max_new_tokens=new_tokens), RuntimeConfig())
    samples: Samples = {}
    ttft: dict[int, list[float]] = {clients: [] for clients in (1, 16)}
    servers = targets(model_uri)
    with contextlib.ExitStack() as running:
        for target in servers:  # both up at once: an idle server takes no CPU and no memory bandwidth
            log = logs / f"{name}-{target.port}.log"
            running.enter_context(
                launched_server(target.command, target.base + target.ready, log, MLFLOW_TRACKING_URI=tracking_uri)
            )
            load_round(target, 1, new_tokens)  # warm up
        for round_number in range(rounds):
            alternate_levels(servers, round_number, new_tokens, samples, name)
            for clients in ttft:
                ttft[clients].append(statistics.median(streaming_ttft(servers[0], clients, new_tokens)))
    ours, theirs = samples["slmflow.serve"], samples["mlflow models serve"]
    levels = {}
    for clients in CLIENTS:
        paired = list(zip(ours[clients], theirs[clients], strict=True))
        levels[clients] = {
            "slmflow_tokens_per_second": statistics.median(r["tokens_per_second"] for r in ours[clients]),
            "mlflow_tokens_per_second": statistics.median(r["tokens_per_second"] for r in theirs[clients]),
            "tokens_per_second_ratio": statistics.median(
                a["tokens_per_second"] / b["tokens_per_second"] for a, b in paired
            ),
            "slmflow_p50_s": statistics.median(r["p50_s"] for r in ours[clients]),
            "slmflow_p95_s": statistics.median(r["p95_s"] for r in ours[clients]),
            "mlflow_p50_s": statistics.median(r["p50_s"] for r in theirs[clients]),
            "mlflow_p95_s": statistics.median(r["p95_s"] for r in theirs[clients]),
            "p95_ratio": statistics.median(a["p95_s"] / b["p95_s"] for a, b in paired),
        }
    return {
        "model": name,
        "new_tokens": new_tokens,
        "rounds": rounds,
        "requests_per_client": REQUESTS_PER_CLIENT,
        "clients": levels,
        "slmflow_streaming_ttft_s": {clients: statistics.median(values) for clients, values in ttft.items()},
        "og_engine_probe": engine_probe,
        "raw": samples,
    }


def table(results: list[dict]) -> str:
    """The README tables; `results` as measured or as read back from results/serving.json (string keys)."""
    lines = [
        "| model | clients | slmflow tok/s | mlflow tok/s | tok/s ratio | slmflow p50 / p95 s | mlflow p50 / p95 s "
        "| p95 ratio | goal |",
        "|" + "---|" * 9,
    ]
    goals = {1: "tok/s ≥ 0.95x", 4: "", 16: "tok/s ≥ 1.5x, p95 ≤ 1.2x"}
    for r in results:
        for clients, level in r["clients"].items():
            lines.append(
                f"| {r['model']} | {clients} | {level['slmflow_tokens_per_second']:.0f} "
                f"| {level['mlflow_tokens_per_second']:.0f} | {level['tokens_per_second_ratio']:.2f}x "
                f"| {level['slmflow_p50_s']:.2f} / {level['slmflow_p95_s']:.2f} "
                f"| {level['mlflow_p50_s']:.2f} / {level['mlflow_p95_s']:.2f} | {level['p95_ratio']:.2f}x "
                f"| {goals[int(clients)]} |"
            )
    lines += [
        "",
        "| model | slmflow streaming TTFT, 1 / 16 clients (ms) | mlflow (cannot stream): p50 latency, 1 client (ms) "
        "| og.Engine / plain batch of 16, tok/s |",
        "|---|---|---|---|",
    ]
    for r in results:
        ttft = {int(clients): seconds for clients, seconds in r["slmflow_streaming_ttft_s"].items()}
        single = {int(clients): level for clients, level in r["clients"].items()}[1]
        lines.append(
            f"| {r['model']} | {ttft[1] * 1000:.0f} / {ttft[16] * 1000:.0f} | {single['mlflow_p50_s'] * 1000:.0f} "
            f"| {r['og_engine_probe']['og_engine_over_plain']:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = []
    with tempfile.TemporaryDirectory() as store, tempfile.TemporaryDirectory() as logs:
        for name in args.models:
            results.append(measure(name, MODELS[name], args.new_tokens, args.rounds, Path(store), Path(logs)))
    write_report("serving", results, table(results))


if __name__ == "__main__":
    main()
