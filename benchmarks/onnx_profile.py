"""Where onnx-chat's engine spends its time on SmolLM2, against the plain onnxruntime-genai loop; in one process,
alternating, paired with the reference (the plain loop on the default build with `--threads` threads):

- our per-token Python loop (`OnnxChatEngine.generate`: prepare, stop checks, streamed detokenizing) against
  the plain loop, 1 row;
- `intra_op_num_threads` 1 and 0 (onnxruntime's choice) against `--threads`;
- the builder's `prune_lm_head=true` (logits of the last prompt position only) against the default graph,
  which computes the LM head over every prompt position: time to first token at `--long-tokens`, and whether
  a right-padded batch of prompts of different lengths still gets the answers it gets one by one.

`python -m benchmarks.onnx_profile --onnx-dir DIR --checkpoint DIR` (the same_weights builds).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from functools import partial
from pathlib import Path

from benchmarks.measure import median, paired_value_ratio
from benchmarks.report import BENCHMARKS_DIR
from benchmarks.same_weights import OnnxRunner, _in_workload, decode_rate
from slmflow.config import BuilderOptions
from slmflow.fetch.cache import build_once
from slmflow.fetch.onnx_build import builder_command

QUESTIONS = [
    "What is the capital of France?",
    "Tell me, in one sentence and plainly, which city is the capital of Germany?",
    "Hi",
    "Which city is the capital of Kenya, the East African country?",
]


def build_pruned(checkpoint: Path, target: Path, options: BuilderOptions) -> Path:
    """The default build with `prune_lm_head=true` added to the builder's extra options."""
    import subprocess

    def build(out_dir: Path) -> None:
        command = [
            *builder_command(checkpoint, out_dir, out_dir.parent / "builder-cache", options),
            "prune_lm_head=true",
        ]
        subprocess.run(command, check=True, capture_output=True)

    return build_once(target, "genai_config.json", build)


def engine_answers(model_dir: Path, threads: int) -> tuple[list[str], list[str]]:
    """The questions answered in one right-padded batch and one by one, through OnnxChatEngine."""
    from slmflow.chat.onnx.engine import OnnxChatEngine
    from slmflow.chat.request import ChatRequest
    from slmflow.policy import SamplingSettings

    engine = OnnxChatEngine(model_dir, intra_op_num_threads=threads)
    requests = [
        ChatRequest(messages=({"role": "user", "content": q},), settings=SamplingSettings(max_tokens=16))
        for q in QUESTIONS
    ]
    return [c.text for c in engine.generate(requests)], [engine.generate([r])[0].text for r in requests]


def engine_run(runner: OnnxRunner, request, new_tokens: int) -> dict:
    """OnnxChatEngine's own loop on one request, timed like the plain loop."""
    engine = runner.engine
    started = time.perf_counter()
    row = engine.prepare(request)
    ttft = None
    for _ in engine.decode([row]):
        ttft = ttft if ttft is not None else time.perf_counter() - started
    return {"seconds": time.perf_counter() - started, "tokens": len(row.tokens), "ttft": ttft}


def alternate(runs: dict, repeats: int) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {key: [] for key in runs}
    for run in runs.values():
        run()
    for repeat in range(repeats):
        for key in runs if repeat % 2 == 0 else reversed(list(runs)):
            found[key].append(runs[key]())
    return found


def main(argv: list[str] | None = None) -> None:
    from slmflow.chat.request import ChatRequest
    from slmflow.policy import SamplingSettings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx-dir", type=Path, required=True, help="the default int4 block-32 build")
    parser.add_argument("--checkpoint", type=Path, required=True, help="the checkpoint it was built from")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--long-tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    pruned = build_pruned(
        args.checkpoint, args.onnx_dir.with_name(args.onnx_dir.name + "-pruned"), BuilderOptions(block_size=32)
    )
    workload = _in_workload(args.onnx_dir, 32, args.long_tokens, 1, [])
    short, long = workload["short"], [workload["long"]]
    runners = {t: OnnxRunner(args.onnx_dir, t) for t in dict.fromkeys([args.threads, 1, 0])}
    head = OnnxRunner(pruned, args.threads)
    reference = runners[args.threads]
    settings = SamplingSettings(max_tokens=args.new_tokens, min_tokens=args.new_tokens)
    request = ChatRequest(messages=({"role": "user", "content": QUESTIONS[0]},), settings=settings)
    request_ids = reference.engine.prompts.prompt_ids(request)
    runs = {
        "plain": partial(reference.generate, [request_ids], args.new_tokens),
        "engine": partial(engine_run, reference, request, args.new_tokens),
        **{f"threads {t}": partial(r.generate, short, args.new_tokens) for t, r in runners.items()},
        "ttft full head": partial(reference.generate, long, 1),
        "ttft pruned head": partial(head.generate, long, 1),
    }
    load = os.getloadavg()[0]
    found = alternate(runs, args.repeats)
    rates = {key: [decode_rate(r, 1) for r in runs_] for key, runs_ in found.items() if not key.startswith("ttft")}
    ttfts = {key: [r["ttft"] for r in runs_] for key, runs_ in found.items() if key.startswith("ttft")}
    batched, alone = engine_answers(pruned, args.threads)
    result = {
        "decode tok/s": {key: median(values) for key, values in rates.items()},
        "engine / plain decode": paired_value_ratio(rates["engine"], rates["plain"]),
        **{
            f"threads {t} / {args.threads} decode": paired_value_ratio(
                rates[f"threads {t}"], rates[f"threads {args.threads}"]
            )
            for t in runners
            if t != args.threads
        },
        f"ttft {args.long_tokens} ms": {
            key: median(ttfts[key]) * 1000 for key in ("ttft full head", "ttft pruned head")
        },
        "pruned / full ttft": paired_value_ratio(ttfts["ttft pruned head"], ttfts["ttft full head"]),
        "pruned head: batch answers equal one-by-one answers": batched == alone,
        "pruned head answers (batch, one by one)": [batched, alone],
    }
    result["load_average"] = [load, os.getloadavg()[0]]
    (BENCHMARKS_DIR / "results" / "onnx_profile.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
