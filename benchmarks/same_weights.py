"""onnx-chat's engine against llama.cpp on the same real weights: SmolLM2-135M-Instruct, for speed and quality.

The weights are the shipped Q4_1 GGUF, dequantized once to an fp32 HF checkpoint. From that checkpoint the
onnxruntime-genai builder makes the onnx variants (int4 block 32 and 128 at accuracy level 4, int8, fp32),
and llama.cpp's own converter and quantizer make an f16 GGUF and its Q4_0, Q4_K_M and Q8_0; the shipped
Q4_1 is measured as it is. Every variant runs in its own fresh process, one after another, the order
reversed every round, with the same prompt token ids, threads and token counts (greedy, EOS ignored for
speed). Opt-in and slow: `python -m benchmarks --same-weights --gguf FILE` (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import llamacpp
from benchmarks.measure import median, run_in_fresh_process
from benchmarks.quality import capital_questions, names_capital, wilson_interval
from benchmarks.report import BENCHMARKS_DIR, write_report
from slmflow.config import BuilderOptions, Settings
from slmflow.fetch.cache import build_once
from slmflow.fetch.onnx_build import build_onnx

ONNX_BUILDS = {
    "onnx int4 b32": BuilderOptions(block_size=32, accuracy_level=4),
    "onnx int4 b128": BuilderOptions(block_size=128, accuracy_level=4),
    # config.py does not offer int8 yet; the builder does (MatMulNBits with 8 bits, its default block size).
    "onnx int8": BuilderOptions.model_construct(precision="int8", execution_provider="cpu"),
    "onnx fp32": BuilderOptions(precision="fp32"),
}
GGUF_QUANTS = {"llama.cpp q4_0": "q4_0", "llama.cpp q4_k_m": "q4_k_m", "llama.cpp q8_0": "q8_0"}
SHIPPED = "llama.cpp q4_1 (shipped)"
SETTLE_SECONDS = 1.0


@dataclass(frozen=True)
class Variant:
    name: str
    engine: str  # "onnx" or "llama.cpp"
    path: Path  # an ONNX GenAI folder or a GGUF file

    @property
    def size_mb(self) -> float:
        files = self.path.iterdir() if self.path.is_dir() else [self.path]
        return sum(f.stat().st_size for f in files if f.suffix in {".onnx", ".data", ".gguf"}) / 2**20


# Building: the checkpoint and every variant, each cached once.


def dequantize(gguf: Path, cache: Path) -> Path:
    """The GGUF as a plain fp32 HF checkpoint, through transformers' GGUF loader."""

    def build(out_dir: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        model.hf_quantizer = None  # else save_pretrained refuses a GGUF-loaded model
        del model.config.quantization_config
        model.save_pretrained(out_dir)
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out_dir)

    return build_once(cache / "checkpoint" / gguf.stem, "model.safetensors", build)


def build_variants(gguf: Path, checkpoint: Path, cache: Path, sdist: Path | None) -> list[Variant]:
    variants = [
        Variant(name, "onnx", build_onnx(checkpoint, cache / "onnx" / name.replace(" ", "-"), options))
        for name, options in ONNX_BUILDS.items()
    ]

    def make_f16(out_file: Path) -> None:
        llamacpp.convert_to_f16(llamacpp.llama_cpp_source(cache, sdist), checkpoint, out_file)

    folder = cache / "gguf" / checkpoint.name
    variants.append(Variant(SHIPPED, "llama.cpp", gguf))
    variants += [
        Variant(name, "llama.cpp", llamacpp.ensure_gguf(folder, kind, make_f16)) for name, kind in GGUF_QUANTS.items()
    ]
    return variants


# Measuring: every function named `_in_*` runs in a fresh spawned process.


