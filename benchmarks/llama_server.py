"""`python -m slmflow.serve` on an onnx-chat model against llama.cpp's own `llama-server` on the same weights.

Both run as real processes on loopback, both up at once, and get the same chat requests from 1, 4 and 16
concurrent clients, back to back, alternating which goes first (`benchmarks/serving.py`'s loop). Every
request generates exactly `new_tokens` tokens: `min_tokens` on ours, `ignore_eos` on llama-server (both
count them in `usage.completion_tokens`). llama-server batches continuously across `-np` slots; ours
batches requests that arrive together. Time to first token is streamed from both.

`llama-server` is built from the `tools/server` of the llama.cpp that the pinned llama-cpp-python sdist
vendors (benchmarks/README.md says how). Opt-in:
`python -m benchmarks --llama-server --onnx-dir DIR --gguf FILE --llama-server-bin PATH`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.report import write_report
from benchmarks.serving import CLIENTS, Samples, Target, alternate_levels, percentile, slmflow_target, streaming_ttft
from testkit.processes import free_port, launched_server


def llama_server_target(binary: Path, gguf: Path, slots: int, threads: int, slot_context: int) -> Target:
    """llama-server with `slots` parallel sequences of `slot_context` tokens each, weight repacking off
    (its AMX repack dies with an illegal instruction on this machine's virtual CPU)."""
    port = free_port()
    command = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-np", str(slots)]
    command += ["-c", str(slots * slot_context), "-t", str(threads), "-tb", str(threads), "--no-repack"]
    command += ["--no-webui", "--log-disable"]
    return Target("llama-server", command, port, "/v1/chat/completions", "/health", exact_length={"ignore_eos": True})


def summary(samples: Samples, ttfts: dict[str, dict[int, list[float]]], names: list[str]) -> dict:
    """Per client level: each server's medians over rounds and the same-round ratios (ours / llama-server)."""
    ours, theirs = names
    levels = {}
    for clients in CLIENTS:
        level = {}
        for name in names:
            runs = samples[name][clients]
            level[name] = {
                "tokens_per_second": [r["tokens_per_second"] for r in runs],
                "p50_s": statistics.median(r["p50_s"] for r in runs),
                "p95_s": statistics.median(r["p95_s"] for r in runs),
                "ttft_p50_s": statistics.median(ttfts[name][clients]),
                "ttft_p95_s": percentile(ttfts[name][clients], 0.95),
            }
        pairs = zip(samples[ours][clients], samples[theirs][clients], strict=True)
        level["tokens_per_second_ratio"] = statistics.median(
            a["tokens_per_second"] / b["tokens_per_second"] for a, b in pairs
        )
        levels[clients] = level
    return levels


def measure(args: argparse.Namespace, store: Path, logs: Path) -> dict:
    import mlflow

    from slmflow.config import GenerationConfig, RuntimeConfig
    from slmflow.flavors.onnx_chat import log_onnx_chat_model

    tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run():
        runtime = RuntimeConfig(intra_op_num_threads=args.threads)
        model_uri = log_onnx_chat_model(args.onnx_dir, GenerationConfig(max_new_tokens=args.new_tokens), runtime)
    servers = [
        slmflow_target(model_uri),
        llama_server_target(args.llama_server_bin, args.gguf, max(CLIENTS), args.threads, args.slot_context),
    ]
    samples: Samples = {}
    ttfts: dict[str, dict[int, list[float]]] = {s.name: {c: [] for c in CLIENTS} for s in servers}
    loads = []
    with contextlib.ExitStack() as running:
        for target in servers:
            log = logs / f"{target.name}-{target.port}.log"
            running.enter_context(
                launched_server(target.command, target.base + target.ready, log, MLFLOW_TRACKING_URI=tracking_uri)
            )
            streaming_ttft(target, 1, args.new_tokens)  # warm up
        for round_number in range(args.rounds):
            loads.append(os.getloadavg()[0])
            alternate_levels(servers, round_number, args.new_tokens, samples, "same weights")
            for clients in CLIENTS:
                for target in servers if round_number % 2 == 0 else reversed(servers):
                    time.sleep(0.5)
                    ttfts[target.name][clients] += streaming_ttft(target, clients, args.new_tokens)
    names = [s.name for s in servers]
    return {
        "label": args.label,
        "load_average_per_round": loads,
        "threads": args.threads,
        "new_tokens": args.new_tokens,
        "rounds": args.rounds,
        "onnx_dir": str(args.onnx_dir),
        "gguf": str(args.gguf),
        "clients": summary(samples, ttfts, names),
        "raw": samples,
    }


def table(result: dict) -> str:
    lines = [
        "| clients | slmflow.serve tok/s (rounds) | llama-server tok/s (rounds) | tok/s ratio | "
        "slmflow p50 / p95 s | llama-server p50 / p95 s | slmflow TTFT p50 / p95 ms | llama-server TTFT p50 / p95 ms |",
        "|" + "---|" * 8,
    ]
    for clients, level in result["clients"].items():
        ours, theirs = level["slmflow.serve"], level["llama-server"]
        cells = [" / ".join(f"{v:.0f}" for v in side["tokens_per_second"]) for side in (ours, theirs)]
        latency = [f"{side['p50_s']:.2f} / {side['p95_s']:.2f}" for side in (ours, theirs)]
        ttft = [f"{side['ttft_p50_s'] * 1000:.0f} / {side['ttft_p95_s'] * 1000:.0f}" for side in (ours, theirs)]
        lines.append(
            f"| {clients} | {cells[0]} | {cells[1]} | {level['tokens_per_second_ratio']:.2f}x "
            f"| {latency[0]} | {latency[1]} | {ttft[0]} | {ttft[1]} |"
        )
    loads = ", ".join(f"{load:.1f}" for load in result["load_average_per_round"])
    lines += ["", f"{result['label']}; load average (1 min) at the start of each round: {loads}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx-dir", type=Path, required=True, help="an onnx-chat ONNX folder (same_weights builds)")
    parser.add_argument("--gguf", type=Path, required=True, help="the GGUF of the same weights")
    parser.add_argument("--llama-server-bin", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--slot-context", type=int, default=512, help="context tokens of each llama-server slot")
    parser.add_argument("--label", default="idle", help="how the machine was: idle, or loaded")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as store, tempfile.TemporaryDirectory() as logs:
        result = measure(args, Path(store), Path(logs))
    print(json.dumps(result["clients"], indent=2))
    write_report("llama-server", result, table(result))


if __name__ == "__main__":
    main()
