"""The fine-tune itself: TRL's SFTTrainer with a peft LoRA adapter on the base checkpoint, then merged.

The Trainer's own MLflow callback logs loss and learning rate per logged step into the active run
(the finetune step's), never into a run of its own.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from slmflow.config import TrainingConfig
from slmflow.training.dataset import TrainingRow, check_lengths, split_held_out
from slmflow.training.lora import check_target_modules, target_modules

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


@dataclass(frozen=True)
class TrainingResult:
    checkpoint_dir: Path  # the merged checkpoint: an ordinary one, for the ONNX builder and transformers
    adapter_dir: Path
    train_rows: int
    held_out_rows: int
    steps: int
    final_loss: float
    held_out_loss: float | None
    train_seconds: float
    tokens: int
    peak_rss_mb: float
    history: tuple[dict, ...]  # the Trainer's log history: one entry per logged step

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.train_seconds if self.train_seconds else 0.0


def finetune(
    training: TrainingConfig, base_dir: Path, rows: Sequence[TrainingRow], work_dir: Path, base_reference: str
) -> TrainingResult:
    """Check what needs the model (row lengths, target layers), then train, merge and save into `work_dir`.

    The saved adapter names its base by `base_reference` (a URI), not by this machine's folder."""
    import torch
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    check_lengths(rows, [len(_token_ids(tokenizer, row)) for row in rows], training.max_seq_length, training.truncate)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model.config._name_or_path = base_reference  # what the Trainer's callback logs as the model's name
    model_type = model.config.model_type
    modules = target_modules(training.lora.target_modules, model_type)
    linear = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    check_target_modules(modules, linear, model_type)
    train_rows, held_out_rows = split_held_out(rows, training.held_out_fraction, training.seed)

    arguments = SFTConfig(
        output_dir=str(work_dir / "trainer"),
        per_device_train_batch_size=training.batch_size,
        per_device_eval_batch_size=training.batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        learning_rate=training.learning_rate,
        seed=training.seed,
        logging_steps=training.logging_steps,
        max_length=training.max_seq_length if training.truncate else None,
        completion_only_loss=training.assistant_only_loss,
        # On CPU: TRL's bf16 default is emulated (about 15x slower here), checkpointing only costs time
        # (`activation_checkpointing` is transformers 5's name; TRL still defaults the old one to True).
        bf16=False,
        fp16=False,
        activation_checkpointing=False,
        use_cpu=True,
        save_strategy="no",
        eval_strategy="no",
        report_to=["mlflow"],
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
        **training.budget,
    )
    trainer = SFTTrainer(
        model=model,
        args=arguments,
        train_dataset=_as_dataset(train_rows),
        eval_dataset=_as_dataset(held_out_rows) if held_out_rows else None,
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=training.lora.r,
            lora_alpha=training.lora.alpha,
            lora_dropout=training.lora.dropout,
            target_modules=list(modules),
            task_type="CAUSAL_LM",
        ),
    )
    with _callback_logs_into_active_run():
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        held_out_loss = trainer.evaluate()["eval_loss"] if held_out_rows else None

    adapted = trainer.model
    if not isinstance(adapted, PeftModel):  # SFTTrainer wraps the model given a peft_config
        raise TypeError(f"SFTTrainer trained a {type(adapted).__name__}, not a peft model")
    adapter_dir, checkpoint_dir = work_dir / "adapter", work_dir / "checkpoint"
    for adapter in adapted.peft_config.values():
        adapter.base_model_name_or_path = base_reference
    adapted.save_pretrained(str(adapter_dir))
    (adapter_dir / "README.md").unlink(missing_ok=True)  # peft's empty model card, naming the local folder
    merged = adapted.merge_and_unload()
    _copy_non_weight_files(base_dir, checkpoint_dir)
    merged.save_pretrained(checkpoint_dir)
    history = tuple(trainer.state.log_history)
    losses = [entry["loss"] for entry in history if "loss" in entry]
    return TrainingResult(
        checkpoint_dir=checkpoint_dir,
        adapter_dir=adapter_dir,
        train_rows=len(train_rows),
        held_out_rows=len(held_out_rows),
        steps=trainer.state.global_step,
        final_loss=losses[-1] if losses else float("nan"),
        held_out_loss=held_out_loss,
        train_seconds=seconds,
        tokens=int(trainer.state.num_input_tokens_seen),
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        history=history,
    )


def _token_ids(tokenizer, row: TrainingRow) -> list[int]:
    encoded = tokenizer.apply_chat_template(row.messages, tokenize=True, return_dict=True)
    return list(encoded["input_ids"])


def _as_dataset(rows: Sequence[TrainingRow]):
    """Prompt-completion rows: TRL computes the loss on the completion (the assistant's answer) only."""
    from datasets import Dataset

    return Dataset.from_list(
        [{"prompt": list(row.prompt), "completion": [{"role": "assistant", "content": row.answer}]} for row in rows]
    )


@contextlib.contextmanager
def _callback_logs_into_active_run() -> Iterator[None]:
    """`mlflow run` sets MLFLOW_RUN_ID; the callback then starts (and at the end closes) a run of its own.

    Without it the callback logs into the active run, the step's, and leaves it open."""
    run_id = os.environ.pop("MLFLOW_RUN_ID", None)
    try:
        yield
    finally:
        import mlflow

        mlflow.flush_async_logging()  # the callback logs asynchronously
        if run_id is not None:
            os.environ["MLFLOW_RUN_ID"] = run_id


def _copy_non_weight_files(base_dir: Path, target: Path) -> None:
    """The tokenizer, chat template and generation config of the base; the merged weights are saved over it."""
    target.mkdir(parents=True, exist_ok=True)
    for path in base_dir.iterdir():
        if path.is_file() and not path.name.endswith(WEIGHT_SUFFIXES) and path.name != "model.safetensors.index.json":
            shutil.copy2(path, target / path.name)