class OnnxRunner:
    """onnxruntime-genai's Python binding on one model folder, with the same interface as LlamaRunner."""

    def __init__(self, model_dir: Path, threads: int) -> None:
        from slmflow.chat.onnx.engine import OnnxChatEngine

        self.engine = OnnxChatEngine(model_dir, intra_op_num_threads=threads)

    def generate(self, prompts: list[list[int]], new_tokens: int, stop_ids=frozenset()) -> dict:
        """Greedy; exactly `new_tokens` per row unless `stop_ids` is given (then the model's EOS ends a row)."""
        import numpy as np
        import onnxruntime_genai as og

        model = self.engine.model
        started = time.perf_counter()
        params = og.GeneratorParams(model)
        total = len(prompts[0]) + new_tokens
        options = {"max_length": total, "batch_size": len(prompts), "do_sample": False}
        params.set_search_options(**options, **({} if stop_ids else {"min_length": total}))
        generator = og.Generator(model, params)
        generator.append_tokens(np.asarray(prompts if len(prompts) > 1 else prompts[0], dtype=np.int32))
        steps, ttft = 0, None
        while not generator.is_done():
            generator.generate_next_token()
            generator.get_next_tokens()
            steps += 1
            ttft = ttft if ttft is not None else time.perf_counter() - started
        ids = [list(generator.get_sequence(row))[len(prompts[0]) :] for row in range(len(prompts))]
        ids = [[t for t in row if t not in stop_ids] for row in ids] if stop_ids else ids
        return {"seconds": time.perf_counter() - started, "tokens": steps * len(prompts), "ttft": ttft, "ids": ids}

    def close(self) -> None:
        del self.engine


def open_runner(variant: Variant, threads: int, context: int, rows: int, repack: bool):
    """`repack`: llama.cpp's weight repacking (CPU_REPACK, AMX); its AMX kernels die with an illegal
    instruction on this machine's virtual CPU, so it is off unless asked for."""
    if variant.engine == "onnx":
        return OnnxRunner(variant.path, threads)
    return llamacpp.LlamaRunner(variant.path, threads, context, rows, extra_buffers=repack)


def _in_workload(model_dir: Path, short_tokens: int, long_tokens: int, rows: int, questions: list[str]) -> dict:
    """The prompt token ids every variant is given, from the onnx tokenizer and chat template (as onnx-chat)."""
    from slmflow.chat.onnx.engine import OnnxChatEngine
    from slmflow.fetch.builtin import filler_text

    engine = OnnxChatEngine(model_dir)
    filler = [int(t) for t in engine.tokenizer.encode(" ".join(filler_text(4 * long_tokens, seed=1)))]
    if len(filler) < max(long_tokens, rows * short_tokens):
        raise RuntimeError("filler text too short for the prompts asked for")
    chats = [engine.prompts.render([{"role": "user", "content": q}]) for q in questions]
    return {
        "short": [filler[row * short_tokens : (row + 1) * short_tokens] for row in range(rows)],
        "long": filler[:long_tokens],
        "questions": [[int(t) for t in engine.tokenizer.encode(chat)] for chat in chats],
        "eos": sorted(engine.eos_ids),
    }


def decode_rate(run: dict, rows: int) -> float:
    """Tokens after every row's first over the time after the first: the prompt's cost left out."""
    return (run["tokens"] - rows) / (run["seconds"] - run["ttft"])


def _in_speed(variant: Variant, workload: dict, threads: int, new_tokens: int, repeats: int, repack: bool) -> dict:
    """One variant's speed: medians over `repeats`, after a warm-up."""
    from slmflow.evaluation.runner import peak_rss_mb

    short, long, rows = workload["short"], workload["long"], len(workload["short"])
    started = time.perf_counter()
    runner = open_runner(variant, threads, len(long) + new_tokens + 8, rows, repack)
    loaded = time.perf_counter() - started
    runs = {
        "one": lambda: runner.generate(short[:1], new_tokens),
        "batch": lambda: runner.generate(short, new_tokens),
        "prefill": lambda: runner.generate([long], 1),
    }
    samples: dict[str, list[dict]] = {key: [] for key in runs}
    runner.generate(short, 4)  # warm-up: every shape's first call pays for allocation
    runner.generate([long[:64]], 1)
    for _ in range(repeats):
        for key, run in runs.items():
            samples[key].append(run())
    runner.close()
    return {
        "load_s": loaded,
        "decode_1_tok_s": median([decode_rate(r, 1) for r in samples["one"]]),
        "decode_batch_tok_s": median([decode_rate(r, rows) for r in samples["batch"]]),
        "prefill_tok_s": median([len(long) / r["ttft"] for r in samples["prefill"]]),
        "ttft_short_ms": median([r["ttft"] * 1000 for r in samples["one"]]),
        "ttft_long_ms": median([r["ttft"] * 1000 for r in samples["prefill"]]),
        "peak_rss_mb": peak_rss_mb(),
    }


