"""Fine-tuning SmolLM2-135M-Instruct on 2 cores: time, tokens/s, peak RSS, and held-out accuracy base vs fine-tuned.

`python -m benchmarks.finetune MODEL_DIR` (a local fp32 checkpoint: no hub here). The suite is arithmetic
with the answer as a bare number ("Answer with the number only."): a few hundred training items and a
held-out eval split, disjoint by operation and operand pair (a seeded split; the pipeline's leakage guard
checks it too). Both models answer the same eval items greedily through transformers; the difference is
paired per item, with a 95% paired bootstrap interval.

`--max-steps N` stops training after N steps (on a shared, overloaded machine); `--write-suites` rewrites
the two committed files from the seed.
"""

from __future__ import annotations

import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import write_report

PROJECT_DIR = Path(__file__).resolve().parent.parent
TRAIN_FILE = PROJECT_DIR / "configs" / "train" / "arithmetic-train.jsonl"
EVAL_FILE = PROJECT_DIR / "configs" / "eval" / "arithmetic.jsonl"
CONFIG = PROJECT_DIR / "configs" / "smollm2-135m-instruct-retrain.yaml"
SEED, TRAIN_ITEMS, EVAL_ITEMS = 20, 320, 60
BOOTSTRAP = 10_000


def arithmetic_items() -> list[tuple[str, str]]:
    """(question, answer) for every unordered operand pair of three operations: 7x8 and 8x7 are one item."""
    items = []
    for a in range(2, 13):
        for b in range(a, 13):
            items.append((f"What is {a} times {b}? Answer with the number only.", str(a * b)))
    for a in range(11, 60, 2):
        for b in range(a, 60, 3):
            items.append((f"What is {a} plus {b}? Answer with the number only.", str(a + b)))
            items.append((f"What is {b} minus {a}? Answer with the number only.", str(b - a)))
    return items


def write_suites() -> None:
    items = arithmetic_items()
    random.Random(SEED).shuffle(items)
    held_out, train = items[:EVAL_ITEMS], items[EVAL_ITEMS : EVAL_ITEMS + TRAIN_ITEMS]
    with EVAL_FILE.open("w") as handle:
        for question, answer in held_out:
            row = {"messages": [{"role": "user", "content": question}], "reference": answer, "answer": answer}
            handle.write(json.dumps(row) + "\n")
    with TRAIN_FILE.open("w") as handle:
        for question, answer in train:
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            handle.write(json.dumps({"messages": messages}) + "\n")


def answers(model_dir: Path, questions: list[list[dict]], max_new_tokens: int = 8, batch: int = 20) -> list[str]:
    """Greedy answers, batched with left padding."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    found = []
    for start in range(0, len(questions), batch):
        prompts = [
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            for messages in questions[start : start + batch]
        ]
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False)
        found += tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
    return found


def paired_interval(base: list[bool], tuned: list[bool]) -> tuple[float, float, float]:
    """Mean per-item difference (tuned - base) and its 95% paired bootstrap interval."""
    differences = [int(t) - int(b) for b, t in zip(base, tuned, strict=True)]
    draw = random.Random(0)
    means = sorted(sum(draw.choice(differences) for _ in differences) / len(differences) for _ in range(BOOTSTRAP))
    return sum(differences) / len(differences), means[int(0.025 * BOOTSTRAP)], means[int(0.975 * BOOTSTRAP)]


def main(argv: list[str]) -> None:
    if argv == ["--write-suites"]:
        write_suites()
        return
    import mlflow

    from slmflow.config import EvaluationConfig, load_config
    from slmflow.evaluation.dataset import load_eval_set
    from slmflow.evaluation.metrics import contains_answer, exact_match
    from slmflow.training.dataset import check_training_set
    from slmflow.training.trainer import finetune

    model_dir = Path(argv[0])
    training = load_config(CONFIG).training
    if argv[1:2] == ["--max-steps"]:
        training = training.model_copy(update={"max_steps": int(argv[2]), "epochs": None})
    # The leakage guard: no eval question trained on.
    rows = check_training_set(training.dataset, EvaluationConfig(eval_set=EVAL_FILE))
    examples = load_eval_set(EVAL_FILE)
    questions = [list(example.messages) for example in examples]
    with tempfile.TemporaryDirectory() as folder:
        mlflow.set_tracking_uri(f"sqlite:///{Path(folder) / 'mlflow.db'}")
        with mlflow.start_run():
            result = finetune(training, model_dir, rows, Path(folder) / "work", base_reference=model_dir.name)
        started = time.perf_counter()
        base_answers = answers(model_dir, questions)
        tuned_answers = answers(result.checkpoint_dir, questions)
        answer_seconds = time.perf_counter() - started
    scores = {}
    for name, score in (("accuracy", contains_answer), ("exact_match", exact_match)):
        base = [score(text, example.answer) for text, example in zip(base_answers, examples, strict=True)]
        tuned = [score(text, example.answer) for text, example in zip(tuned_answers, examples, strict=True)]
        mean, low, high = paired_interval(base, tuned)
        scores[name] = {
            "base": sum(base) / len(base),
            "tuned": sum(tuned) / len(tuned),
            "diff": mean,
            "ci95": [low, high],
        }
    load = Path("/proc/loadavg").read_text().split()[0]
    summary = {
        "train_rows": result.train_rows,
        "held_out_rows": result.held_out_rows,
        "eval_items": len(examples),
        "steps": result.steps,
        "train_seconds": result.train_seconds,
        "tokens": result.tokens,
        "tokens_per_second": result.tokens_per_second,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "final_loss": result.final_loss,
        "held_out_loss": result.held_out_loss,
        "answer_seconds": answer_seconds,
        "load_average_1min": float(load),
        "scores": scores,
        "examples": [
            {"question": q[-1]["content"], "base": b, "tuned": t}
            for q, b, t in list(zip(questions, base_answers, tuned_answers, strict=True))[:10]
        ],
    }
    table = (
        "| rows (train / held-out) | steps | fine-tune s | tokens/s | peak RSS MB | final / held-out loss | "
        "load (1 min) | accuracy base → tuned (paired diff, 95% CI) | "
        "exact match base → tuned (paired diff, 95% CI) |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
        f"| {result.train_rows} / {result.held_out_rows} | {result.steps} | {result.train_seconds:.0f} | "
        f"{result.tokens_per_second:.0f} | {summary['peak_rss_mb']:.0f} | {result.final_loss:.3f} / "
        f"{result.held_out_loss:.3f} | {load} | "
        + " | ".join(
            f"{s['base']:.3f} → {s['tuned']:.3f} ({s['diff']:+.3f}, [{s['ci95'][0]:+.3f}, {s['ci95'][1]:+.3f}])"
            for s in (scores["accuracy"], scores["exact_match"])
        )
        + " |"
    )
    write_report("finetune", summary, table)


if __name__ == "__main__":
    main(sys.argv[1:])
