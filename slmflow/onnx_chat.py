"""The ONNX Runtime GenAI chat model: a step-wise batched generation engine and its MLflow pyfunc wrapper.

The engine's public steps let a caller batch rows from many requests: `prepare` checks and tokenizes
one request into a `GenerationRow`, `decode` generates one runtime batch of rows that share a
`batch_key` and yields after every token, `GenerationRow.cancel` stops one row, and `completion`
gives a finished row's answer. `generate` and `stream` (used by the pyfunc) are built on them.
The og.Model and og.Tokenizer are shared; every batch gets its own GeneratorParams and Generator.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import re
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import DEADLINE_EXCEEDED, INTERNAL_ERROR, INVALID_PARAMETER_VALUE

from slmflow.chat import chat_completion, chat_completion_chunk
from slmflow.requests import (
    BadRequestError,
    ChatRequest,
    DeadlineExceededError,
    RequestLimits,
    SamplingSettings,
    parse_requests,
)

ONNX_ARTIFACT = "onnx_model"
RUNTIME_MAX_BATCH_SIZE = 32  # onnxruntime-genai refuses a larger batch_size
FALLBACK_TOKEN_CHARS = 64  # when the tokenizer's vocabulary cannot be read
_CONTINUATION_MARK = "\n"  # encoded before a piece that continues a prompt, then dropped
_logger = logging.getLogger(__name__)


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class GenerationRow:
    """One request being generated: its prompt, its budget and what it has decoded so far.

    `finish_reason` is None while generating, then "stop", "length", "timeout" or "cancelled"."""

    request: ChatRequest
    prompt_ids: list[int]
    max_new_tokens: int
    stream: Any = field(repr=False)
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None

    @property
    def settings(self) -> SamplingSettings:
        return self.request.settings

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def cancel(self) -> None:
        """Finish this row now (its client went away); the batch stops once every row is finished."""
        if self.finish_reason is None:
            self.finish_reason = "cancelled"

    @property
    def visible_text(self) -> str:
        """The text decoded so far that can be shown: cut at a stop string, and while generating,
        without a tail that may still become the start of one."""
        stops = self.settings.stop
        cut = first_stop(self.text, stops)
        if cut is not None:
            return self.text[:cut]
        if self.done or not stops:
            return self.text
        hold = max(len(stop) - 1 for stop in stops)
        return self.text[: max(0, len(self.text) - hold)]


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
        self.chat_template = _chat_template(model_dir)
        self.truncate_long_prompts = truncate_long_prompts
        vocabulary = _vocabulary(model_dir)
        self.special_tokens = vocabulary.special_tokens
        self._special_pattern = (
            re.compile("|".join(re.escape(t) for t in sorted(self.special_tokens, key=len, reverse=True)))
            if self.special_tokens
            else None
        )
        self.max_token_chars = vocabulary.max_token_chars

    # Prompts

    def render(self, messages: Sequence[Mapping[str, str]]) -> str:
        kwargs = {"template_str": self.chat_template} if self.chat_template else {}
        return self.tokenizer.apply_chat_template(json.dumps(list(messages)), add_generation_prompt=True, **kwargs)

    def prompt_ids(self, request: ChatRequest) -> list[int]:
        """The prompt's token ids. Message content is plain text: special-token text typed in it
        (e.g. `<|end|>`) is encoded as ordinary characters, so no one can forge a turn."""
        if not request.is_chat:
            return self._encode(request.prompt)  # an already formatted prompt: its tags are meant
        pattern = self._special_pattern
        if pattern is None or not any(pattern.search(m["content"]) for m in request.messages):
            return self._encode(self.render(request.messages))
        ids: list[int] = []
        pending = ""
        for text, is_content in self._template_pieces(request.messages):
            if not is_content:
                pending += text
                continue
            start = 0
            for found in pattern.finditer(text):
                # Break the special text after its first character: neither half can match a special token.
                pending += text[start : found.start() + 1]
                ids += self._encode(pending) if not ids else self._encode_continuation(pending)
                pending, start = "", found.start() + 1
            pending += text[start:]
        if pending:
            ids += self._encode(pending) if not ids else self._encode_continuation(pending)
        return ids

    def _template_pieces(self, messages: Sequence[Mapping[str, str]]) -> list[tuple[str, bool]]:
        """The rendered prompt as (text, is_message_content) pieces, found by rendering with markers."""
        token = uuid.uuid4().hex
        markers = [f"[[content-{token}-{index}]]" for index in range(len(messages))]
        rendered = self.render([{**m, "content": marker} for m, marker in zip(messages, markers, strict=True)])
        pieces: list[tuple[str, bool]] = []
        position = 0
        for message, marker in zip(messages, markers, strict=True):
            found = rendered.find(marker, position)
            if found < 0:  # the template left this message out
                continue
            pieces += [(rendered[position:found], False), (message["content"], True)]
            position = found + len(marker)
        pieces.append((rendered[position:], False))
        return pieces

    def _encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def _encode_continuation(self, text: str) -> list[int]:
        """Ids of text that continues a prompt, without a start-of-text prefix or a dummy space."""
        head = self._encode(_CONTINUATION_MARK)
        full = self._encode(_CONTINUATION_MARK + text)
        return full[len(head) :] if full[: len(head)] == head else self._encode(text)

    # The step-wise API

    def prepare(self, request: ChatRequest) -> GenerationRow:
        """Check one request against the model and tokenize it; raises BadRequestError naming the field."""
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
        field_name = "messages" if request.is_chat else "prompt"
        characters = request.text_length()
        if characters > self.context_length * self.max_token_chars:  # too long for sure: no need to tokenize
            raise BadRequestError(
                f"the {field_name} holds {characters} characters, more than the model's context of "
                f"{self.context_length} tokens can hold",
                field_name,
                code="context_length_exceeded",
            )
        prompt_ids = self.prompt_ids(request)
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
        return GenerationRow(
            request=request,
            prompt_ids=prompt_ids,
            max_new_tokens=min(settings.max_tokens, room),
            stream=self.tokenizer.create_stream(),
        )

    def batch_key(self, row: GenerationRow) -> tuple:
        """Rows with equal keys can be generated in one `decode` call."""
        return row.settings.batch_key()

    def decode(self, rows: Sequence[GenerationRow], deadline: float | None = None) -> Iterator[None]:
        """Generate one runtime batch of rows sharing a batch key; yield after every step.

        Stops when every row is finished or cancelled; rows still running at `deadline`
        (a `time.monotonic()` value) finish with "timeout"."""
        if not rows or len(rows) > self.max_batch_size:
            raise ValueError(f"a batch holds 1 to {self.max_batch_size} rows, got {len(rows)}")
        if len({self.batch_key(row) for row in rows}) != 1:
            raise ValueError("rows of one batch must share a batch key")
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
        text = self.tokenizer.decode(row.tokens) if row.tokens else ""
        cut = first_stop(text, row.settings.stop)
        return Completion(
            text=text if cut is None else text[:cut],
            finish_reason=row.finish_reason or "length",
            prompt_tokens=len(row.prompt_ids),
            completion_tokens=len(row.tokens),
        )

    def _params(self, rows: Sequence[GenerationRow]):
        settings = rows[0].settings
        longest = max(len(row.prompt_ids) for row in rows)
        options: dict[str, Any] = {
            # Rows were checked one by one; a short prompt asking for many tokens beside a long one
            # is still capped by the context, and then ends with finish_reason "length".
            "max_length": min(self.context_length, longest + max(row.max_new_tokens for row in rows)),
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
        return params

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
        for batch in batches(rows, self.batch_key, self.max_batch_size):
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


def batches(rows: Sequence[GenerationRow], key, size: int) -> Iterator[list[GenerationRow]]:
    """Rows grouped by batch key (in order of first appearance), each group cut into batches of `size`."""
    groups: dict[tuple, list[GenerationRow]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    for group in groups.values():
        for start in range(0, len(group), size):
            yield group[start : start + size]


def check_total_tokens(rows: Sequence[GenerationRow], limits: RequestLimits) -> None:
    total = sum(len(row.prompt_ids) + row.max_new_tokens for row in rows)
    if total > limits.max_total_tokens:
        raise BadRequestError(
            f"the request asks for {total} tokens in all (rows x (prompt + max_tokens)), more than the limit "
            f"of {limits.max_total_tokens}",
            "max_tokens",
            code="request_too_large",
        )


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the earliest stop string starts in the text, if any does."""
    positions = [text.index(stop) for stop in stops if stop in text]
    return min(positions) if positions else None


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() > deadline


