"""Admitting requests between decode steps over what onnxruntime-genai 0.18 gives: a bounded measurement.

`og.Engine`'s continuous mode needs a paged KV cache the CPU builder does not produce, and a
Generator's batch is fixed once its prompts are appended. What remains is scheduling whole
generators: `OnnxChatEngine.decode` is an iterator that yields after every step, so several of them
(each its own Generator, its own batch) can be stepped in turn from one thread. Schedulers compared,
on the same staggered arrivals (one request every `--gap` seconds, each asking for exactly
`--tokens` tokens):

- static: today's server. When the model is free, every request that has arrived forms one batch,
  generated to its end; later arrivals wait for it.
- groups-K: at every step, the requests that have arrived form a new group (a new Generator whose
  prefill runs at its first step) while at most K groups are active; the active groups are stepped
  round-robin, one token each. K=1 is static; a large K with one request per group is "a generator
  per request".

Records per scheduler: time to first token (arrival to first token, p50 and p95) and aggregate
tokens/s (all tokens over first arrival to last finish); and the idle server's time to first token.
By default no server: the engine directly, one thread, as the server's generation thread drives it.
With `--batcher`, the server's own code path instead: `slmflow.serving.batcher.Batcher` (its
generation thread, `--max-groups` as the server takes it, streamed tickets submitted from an event
loop at their arrival times; everything but HTTP), with K=1 as today's static batches.

    python -m benchmarks.admission --onnx-dir PATH [--clients 16] [--gap 0.25] [--tokens 64] [--batcher]
        [--report NAME]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.report import write_report

QUESTIONS = ("Spain", "Kenya", "Peru", "Japan", "Norway", "Chile", "Egypt", "Canada")


@dataclass
class Group:
    """Rows generated together by one Generator, stepped by `steps`."""

    rows: list
    steps: Iterator[None]
    arrived: list[float]
    first_token: list[float | None] = field(default_factory=list)


def p95(values: list[float]) -> float:
    """Nearest rank: with 16 requests, the 16th fastest (the slowest but none)."""
    return sorted(values)[math.ceil(0.95 * len(values)) - 1]


def requests(count: int, tokens: int) -> list:
    from slmflow.chat.request import parse_requests

    rows = [
        {"messages": [{"role": "user", "content": f"Tell me about the capital of {QUESTIONS[i % len(QUESTIONS)]}."}]}
        for i in range(count)
    ]
    return parse_requests(rows, {"max_tokens": tokens, "min_tokens": tokens})


def run(engine, pending: list, gap: float, max_groups: int) -> dict[str, float]:
    """Serve `pending` (arriving one every `gap` s) with at most `max_groups` generators active."""
    start = time.monotonic()
    arrivals = [start + i * gap for i in range(len(pending))]
    active: list[Group] = []
    finished: list[Group] = []
    admitted = 0
    while admitted < len(pending) or active:
        now = time.monotonic()
        arrived = sum(1 for at in arrivals if at <= now)
        if arrived > admitted and len(active) < max_groups:
            rows = [engine.prepare(request) for request in pending[admitted:arrived]]
            group = Group(rows, engine.decode(rows), arrivals[admitted:arrived], [None] * len(rows))
            active.append(group)
            admitted = arrived
        if not active:
            time.sleep(max(0.0, arrivals[admitted] - now))
            continue
        for group in list(active):  # one step each, round-robin
            done = next(group.steps, StopIteration) is StopIteration
            stepped = time.monotonic()
            for index, row in enumerate(group.rows):
                if group.first_token[index] is None and row.tokens:
                    group.first_token[index] = stepped
            if done:
                active.remove(group)
                finished.append(group)
    end = time.monotonic()
    ttft = [first - arrived for g in finished for first, arrived in zip(g.first_token, g.arrived, strict=True)]
    tokens = sum(len(row.tokens) for g in finished for row in g.rows)
    return {
        "ttft_p50_s": round(statistics.median(ttft), 3),
        "ttft_p95_s": round(p95(ttft), 3),
        "tokens_per_s": round(tokens / (end - start), 1),
        "tokens": tokens,
        "groups": len(finished),
    }


def run_batcher(engine, pending: list, gap: float, max_groups: int) -> dict[str, float]:
    """Serve `pending` (arriving one every `gap` s) through the server's Batcher with `max_groups`."""
    import asyncio

    from slmflow.serving.batcher import Batcher, Failed, Finished

    async def serve() -> dict[str, float]:
        groups: list[int] = []
        batcher = Batcher(engine, max_batch_size=16, max_queue=64, max_groups=max_groups, on_batch=groups.append)

        async def client(index: int, request) -> tuple[float, int, float]:
            await asyncio.sleep(index * gap)
            ticket = batcher.submit(request, stream=True)
            while not isinstance(event := await ticket.next_event(), Finished | Failed):
                pass
            if isinstance(event, Failed):
                raise event.error
            assert ticket.first_token_at is not None
            return ticket.first_token_at - ticket.submitted_at, event.completion.completion_tokens, time.monotonic()

        start = time.monotonic()
        try:
            answers = await asyncio.gather(*(client(index, request) for index, request in enumerate(pending)))
        finally:
            batcher.close()
        ttft = [first for first, _, _ in answers]
        tokens = sum(count for _, count, _ in answers)
        return {
            "ttft_p50_s": round(statistics.median(ttft), 3),
            "ttft_p95_s": round(p95(ttft), 3),
            "tokens_per_s": round(tokens / (max(end for _, _, end in answers) - start), 1),
            "tokens": tokens,
            "groups": len(groups),
        }

    return asyncio.run(serve())


