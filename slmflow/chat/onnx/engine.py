"""The onnxruntime-genai generation engine: a step-wise API over which callers batch rows of many requests.

`prepare` checks and tokenizes one request into a `GenerationRow`, `fits` says which rows may share a
runtime batch (one `batch_key`, each row with its whole budget), `decode` generates one such batch and
yields after every token, `GenerationRow.cancel` stops one row, and `completion` gives a finished
row's answer. `generate` and `stream` (used by the pyfunc) are built
on them. The og.Model and og.Tokenizer are shared; every batch gets its own GeneratorParams and Generator.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

from slmflow.chat.onnx.prompt import PromptEncoder
from slmflow.chat.onnx.rows import Completion, GenerationRow, batches, check_total_tokens, fits_together
from slmflow.chat.request import ChatRequest, quote
from slmflow.chat.stopping import first_stop
from slmflow.errors import BadRequestError, DeadlineExceededError
from slmflow.policy import RequestLimits, ResponseFormat

RUNTIME_MAX_BATCH_SIZE = 32  # onnxruntime-genai refuses a larger batch_size


class OnnxChatEngine:
    """Generation over one onnxruntime-genai model folder."""

    max_batch_size = RUNTIME_MAX_BATCH_SIZE

    def __init__(
        self, model_dir: str | Path, intra_op_num_threads: int = 0, truncate_long_prompts: bool = False
    ) -> None:
        import onnxruntime_genai as og

        self._og = og
        model_dir = Path(model_dir)
        config = og.Config(str(model_dir))
        if intra_op_num_threads:
            config.overlay(
                json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": intra_op_num_threads}}}})
            )
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)
        genai = json.loads((model_dir / "genai_config.json").read_text())["model"]
        self.context_length = int(genai["context_length"])
        self.vocab_size = int(genai["vocab_size"])
        eos = genai["eos_token_id"]
        self.eos_ids = frozenset(eos if isinstance(eos, list) else [eos])
        self.pad_id = int(genai.get("pad_token_id", min(self.eos_ids)))
        self.truncate_long_prompts = truncate_long_prompts
        self.prompts = PromptEncoder(self.tokenizer, model_dir)
        self._check_response_format = functools.lru_cache(maxsize=256)(self._compile_response_format)

    # The step-wise API

    def prepare(self, request: ChatRequest, limits: RequestLimits | None = None) -> GenerationRow:
        """Check one request against the model (and `limits`) and tokenize it; raises BadRequestError
        naming the field. What is too large is refused by counting, before rendering or tokenizing."""
        settings = request.settings
        if settings.temperature > 0 and settings.top_k > self.vocab_size:
            raise BadRequestError(
                f"top_k={settings.top_k} is beyond the model's vocabulary of {self.vocab_size} tokens", "top_k"
            )
        if settings.max_tokens_explicit and settings.max_tokens >= self.context_length:
            raise BadRequestError(
                f"max_tokens={settings.max_tokens} is beyond the model's context of {self.context_length} tokens",
                "max_tokens",
                code="context_length_exceeded",
            )
        if settings.response_format is not None:
            self._check_response_format(settings.response_format)
        self._refuse_what_cannot_fit(request)
        field_name = "messages" if request.is_chat else "prompt"
        prompt_ids = self.prompts.prompt_ids(request)
        room = self.context_length - len(prompt_ids)
        if room < 1 or (settings.max_tokens_explicit and room < settings.max_tokens):
            if not self.truncate_long_prompts:
                raise BadRequestError(
                    f"the prompt is {len(prompt_ids)} tokens and asks for up to {settings.max_tokens} new ones, "
                    f"beyond the model's context of {self.context_length} tokens (prompts are rejected, not "
                    "truncated: set runtime.truncate_long_prompts to truncate)",
                    field_name,
                    code="context_length_exceeded",
                )
            keep = self.context_length - min(settings.max_tokens, self.context_length // 2)
            prompt_ids = prompt_ids[-keep:]
            room = self.context_length - len(prompt_ids)
        row = GenerationRow(
            request=request,
            prompt_ids=prompt_ids,
            max_new_tokens=min(settings.max_tokens, room),
            stream=self.tokenizer.create_stream(),
        )
        if limits is not None:
            check_total_tokens([row], limits)
        return row

    def _refuse_what_cannot_fit(self, request: ChatRequest) -> None:
        """Refuse a prompt too long for the context by cheap lower bounds on its tokens: a token holds
        at most `max_token_chars` characters, and every message renders to at least one token."""
        field_name = "messages" if request.is_chat else "prompt"
        characters = request.text_length()
        messages = len(request.messages or ())
        if characters <= self.context_length * self.prompts.max_token_chars and messages < self.context_length:
            return
        held = f"{messages} messages" if messages >= self.context_length else f"{characters} characters"
        raise BadRequestError(
            f"the {field_name} holds {held}, more than the model's context of {self.context_length} tokens can hold",
            field_name,
            code="context_length_exceeded",
        )

    def fits(self, rows: Sequence[GenerationRow]) -> bool:
        """Whether these rows can share one `decode` call (one batch key, each row's whole budget)."""
        return (
            len(rows) <= self.max_batch_size
            and len({self.batch_key(row) for row in rows}) == 1
            and fits_together(rows, self.context_length)
        )

    def batch_key(self, row: GenerationRow) -> tuple:
        """Rows with equal keys can be generated in one `decode` call.

        A constrained row generates alone: in onnxruntime-genai 0.18 a batch fails ("compute_mask() called
        after stop") at the step after one row's grammar has ended while another row goes on."""
        if row.settings.response_format is not None:
            return (row.settings.batch_key(), id(row))
        return row.settings.batch_key()

    def decode(self, rows: Sequence[GenerationRow], deadline: float | None = None) -> Generator[None, None, None]:
        """Generate one runtime batch of rows sharing a batch key; yield after every step.

        Stops when every row is finished or cancelled; rows still running at `deadline`
        (a `time.monotonic()` value) finish with "timeout"."""
        if not rows or len(rows) > self.max_batch_size:
            raise ValueError(f"a batch holds 1 to {self.max_batch_size} rows, got {len(rows)}")
        if len({self.batch_key(row) for row in rows}) != 1:
            raise ValueError("rows of one batch must share a batch key")
        if not fits_together(rows, self.context_length):
            raise ValueError("the rows of one batch must fit the context together, each with its whole budget")
        if _past(deadline):
            _finish(rows, "timeout")
        if all(row.done for row in rows):
            return
        og = self._og
        generator = og.Generator(self.model, self._params(rows))
        generator.append_tokens(self._input_ids(rows))
        while not generator.is_done() and not all(row.done for row in rows):
            generator.generate_next_token()
            for row, token in zip(rows, generator.get_next_tokens(), strict=True):
                if not row.done:
                    self._advance(row, int(token))
            if _past(deadline):
                _finish(rows, "timeout")
            yield None
        _finish(rows, "length")

    def completion(self, row: GenerationRow) -> Completion:
        """The answer, from the text the stream decoder built token by token: the plain answer, the
        stop-string cut and the stream are one decoding (`og.Tokenizer.decode` of the whole list
        would drop everything after a byte that is not valid UTF-8 on its own)."""
        cut = first_stop(row.text, row.settings.stop)
        return Completion(
            text=row.text if cut is None else row.text[:cut],
            finish_reason=row.finish_reason or "length",
            prompt_tokens=len(row.prompt_ids),
            completion_tokens=len(row.tokens),
        )

    def _params(self, rows: Sequence[GenerationRow]):
        settings = rows[0].settings
        longest = max(len(row.prompt_ids) for row in rows)
        options: dict[str, Any] = {
            # Within the context: `decode` takes only rows that fit together.
            "max_length": longest + max(row.max_new_tokens for row in rows),
            "batch_size": len(rows),
        }
        if settings.min_tokens:  # part of the batch key: the same for every row here
            options["min_length"] = min(self.context_length, longest + settings.min_tokens)
        if settings.temperature > 0:
            options.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
        else:
            options["do_sample"] = False
        if settings.seed is not None:
            options["random_seed"] = settings.seed
        params = self._og.GeneratorParams(self.model)
        params.set_search_options(**options)
        if settings.response_format is not None:  # part of the batch key too
            params.set_guidance(*settings.response_format.guidance())
        return params

    def _compile_response_format(self, response_format: ResponseFormat) -> None:
        """Refuse a schema the runtime cannot compile, before any generation: the grammar is built when
        a Generator is created, so create a one-token one (cheap: well under a millisecond here)."""
        params = self._og.GeneratorParams(self.model)
        params.set_search_options(max_length=1)
        params.set_guidance(*response_format.guidance())
        try:
            self._og.Generator(self.model, params)
        except RuntimeError as error:
            reason = " ".join(str(error).split())
            raise BadRequestError(
                f"'response_format': the schema cannot be compiled for constrained decoding: {quote(reason)}",
                "response_format",
                code="invalid_json_schema",
            ) from None

    def _advance(self, row: GenerationRow, token: int) -> None:
        """Take one token for a row, finishing it on EOS, a stop string or its token budget."""
        if token in self.eos_ids and len(row.tokens) >= row.settings.min_tokens:
            row.finish_reason = "stop"
            return
        row.tokens.append(token)
        piece = row.stream.decode(token)
        row.text += piece
        stops = row.settings.stop
        if stops:
            tail = row.text[-(len(piece) + max(len(stop) for stop in stops)) :]
            if any(stop in tail for stop in stops):
                row.finish_reason = "stop"
                return
        if len(row.tokens) >= row.max_new_tokens:
            row.finish_reason = "length"

    def _input_ids(self, rows: Sequence[GenerationRow]):
        import numpy as np

        if len(rows) == 1:
            return np.asarray(rows[0].prompt_ids, dtype=np.int32)
        longest = max(len(row.prompt_ids) for row in rows)
        batch = np.full((len(rows), longest), self.pad_id, dtype=np.int32)
        for index, row in enumerate(rows):
            batch[index, : len(row.prompt_ids)] = row.prompt_ids
        return batch

    # Whole requests, built on the steps

    def generate(self, requests: Sequence[ChatRequest], limits: RequestLimits | None = None) -> list[Completion]:
        """Answer every row in order. Rows sharing a batch key are generated together, in runtime-sized
        batches; raises BadRequestError before any generation, DeadlineExceededError after the deadline."""
        limits = limits or RequestLimits()
        deadline = time.monotonic() + limits.timeout_seconds
        rows = []
        for index, request in enumerate(requests):
            try:
                rows.append(self.prepare(request))
            except BadRequestError as error:
                raise BadRequestError(f"row {index}: {error.message}", error.param, error.code) from None
        check_total_tokens(rows, limits)
        for batch in batches(rows, self.batch_key, self.max_batch_size, self.context_length):
            for _ in self.decode(batch, deadline):
                pass
        if any(row.finish_reason == "timeout" for row in rows):
            raise DeadlineExceededError(
                f"the request did not finish within its deadline of {limits.timeout_seconds:g} s "
                f"({len(rows)} rows); ask for fewer rows or tokens"
            )
        return [self.completion(row) for row in rows]

    def stream(
        self, request: ChatRequest, limits: RequestLimits | None = None
    ) -> Iterator[tuple[str, Completion | None]]:
        """Yield (text piece, None) as tokens decode, then ("", the final Completion)."""
        limits = limits or RequestLimits()
        row = self.prepare(request)
        check_total_tokens([row], limits)
        emitted = 0
        for _ in self.decode([row], time.monotonic() + limits.timeout_seconds):
            visible = row.visible_text
            if len(visible) > emitted:
                yield visible[emitted:], None
                emitted = len(visible)
        if row.finish_reason == "timeout":
            raise DeadlineExceededError(
                f"the request did not finish within its deadline of {limits.timeout_seconds:g} s"
            )
        completion = self.completion(row)
        if len(completion.text) > emitted:
            yield completion.text[emitted:], None
        yield "", completion


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() > deadline


def _finish(rows: Sequence[GenerationRow], reason: str) -> None:
    for row in rows:
        if row.finish_reason is None:
            row.finish_reason = reason