def _in_answers(variant: Variant, workload: dict, threads: int, max_tokens: int, repack: bool) -> list[list[int]]:
    """Greedy answers (token ids) to every question, one question at a time, ending at EOS."""
    prompts = workload["questions"]
    runner = open_runner(variant, threads, max(map(len, prompts)) + max_tokens + 8, 1, repack)
    stop = frozenset(workload["eos"])
    answers = [runner.generate([ids], max_tokens, stop)["ids"][0] for ids in prompts]
    runner.close()
    return answers


def accuracy(variant: Variant, workload: dict, questions: list[dict], args: argparse.Namespace) -> dict:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(args.tokenizer))
    ids = run_in_fresh_process(_in_answers, variant, workload, args.threads, args.answer_tokens, args.llama_repack)
    answers = [tokenizer.decode(row, skip_special_tokens=True) for row in ids]
    capitals = sorted({q["capital"] for q in questions})
    right = sum(names_capital(a, q["capital"], capitals) for a, q in zip(answers, questions, strict=True))
    low, high = wilson_interval(right, len(questions))
    print(variant.name, f"{right} of {len(questions)} right", flush=True)
    return {
        "right": right,
        "total": len(questions),
        "rate": right / len(questions),
        "interval": [low, high],
        "answers": answers,
    }


def speed_rounds(variants: list[Variant], workload: dict, args: argparse.Namespace) -> list[dict]:
    """`args.rounds` runs of every variant, each in a fresh process, the order reversed every round."""
    rounds = []
    for number in range(args.rounds):
        order = variants if number % 2 == 0 else list(reversed(variants))
        found = {"load_before": os.getloadavg()}
        for variant in order:
            time.sleep(SETTLE_SECONDS)
            found[variant.name] = run_in_fresh_process(
                _in_speed, variant, workload, args.threads, args.new_tokens, args.repeats, args.llama_repack
            )
            print(number, variant.name, json.dumps(found[variant.name]), flush=True)
        found["load_after"] = os.getloadavg()
        rounds.append(found)
    return rounds


def earlier_accuracy(report: Path, variants: list[Variant], questions: int) -> dict[str, dict]:
    """Each variant's accuracy from an earlier report: greedy answers do not depend on the machine's load,
    so a speed run on an idle machine can reuse a quality run made while it was busy."""
    earlier = json.loads(report.read_text())
    if earlier["questions"] != questions:
        raise SystemExit(f"--quality-from {report}: {earlier['questions']} questions, this run asks {questions}")
    found = earlier["variants"]
    missing = [v.name for v in variants if v.name not in found]
    if missing:
        raise SystemExit(f"--quality-from {report}: no accuracy for {', '.join(missing)}")
    return {v.name: {**found[v.name]["accuracy"], "from": report.name} for v in variants}


# The report: a table with both runs, and quality against speed.

SPEED_COLUMNS = {
    "decode_1_tok_s": "decode 1 row tok/s",
    "decode_batch_tok_s": "decode {rows} rows tok/s",
    "prefill_tok_s": "prefill {long} tok/s",
    "ttft_short_ms": "TTFT {short}-token prompt ms",
    "ttft_long_ms": "TTFT {long} ms",
}


def within(values: list[float], tolerance: float = 0.10) -> bool:
    """Two consecutive runs agree: the last two differ by at most `tolerance` of the larger."""
    return len(values) >= 2 and abs(values[-1] - values[-2]) <= tolerance * max(values[-2:])