def table(result: dict) -> str:
    idle_ttft, schedulers = result["idle_ttft_s"], result["schedulers"]
    static_rate = schedulers.get("static", {}).get("tokens_per_s")
    lines = [
        f"Admission between decode steps, {result['model']}, {result['label']}, through "
        f"{result.get('path', 'the engine directly')}: {result['clients']} requests arriving every "
        f"{result['gap_s']} s, {result['tokens']} tokens each; idle time to first token {idle_ttft:.3f} s"
        + (f"; load average at the end {result['load_average']}" if "load_average" in result else "")
        + ".",
        "",
        "| scheduler | TTFT p50 (s) | TTFT p95 (s) | p95 / idle | tokens/s | vs static | generators |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in schedulers.items():
        ratio = f"{r['tokens_per_s'] / static_rate:.2f}x" if static_rate else "-"
        lines.append(
            f"| {name} | {r['ttft_p50_s']} | {r['ttft_p95_s']} | {r['ttft_p95_s'] / idle_ttft:.1f}x | "
            f"{r['tokens_per_s']} | {ratio} | {r['groups']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx-dir", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--gap", type=float, default=0.25, help="seconds between two arrivals")
    parser.add_argument("--tokens", type=int, default=64, help="tokens each request generates")
    parser.add_argument("--groups", type=int, nargs="+", default=[1, 2, 4, 16], help="K values to compare")
    parser.add_argument("--batcher", action="store_true", help="through the server's Batcher, not the bare engine")
    parser.add_argument("--label", default="loaded machine (2 cores shared with other jobs)")
    parser.add_argument("--report", default="admission", help="the results file and README table to write")
    args = parser.parse_args(argv)
    from slmflow.chat.onnx.engine import OnnxChatEngine

    engine = OnnxChatEngine(args.onnx_dir)
    serve = run_batcher if args.batcher else run
    idle = [serve(engine, requests(1, args.tokens), 0.0, 1)["ttft_p50_s"] for _ in range(3)]
    schedulers = {
        ("static" if k == 1 else f"groups-{k}"): serve(engine, requests(args.clients, args.tokens), args.gap, k)
        for k in args.groups
    }
    result = {
        "model": args.onnx_dir.name,
        "label": args.label,
        "path": "the server's Batcher" if args.batcher else "the engine directly",
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "host_cpus": os.cpu_count(),
        "clients": args.clients,
        "gap_s": args.gap,
        "tokens": args.tokens,
        "idle_ttft_s": round(statistics.median(idle), 3),
        "schedulers": schedulers,
    }
    write_report(args.report, result, table(result))


if __name__ == "__main__":
    main()
