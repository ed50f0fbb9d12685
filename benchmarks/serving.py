"""This project's OpenAI-compatible server against static batching and `mlflow models serve`, on one onnx-chat model.

Three servers run as real processes on loopback, each in its own process group, all up at once (an
idle server takes no CPU): `slmflow.serve` as shipped (generator groups interleaved step by step,
`--max-groups 2`), `slmflow.serve --max-groups 1` (static batches: a request that arrives while a batch
generates waits for all of it), and `mlflow models serve`. Each is sent the same chat requests at 1, 4
and 16 concurrent clients, the servers back to back at each level, rotating which goes first; every
request generates exactly `new_tokens` tokens (`min_tokens` = `max_tokens`), so all do the same work.
Ratios are medians of the back-to-back ratios (the machine is shared and noisy).

Time to first token is measured with `stream: true` under staggered arrivals (16 streams opened
`--arrival-gaps` seconds apart: a gap whose arrivals ask for fewer tokens/s than the server makes, and
one whose arrivals ask for more) and against the same server idle (one stream alone); `mlflow models
serve` cannot stream, so its first token arrives with its whole answer.

`python -m benchmarks.serving [--models tiny-phi3 bench-phi3-100m] [--rounds 3] [--new-tokens 64]`
`python -m benchmarks.serving --models smollm2-135m-instruct --report serving-real` (the real model)
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

MODELS = {
    "tiny-phi3": "builtin:tiny-phi3",
    "bench-phi3-100m": "builtin:bench-phi3-100m",
    "smollm2-135m-instruct": "builtin:smollm2-135m-instruct",
}
CLIENTS = (1, 4, 16)
STAGGERED_STREAMS = 16
OURS, STATIC, THEIRS = "slmflow.serve", "slmflow.serve static", "mlflow models serve"
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
        self,
        name: str,
        command: list[str],
        port: int,
        path: str,
        ready: str,
        exact_length: dict | None = None,
        streams: bool = True,
    ) -> None:
        self.name, self.command, self.port, self.path, self.ready = name, command, port, path, ready
        self.exact_length, self.streams = exact_length, streams

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def slmflow_target(model_uri: str, name: str = OURS, max_groups: int | None = None) -> Target:
    """Our server; `max_groups=1` is static batching, None the shipped default."""
    port = free_port()
    command = [sys.executable, "-m", "slmflow.serve", "--model-uri", model_uri, "--port", str(port)]
    command += ["--log-level", "warning", "--max-batch-size", "16", "--max-queue", "64"]
    command += ["--max-groups", str(max_groups)] if max_groups is not None else []
    return Target(name, command, port, "/v1/chat/completions", "/ready")


def targets(model_uri: str) -> list[Target]:
    theirs = free_port()
    return [
        slmflow_target(model_uri),
        slmflow_target(model_uri, STATIC, max_groups=1),
        Target(
            THEIRS,
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
            streams=False,
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


def has_content(line: str) -> bool:
    """Whether an SSE line is a chunk that carries answer text (not the role chunk, not `[DONE]`)."""
    return line.startswith("data: {") and bool(json.loads(line[6:])["choices"][0]["delta"].get("content"))


def first_token_seconds(target: Target, index: int, new_tokens: int) -> float:
    """Time to the first content chunk of one stream, read to its end; a server that cannot stream: to its answer."""
    started = time.perf_counter()
    if not target.streams:
        response = requests.post(target.base + target.path, json=body(target, index, new_tokens), timeout=600)
        response.raise_for_status()
        return time.perf_counter() - started
    payload = {**body(target, index, new_tokens), "stream": True}
    ttft = None
    with requests.post(target.base + target.path, json=payload, stream=True, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines(chunk_size=None, decode_unicode=True):  # lines as they arrive
            if ttft is None and has_content(line):
                ttft = time.perf_counter() - started
    if ttft is None:
        raise RuntimeError(f"{target.name}: a stream ended without content")
    return ttft


def streaming_ttft(target: Target, clients: int, new_tokens: int) -> list[float]:
    """Times to the first content chunk of `clients` streams opened at once."""
    with ThreadPoolExecutor(max_workers=clients) as pool:
        return list(pool.map(lambda index: first_token_seconds(target, index, new_tokens), range(clients)))


def staggered_ttft(target: Target, new_tokens: int, gap_s: float) -> dict:
    """`STAGGERED_STREAMS` streams opened `gap_s` apart (each arrives while the earlier ones generate), and one
    stream alone on the idle server before them: p50 and p95 time to first token, and p95 over idle."""
    idle = statistics.median(first_token_seconds(target, index, new_tokens) for index in range(3))

    def arrival(index: int) -> float:
        time.sleep(index * gap_s)
        return first_token_seconds(target, index, new_tokens)

    with ThreadPoolExecutor(max_workers=STAGGERED_STREAMS) as pool:
        seconds = list(pool.map(arrival, range(STAGGERED_STREAMS)))
    p95 = percentile(seconds, 0.95)
    return {"idle_s": idle, "p50_s": statistics.median(seconds), "p95_s": p95, "p95_over_idle": p95 / idle}


Samples = dict[str, dict[int, list[dict]]]


def rotated(servers: list[Target], shift: int) -> list[Target]:
    shift %= len(servers)
    return servers[shift:] + servers[:shift]


def alternate_levels(servers: list[Target], round_number: int, new_tokens: int, samples: Samples, label: str) -> None:
    """One round: every client level, the servers back to back, rotating which goes first
    (the load of a shared machine drifts over minutes); results appended to `samples[server][clients]`."""
    for level, clients in enumerate(CLIENTS):
        for target in rotated(servers, round_number + level):
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


def median_ratio(ours: list[dict], theirs: list[dict], key: str) -> float:
    """The median of the back-to-back ratios of `key`."""
    return statistics.median(a[key] / b[key] for a, b in zip(ours, theirs, strict=True))


def measure(name: str, source: str, new_tokens: int, rounds: int, gaps_s: list[float], store: Path, logs: Path) -> dict:
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
    staggered: dict[str, dict[float, list[dict]]] = {}
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
            for gap_s in gaps_s:
                for target in rotated(servers, round_number):
                    result = staggered_ttft(target, new_tokens, gap_s)
                    staggered.setdefault(target.name, {}).setdefault(gap_s, []).append(result)
                    print(name, round_number, target.name, "staggered", gap_s, json.dumps(result), flush=True)
    ours, static, theirs = samples[OURS], samples[STATIC], samples[THEIRS]
    levels = {}
    for clients in CLIENTS:
        levels[clients] = {
            "slmflow_tokens_per_second": statistics.median(r["tokens_per_second"] for r in ours[clients]),
            "static_tokens_per_second": statistics.median(r["tokens_per_second"] for r in static[clients]),
            "mlflow_tokens_per_second": statistics.median(r["tokens_per_second"] for r in theirs[clients]),
            "tokens_per_second_ratio": median_ratio(ours[clients], theirs[clients], "tokens_per_second"),
            "over_static_tokens_per_second_ratio": median_ratio(ours[clients], static[clients], "tokens_per_second"),
            "slmflow_p50_s": statistics.median(r["p50_s"] for r in ours[clients]),
            "slmflow_p95_s": statistics.median(r["p95_s"] for r in ours[clients]),
            "mlflow_p50_s": statistics.median(r["p50_s"] for r in theirs[clients]),
            "mlflow_p95_s": statistics.median(r["p95_s"] for r in theirs[clients]),
            "p95_ratio": median_ratio(ours[clients], theirs[clients], "p95_s"),
        }
    return {
        "model": name,
        "new_tokens": new_tokens,
        "rounds": rounds,
        "requests_per_client": REQUESTS_PER_CLIENT,
        "arrival_gaps_s": gaps_s,
        "clients": levels,
        "staggered_ttft": {
            server: {
                gap_s: {key: statistics.median(r[key] for r in results) for key in results[0]}
                for gap_s, results in by_gap.items()
            }
            for server, by_gap in staggered.items()
        },
        "slmflow_streaming_ttft_s": {clients: statistics.median(values) for clients, values in ttft.items()},
        "og_engine_probe": engine_probe,
        "raw": samples,
        "raw_staggered": staggered,
    }


def table(results: list[dict]) -> str:
    """The README tables; `results` as measured or as read back from results/serving.json (string keys)."""
    lines = [
        "| model | clients | slmflow tok/s | static tok/s | mlflow tok/s | tok/s ratio (over static / mlflow) "
        "| slmflow p50 / p95 s | mlflow p50 / p95 s | p95 ratio | goal |",
        "|" + "---|" * 10,
    ]
    goals = {1: "tok/s ≥ 0.95x", 4: "", 16: "tok/s ≥ 0.9x static, ≥ 1.5x mlflow; p95 ≤ 1.2x"}
    for r in results:
        for clients, level in r["clients"].items():
            lines.append(
                f"| {r['model']} | {clients} | {level['slmflow_tokens_per_second']:.0f} "
                f"| {level['static_tokens_per_second']:.0f} | {level['mlflow_tokens_per_second']:.0f} "
                f"| {level['over_static_tokens_per_second_ratio']:.2f}x / {level['tokens_per_second_ratio']:.2f}x "
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
    lines += [
        "",
        "| model | arrivals every (s) | server | idle TTFT ms | staggered: p50 / p95 TTFT ms | p95 over idle | goal |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for server, by_gap in r["staggered_ttft"].items():
            for gap_s, ttft in by_gap.items():
                lines.append(
                    f"| {r['model']} | {float(gap_s):g} | {server} | {ttft['idle_s'] * 1000:.0f} "
                    f"| {ttft['p50_s'] * 1000:.0f} / {ttft['p95_s'] * 1000:.0f} | {ttft['p95_over_idle']:.1f}x "
                    f"| {'≤ 2x' if server == OURS else ''} |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--arrival-gaps", type=float, nargs="+", default=[1.0, 0.4], help="seconds between staggered streams"
    )
    parser.add_argument("--report", default="serving", help="the results file and README section to write")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = []
    with tempfile.TemporaryDirectory() as store, tempfile.TemporaryDirectory() as logs:
        for name in args.models:
            results.append(
                measure(name, MODELS[name], args.new_tokens, args.rounds, args.arrival_gaps, Path(store), Path(logs))
            )
    write_report(args.report, results, table(results))


if __name__ == "__main__":
    main()