def _finish(rows: Sequence[GenerationRow], reason: str) -> None:
    for row in rows:
        if row.finish_reason is None:
            row.finish_reason = reason


@dataclass(frozen=True)
class _Vocabulary:
    special_tokens: tuple[str, ...]
    max_token_chars: int


def _vocabulary(model_dir: Path) -> _Vocabulary:
    """Special-token texts and the longest token (in characters), from tokenizer.json."""
    path = model_dir / "tokenizer.json"
    if not path.exists():
        return _Vocabulary((), FALLBACK_TOKEN_CHARS)
    tokenizer = json.loads(path.read_text())
    added = tokenizer.get("added_tokens") or []
    special = tuple(t["content"] for t in added if t.get("special") and t.get("content"))
    vocab = (tokenizer.get("model") or {}).get("vocab") or {}
    pieces = vocab.keys() if isinstance(vocab, dict) else [entry[0] for entry in vocab]
    longest = max((len(piece) for piece in itertools.chain(pieces, (t["content"] for t in added))), default=0)
    return _Vocabulary(special, longest or FALLBACK_TOKEN_CHARS)


def _chat_template(model_dir: Path) -> str | None:
    """The model's chat template, from chat_template.jinja or tokenizer_config.json."""
    template_file = model_dir / "chat_template.jinja"
    if template_file.exists():
        return template_file.read_text()
    tokenizer_config = model_dir / "tokenizer_config.json"
    if tokenizer_config.exists():
        template = json.loads(tokenizer_config.read_text()).get("chat_template")
        if isinstance(template, str):
            return template
    return None


