"""Fine-tuning SmolLM2-135M-Instruct on 2 cores: time, tokens/s, peak RSS, and held-out accuracy base vs fine-tuned.

`python -m benchmarks.finetune MODEL_DIR` (a local fp32 checkpoint: no hub here) runs exactly what
`configs/smollm2-135m-instruct-retrain.yaml` trains and measures: LoRA on the parts of the built-in
suite (capitals, arithmetic, unit conversions, facts) that `evaluation.split` does not evaluate, then
the evaluated part. Both models answer the same held-out items greedily through transformers; they are
scored by the pipeline's own reader of answers, and compared per item with its paired bootstrap
interval (overall and per skill), as the `require_improvement_over_base` gate compares them.

`--max-steps N` stops training after N steps (on a shared, overloaded machine).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import write_report

PROJECT_DIR = Path(__file__).resolve().parent.parent
CONFIG = PROJECT_DIR / "configs" / "smollm2-135m-instruct-retrain.yaml"


def answers(model_dir: Path, questions: list[list[dict]], max_new_tokens: int, batch: int = 32) -> list[str]:
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


def compared(base: list[bool], tuned: list[bool], confidence: float) -> dict:
    from slmflow.evaluation.statistics import paired_accuracy

    paired = paired_accuracy(tuned, base, confidence=confidence)
    return {
        "items": len(base),
        "base": sum(base) / len(base),
        "tuned": sum(tuned) / len(tuned),
        "diff": paired.difference.estimate,
        "ci": [paired.difference.low, paired.difference.high],
        "mcnemar_p": paired.p_value,
    }


def main(argv: list[str]) -> None:
    import mlflow

    from slmflow.config import load_config
    from slmflow.evaluation.answers import reads_correct
    from slmflow.evaluation.dataset import load_examples
    from slmflow.evaluation.metrics import exact_match
    from slmflow.training.dataset import check_configured_training_set
    from slmflow.training.trainer import finetune

    model_dir = Path(argv[0])
    config = load_config(CONFIG)
    training = config.training
    assert training is not None, f"{CONFIG} has no training section"
    if argv[1:2] == ["--max-steps"]:
        training = training.model_copy(update={"max_steps": int(argv[2]), "epochs": None})
    training_set = check_configured_training_set(config)  # the leakage guard: no evaluated question trained on
    examples = load_examples(config.evaluation)
    questions = [list(example.messages) for example in examples]
    max_new_tokens = config.evaluation.max_new_tokens or config.generation.max_new_tokens
    with tempfile.TemporaryDirectory() as folder:
        mlflow.set_tracking_uri(f"sqlite:///{Path(folder) / 'mlflow.db'}")
        with mlflow.start_run():
            result = finetune(training, model_dir, training_set.rows, Path(folder) / "work", model_dir.name)
        started = time.perf_counter()
        base_answers = answers(model_dir, questions, max_new_tokens)
        tuned_answers = answers(result.checkpoint_dir, questions, max_new_tokens)
        answer_seconds = time.perf_counter() - started

    def scored(texts: list[str]) -> list[bool]:
        return [reads_correct(text, e.key, e.question) for text, e in zip(texts, examples, strict=True)]

    base, tuned = scored(base_answers), scored(tuned_answers)
    confidence = config.evaluation.confidence
    skills = sorted({example.skill for example in examples})
    per_skill = {
        skill: compared(
            [b for b, e in zip(base, examples, strict=True) if e.skill == skill],
            [t for t, e in zip(tuned, examples, strict=True) if e.skill == skill],
            confidence,
        )
        for skill in skills
    }

    def exactly(texts: list[str]) -> list[bool]:
        return [exact_match(text, e.reference) for text, e in zip(texts, examples, strict=True)]

    load = Path("/proc/loadavg").read_text().split()[0]
    summary = {
        "config": CONFIG.relative_to(PROJECT_DIR).as_posix(),
        "training_set": training_set.name,
        "training_digest": training_set.digest,
        "train_rows": result.train_rows,
        "held_out_rows": result.held_out_rows,
        "eval_items": len(examples),
        "steps": result.steps,
        "train_seconds": result.train_seconds,
        "tokens": result.tokens,
        "tokens_per_second": result.tokens_per_second,
        "peak_rss_mb": result.peak_rss_mb,
        "final_loss": result.final_loss,
        "held_out_loss": result.held_out_loss,
        "answer_seconds": answer_seconds,
        "max_new_tokens": max_new_tokens,
        "load_average_1min": float(load),
        "accuracy": compared(base, tuned, confidence),
        "accuracy_per_skill": per_skill,
        "exact_match": compared(exactly(base_answers), exactly(tuned_answers), confidence),
        "examples": [
            {"question": q[-1]["content"], "base": b, "tuned": t}
            for q, b, t in list(zip(questions, base_answers, tuned_answers, strict=True))[::20]
        ],
    }
    write_report("finetune", summary, table(summary))


def table(summary: dict) -> str:
    def cell(score: dict) -> str:
        low, high = score["ci"]
        return f"{score['base']:.3f} → {score['tuned']:.3f} ({score['diff']:+.3f}, [{low:+.3f}, {high:+.3f}])"

    lines = [
        "| rows (train / held-out) | steps | fine-tune s | tokens/s | peak RSS MB | final / held-out loss "
        "| load (1 min) | eval items | accuracy base → tuned (paired diff, 95% CI) | exact match base → tuned |",
        "|" + "---|" * 10,
        f"| {summary['train_rows']} / {summary['held_out_rows']} | {summary['steps']} "
        f"| {summary['train_seconds']:.0f} | {summary['tokens_per_second']:.0f} | {summary['peak_rss_mb']:.0f} "
        f"| {summary['final_loss']:.3f} / {summary['held_out_loss']:.3f} | {summary['load_average_1min']} "
        f"| {summary['eval_items']} | {cell(summary['accuracy'])} | {cell(summary['exact_match'])} |",
        "",
        "| skill | items | accuracy base → tuned (paired diff, 95% CI) | McNemar p |",
        "|---|---|---|---|",
    ]
    for skill, score in summary["accuracy_per_skill"].items():
        lines.append(f"| {skill} | {score['items']} | {cell(score)} | {score['mcnemar_p']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
