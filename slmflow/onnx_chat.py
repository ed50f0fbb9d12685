"""The ONNX Runtime GenAI chat model: a batched generation engine and its MLflow pyfunc wrapper.

Uses the current onnxruntime-genai API (Generator, append_tokens, generate_next_token). The
og.Model and og.Tokenizer are shared; every request gets its own GeneratorParams, Generator and
TokenizerStream, so one loaded model can serve concurrent requests.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow

from slmflow.chat import (
    BadRequestError,
    ChatRequest,
    SamplingSettings,
    chat_completion,
    chat_completion_chunk,
    parse_requests,
)

ONNX_ARTIFACT = "onnx_model"


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class _Row:
    """Per-request generation state."""

    prompt_ids: list[int]
    max_new_tokens: int
    settings: SamplingSettings
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    stream: Any = None


class OnnxChatEngine:
    """Generation over one onnxruntime-genai model folder."""

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
        eos = genai["eos_token_id"]
        self.eos_ids = frozenset(eos if isinstance(eos, list) else [eos])
        self.pad_id = int(genai.get("pad_token_id", min(self.eos_ids)))
        self.chat_template = _chat_template(model_dir)
        self.truncate_long_prompts = truncate_long_prompts

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        kwargs = {"template_str": self.chat_template} if self.chat_template else {}
        return self.tokenizer.apply_chat_template(json.dumps(list(messages)), add_generation_prompt=True, **kwargs)

    def prompt_text(self, request: ChatRequest) -> str:
        return self.render(request.messages) if request.is_chat else request.prompt

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        """Answer every row in order; rows with the same sampling settings are generated as one batch."""
        rows = [self._prepare(request, index) for index, request in enumerate(requests)]
        groups: dict[tuple, list[_Row]] = {}
        for row in rows:
            groups.setdefault(row.settings.batch_key(), []).append(row)
        for group in groups.values():
            for _ in self._decode(group):
                pass
        return [self._completion(row) for row in rows]

    def stream(self, request: ChatRequest) -> Iterator[tuple[str, Completion | None]]:
        """Yield (text piece, None) as tokens decode, then ("", the final Completion)."""
        row = self._prepare(request, 0)
        row.stream = self.tokenizer.create_stream()
        emitted = 0
        for _ in self._decode([row]):
            safe = _safe_prefix_length(row.text, row.settings.stop)
            if safe > emitted:
                yield row.text[emitted:safe], None
                emitted = safe
        completion = self._completion(row)
        if len(completion.text) > emitted:
            yield completion.text[emitted:], None
        yield "", completion

    def _prepare(self, request: ChatRequest, index: int) -> _Row:
        settings = request.settings
        prompt_ids = [int(t) for t in self.tokenizer.encode(self.prompt_text(request))]
        room = self.context_length - len(prompt_ids)
        if settings.max_tokens_explicit and settings.max_tokens >= self.context_length:
            raise BadRequestError(
                f"row {index}: max_tokens={settings.max_tokens} is beyond the model's context of "
                f"{self.context_length} tokens"
            )
        if room < 1 or (settings.max_tokens_explicit and room < settings.max_tokens):
            if not self.truncate_long_prompts:
                raise BadRequestError(
                    f"row {index}: the prompt is {len(prompt_ids)} tokens and asks for up to "
                    f"{settings.max_tokens} new ones, beyond the model's context of {self.context_length} "
                    "tokens (prompts are rejected, not truncated: set runtime.truncate_long_prompts to truncate)"
                )
            keep = self.context_length - min(settings.max_tokens, self.context_length // 2)
            prompt_ids = prompt_ids[-keep:]
            room = self.context_length - len(prompt_ids)
        return _Row(prompt_ids=prompt_ids, max_new_tokens=min(settings.max_tokens, room), settings=settings)

    def _decode(self, rows: list[_Row]) -> Iterator[None]:
        """Generate for rows sharing sampling settings; yields after every step."""
        og = self._og
        settings = rows[0].settings
        longest = max(len(row.prompt_ids) for row in rows)
        options: dict[str, Any] = {
            # Rows were checked one by one; a short prompt asking for many tokens beside a long one
            # is still capped by the context, and then ends with finish_reason "length".
            "max_length": min(self.context_length, longest + max(row.max_new_tokens for row in rows)),
            "batch_size": len(rows),
        }
        if settings.min_tokens:  # part of the batch key: the same for every row here
            options["min_length"] = longest + settings.min_tokens
        if settings.temperature > 0:
            options.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
        else:
            options["do_sample"] = False
        if settings.seed is not None:
            options["random_seed"] = settings.seed
        params = og.GeneratorParams(self.model)
        params.set_search_options(**options)
        generator = og.Generator(self.model, params)
        generator.append_tokens(self._input_ids(rows))
        active = len(rows)
        while active and not generator.is_done():
            generator.generate_next_token()
            next_tokens = generator.get_next_tokens()
            for row, token in zip(rows, next_tokens, strict=True):
                if row.finish_reason is None:
                    active -= self._advance(row, int(token))
            yield None
        for row in rows:
            if row.finish_reason is None:
                row.finish_reason = "length"

    def _advance(self, row: _Row, token: int) -> int:
        """Take one token for a row; return 1 if the row just finished."""
        if token in self.eos_ids and len(row.tokens) >= row.settings.min_tokens:
            row.finish_reason = "stop"
            return 1
        row.tokens.append(token)
        if row.stream is not None or row.settings.stop:
            if row.stream is None:
                row.stream = self.tokenizer.create_stream()
            row.text += row.stream.decode(token)
            if any(stop in row.text for stop in row.settings.stop):
                row.finish_reason = "stop"
                return 1
        if len(row.tokens) >= row.max_new_tokens:
            row.finish_reason = "length"
            return 1
        return 0

    def _input_ids(self, rows: list[_Row]):
        import numpy as np

        if len(rows) == 1:
            return np.asarray(rows[0].prompt_ids, dtype=np.int32)
        longest = max(len(row.prompt_ids) for row in rows)
        batch = np.full((len(rows), longest), self.pad_id, dtype=np.int32)
        for index, row in enumerate(rows):
            batch[index, : len(row.prompt_ids)] = row.prompt_ids
        return batch

    def _completion(self, row: _Row) -> Completion:
        text = self.tokenizer.decode(row.tokens) if row.tokens else ""
        cut = _first_stop(text, row.settings.stop)
        return Completion(
            text=text if cut is None else text[:cut],
            finish_reason=row.finish_reason,
            prompt_tokens=len(row.prompt_ids),
            completion_tokens=len(row.tokens),
        )


def _safe_prefix_length(text: str, stops: Sequence[str]) -> int:
    """How much of the text can be streamed without leaking the start of a stop string."""
    if not stops:
        return len(text)
    cut = _first_stop(text, stops)
    if cut is not None:
        return cut
    hold = max(len(stop) - 1 for stop in stops)
    return max(0, len(text) - hold)


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the earliest stop string starts in the text, if any does."""
    positions = [text.index(stop) for stop in stops if stop in text]
    return min(positions) if positions else None


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