def sampling_defaults(model_config: Mapping[str, Any]) -> SamplingSettings:
    """The model's default settings, from the logged generation config (validated by the request model)."""
    names = {"max_new_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p", "top_k": "top_k"}
    values = {field_name: model_config[key] for key, field_name in names.items() if key in model_config}
    if model_config.get("seed") is not None:
        values["seed"] = model_config["seed"]
    return SamplingSettings(**values)


class OnnxChatModel(mlflow.pyfunc.PythonModel):
    """Pyfunc chat model over an ONNX GenAI folder logged as the `onnx_model` artifact.

    `predict` returns one answer per row, always a list (as the transformers chat flavor does):
    a `chat.completion` for a `messages` row, a string for a `prompt` row."""

    def load_context(self, context) -> None:
        model_config = dict(context.model_config or {})
        self.engine = OnnxChatEngine(
            context.artifacts[ONNX_ARTIFACT],
            intra_op_num_threads=int(model_config.get("intra_op_num_threads", 0)),
            truncate_long_prompts=bool(model_config.get("truncate_long_prompts", False)),
        )
        self.defaults = sampling_defaults(model_config)
        self.limits = RequestLimits(**model_config.get("limits", {}))
        self.model_name = str(model_config.get("model_name", "onnx-chat"))

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> list:
        with _refusals():
            requests = parse_requests(model_input, params, self.defaults, self.limits)
            completions = self.engine.generate(requests, self.limits)
        return [self._output(request, done) for request, done in zip(requests, completions, strict=True)]

    def predict_stream(self, context, model_input, params: dict[str, Any] | None = None):
        with _refusals():
            requests = parse_requests(model_input, params, self.defaults, self.limits)
            if len(requests) != 1:
                raise BadRequestError("streaming takes exactly one request")
            request = requests[0]
            pieces = self.engine.stream(request, self.limits)
            first = next(pieces)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if request.is_chat:
            yield chat_completion_chunk(completion_id, {"role": "assistant", "content": ""}, None, self.model_name)
        with _refusals():
            for piece, final in itertools.chain([first], pieces):
                if final is not None:
                    if request.is_chat:
                        yield chat_completion_chunk(completion_id, {}, final.finish_reason, self.model_name)
                elif request.is_chat:
                    yield chat_completion_chunk(completion_id, {"content": piece}, None, self.model_name)
                else:
                    yield piece

    def _output(self, request: ChatRequest, done: Completion):
        if not request.is_chat:
            return done.text
        return chat_completion(
            done.text, done.finish_reason, done.prompt_tokens, done.completion_tokens, self.model_name
        )


class _Refusal(MlflowException):
    """An MlflowException whose message stays as written.

    MLflow's scoring server prefixes the message of any MlflowException raised by predict with the
    whole input ("Failed to predict data '...'"), echoing megabytes back; this message ignores that."""

    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_message"):
            self._message = value


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """Request errors as MLflow errors naming the field; anything unexpected as one generic message
    with an error id, the details only in the server log."""
    try:
        yield
    except BadRequestError as error:
        raise _Refusal(error.message, error_code=INVALID_PARAMETER_VALUE, param=error.param) from None
    except DeadlineExceededError as error:
        raise _Refusal(str(error), error_code=DEADLINE_EXCEEDED) from None
    except MlflowException:
        raise
    except Exception:
        error_id = uuid.uuid4().hex[:12]
        _logger.exception("internal error %s while generating", error_id)
        raise _Refusal(
            f"internal error while generating (error id {error_id}; the details are in the server log)",
            error_code=INTERNAL_ERROR,
            error_id=error_id,
        ) from None
