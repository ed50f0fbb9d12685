"""Chat prompts for an onnxruntime-genai model: rendering with the model's template, and token ids in
which message content stays plain text (special-token text typed by a user never becomes a turn marker)."""

from __future__ import annotations

import itertools
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmflow.chat.request import ChatRequest
from slmflow.templates import read_chat_template

FALLBACK_TOKEN_CHARS = 64  # when the tokenizer's vocabulary cannot be read
_CONTINUATION_MARK = "\n"  # encoded before a piece that continues a prompt, then dropped


class PromptEncoder:
    """Renders and tokenizes prompts with one model's tokenizer, chat template and special tokens."""

    def __init__(self, tokenizer: Any, model_dir: Path) -> None:
        self.tokenizer = tokenizer
        self.chat_template = read_chat_template(model_dir)
        vocabulary = read_vocabulary(model_dir)
        self.special_tokens = vocabulary.special_tokens
        self.max_token_chars = vocabulary.max_token_chars
        self._special_pattern = (
            re.compile("|".join(re.escape(t) for t in sorted(self.special_tokens, key=len, reverse=True)))
            if self.special_tokens
            else None
        )

    def render(self, messages: Sequence[Mapping[str, str]]) -> str:
        kwargs = {"template_str": self.chat_template} if self.chat_template else {}
        return self.tokenizer.apply_chat_template(json.dumps(list(messages)), add_generation_prompt=True, **kwargs)

    def prompt_ids(self, request: ChatRequest) -> list[int]:
        """The prompt's token ids. Message content is plain text: special-token text typed in it
        (e.g. `<|end|>`) is encoded as ordinary characters, so no one can forge a turn."""
        if request.messages is None:
            return self.encode(request.prompt or "")  # an already formatted prompt: its tags are meant
        messages = request.messages
        pattern = self._special_pattern
        if pattern is None or not any(pattern.search(m["content"]) for m in messages):
            return self.encode(self.render(messages))
        ids: list[int] = []
        pending = ""
        for text, is_content in self._template_pieces(messages):
            if not is_content:
                pending += text
                continue
            start = 0
            for found in pattern.finditer(text):
                # Break the special text after its first character: neither half can match a special token.
                pending += text[start : found.start() + 1]
                ids += self.encode(pending) if not ids else self._encode_continuation(pending)
                pending, start = "", found.start() + 1
            pending += text[start:]
        if pending:
            ids += self.encode(pending) if not ids else self._encode_continuation(pending)
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

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def _encode_continuation(self, text: str) -> list[int]:
        """Ids of text that continues a prompt, without a start-of-text prefix or a dummy space."""
        head = self.encode(_CONTINUATION_MARK)
        full = self.encode(_CONTINUATION_MARK + text)
        return full[len(head) :] if full[: len(head)] == head else self.encode(text)


@dataclass(frozen=True)
class Vocabulary:
    special_tokens: tuple[str, ...]
    max_token_chars: int


def read_vocabulary(model_dir: Path) -> Vocabulary:
    """Special-token texts and the longest token (in characters), from tokenizer.json."""
    path = model_dir / "tokenizer.json"
    if not path.exists():
        return Vocabulary((), FALLBACK_TOKEN_CHARS)
    tokenizer = json.loads(path.read_text())
    added = tokenizer.get("added_tokens") or []
    special = tuple(t["content"] for t in added if t.get("special") and t.get("content"))
    vocab = (tokenizer.get("model") or {}).get("vocab") or {}
    pieces = vocab.keys() if isinstance(vocab, dict) else [entry[0] for entry in vocab]
    longest = max((len(piece) for piece in itertools.chain(pieces, (t["content"] for t in added))), default=0)
    return Vocabulary(special, longest or FALLBACK_TOKEN_CHARS)