def table(result: dict) -> str:
    shape = result["shape"]
    names = [SPEED_COLUMNS[key].format(**shape) for key in SPEED_COLUMNS]
    lines = [
        "| variant | file MB | " + " | ".join(f"{n} (runs)" for n in names) + " | peak RSS MB | right of "
        f"{result['questions']} (95 % Wilson) | runs agree ≤10 % |",
        "|" + "---|" * (len(names) + 5),
    ]
    for name, found in result["variants"].items():
        runs = [r[name] for r in result["rounds"]]
        cells = [" / ".join(f"{r[key]:.0f}" for r in runs) for key in SPEED_COLUMNS]
        agree = all(within([r[key] for r in runs]) for key in SPEED_COLUMNS)
        quality = found["accuracy"]
        low, high = quality["interval"]
        lines.append(
            f"| {name} | {found['size_mb']:.0f} | "
            + " | ".join(cells)
            + f" | {max(r['peak_rss_mb'] for r in runs):.0f} | {quality['right']} ({quality['rate']:.0%}, "
            f"{low:.0%}-{high:.0%}) | {'yes' if agree else 'no'} |"
        )
    loads = [f"{r['load_before'][0]:.1f}-{r['load_after'][0]:.1f}" for r in result["rounds"]]
    lines += [
        "",
        f"{result['label']}: load average (1 min) at the start-end of each run: {', '.join(loads)}; "
        f"{result['threads']} threads; llama.cpp's OpenMP wait policy: {result['omp_wait_policy']}, "
        f"weight repacking {'on' if result['llama_repack'] else 'off'}.",
    ]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Accuracy (with its interval) against 1-row decode speed, one point per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name, found in result["variants"].items():
        speed = median([r[name]["decode_1_tok_s"] for r in result["rounds"]])
        quality = found["accuracy"]
        low, high = quality["interval"]
        colour = "tab:blue" if name.startswith("onnx") else "tab:orange"
        axes.errorbar(
            speed,
            quality["rate"],
            yerr=[[quality["rate"] - low], [high - quality["rate"]]],
            fmt="o",
            color=colour,
            capsize=3,
        )
        axes.annotate(name, (speed, quality["rate"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    axes.set_xlabel("decode tokens/s, 1 row (median of runs)")
    axes.set_ylabel(f"capital questions right (of {result['questions']}, 95 % interval)")
    axes.set_title(f"SmolLM2-135M-Instruct, same weights, {result['threads']} threads ({result['label']})")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    args = arguments(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cache = Settings.from_environment().cache_dir / "same-weights"
    started = time.perf_counter()
    checkpoint = args.checkpoint or dequantize(args.gguf, cache)
    variants = [v for v in build_variants(args.gguf, checkpoint, cache, args.llama_sdist) if v.name in args.variants]
    print(f"built in {time.perf_counter() - started:.0f} s:", json.dumps({v.name: str(v.path) for v in variants}))
    if args.build_only:
        return
    args.tokenizer = checkpoint / "tokenizer.json"
    questions = capital_questions(phrasings=args.phrasings)
    workload = run_in_fresh_process(
        _in_workload,
        variants[0].path,
        args.short_tokens,
        args.long_tokens,
        args.rows,
        [q["question"] for q in questions],
    )
    rounds = speed_rounds(variants, workload, args)
    measured = earlier_accuracy(args.quality_from, variants, len(questions)) if args.quality_from else {}
    result = {
        "label": args.label,
        "threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default (spinning)"),
        "llama_repack": args.llama_repack,
        "questions": len(questions),
        "shape": {"rows": args.rows, "short": args.short_tokens, "long": args.long_tokens, "new": args.new_tokens},
        "variants": {
            v.name: {
                "path": str(v.path),
                "size_mb": v.size_mb,
                "accuracy": measured.get(v.name) or accuracy(v, workload, questions, args),
            }
            for v in variants
        },
        "rounds": rounds,
    }
    plot(result, BENCHMARKS_DIR / "results" / "same_weights.png")
    write_report("same-weights", result, table(result))


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, required=True, help="SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--checkpoint", type=Path, help="its dequantized HF checkpoint (made from --gguf if not given)")
    parser.add_argument("--llama-sdist", type=Path, help="the llama-cpp-python sdist (pip downloads it if not given)")
    parser.add_argument("--build-only", action="store_true")
    names = [*ONNX_BUILDS, SHIPPED, *GGUF_QUANTS]
    parser.add_argument("--variants", nargs="+", choices=names, default=names, help="measure only these")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="runs of every variant (the idle rule compares two)")
    parser.add_argument("--repeats", type=int, default=5, help="medians over this many repeats in each run")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--short-tokens", type=int, default=32, help="prompt tokens of each decoded row")
    parser.add_argument("--long-tokens", type=int, default=512, help="prompt tokens of the prefill")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--phrasings", type=int, default=3, help="questions per country (1-3)")
    parser.add_argument("--answer-tokens", type=int, default=48)
    parser.add_argument("--llama-repack", action="store_true", help="llama.cpp weight repacking on (see open_runner)")
    parser.add_argument("--quality-from", type=Path, help="reuse the accuracy of an earlier report (JSON)")
    parser.add_argument("--label", default="idle", help="how the machine was: idle, or loaded")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