def sampling_defaults(model_config: dict[str, Any]) -> SamplingSettings:
    return SamplingSettings(
        max_tokens=int(model_config.get("max_new_tokens", 64)),
        temperature=float(model_config.get("temperature", 0.0)),
        top_p=float(model_config.get("top_p", 1.0)),
        top_k=int(model_config.get("top_k", 50)),
        seed=model_config.get("seed"),
    )


class OnnxChatModel(mlflow.pyfunc.PythonModel):
    """Pyfunc chat model over an ONNX GenAI folder logged as the `onnx_model` artifact."""

    def load_context(self, context) -> None:
        model_config = dict(context.model_config or {})
        self.engine = OnnxChatEngine(
            context.artifacts[ONNX_ARTIFACT],
            intra_op_num_threads=int(model_config.get("intra_op_num_threads", 0)),
            truncate_long_prompts=bool(model_config.get("truncate_long_prompts", False)),
        )
        self.defaults = sampling_defaults(model_config)
        self.model_name = str(model_config.get("model_name", "onnx-chat"))

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        requests = self._parse(model_input, params)
        try:
            completions = self.engine.generate(requests)
        except BadRequestError as error:
            raise _bad_request(error) from None
        outputs = [self._output(request, done) for request, done in zip(requests, completions, strict=True)]
        if len(requests) == 1 and requests[0].is_chat:
            return outputs[0]  # one chat request in, one chat.completion out, as an OpenAI endpoint answers
        return outputs

    def predict_stream(self, context, model_input, params: dict[str, Any] | None = None):
        requests = self._parse(model_input, params)
        if len(requests) != 1:
            raise _bad_request(BadRequestError("streaming takes exactly one request"))
        request = requests[0]
        try:
            pieces = self.engine.stream(request)
            first = next(pieces)
        except BadRequestError as error:
            raise _bad_request(error) from None
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if request.is_chat:
            yield chat_completion_chunk(completion_id, {"role": "assistant", "content": ""}, None, self.model_name)
        for piece, final in itertools.chain([first], pieces):
            if final is not None:
                if request.is_chat:
                    yield chat_completion_chunk(completion_id, {}, final.finish_reason, self.model_name)
            elif request.is_chat:
                yield chat_completion_chunk(completion_id, {"content": piece}, None, self.model_name)
            else:
                yield piece

    def _parse(self, model_input, params) -> list[ChatRequest]:
        try:
            return parse_requests(model_input, params, self.defaults)
        except BadRequestError as error:
            raise _bad_request(error) from None

    def _output(self, request: ChatRequest, done: Completion):
        if not request.is_chat:
            return done.text
        return chat_completion(
            done.text, done.finish_reason, done.prompt_tokens, done.completion_tokens, self.model_name
        )


def _bad_request(error: Exception) -> Exception:
    from mlflow.exceptions import MlflowException

    return MlflowException.invalid_parameter_value(str(error))
