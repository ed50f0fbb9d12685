"""The summary of the server-level same-weights benchmark and the exact-length request bodies."""

from pathlib import Path

import pytest

from benchmarks.llama_server import llama_server_target, summary
from benchmarks.serving import CLIENTS, body, slmflow_target


def run(rate: float, p50: float, p95: float) -> dict:
    return {"tokens_per_second": rate, "p50_s": p50, "p95_s": p95}


def test_summary_pairs_rounds_and_keeps_every_rate():
    names = ["slmflow.serve", "llama-server"]
    samples = {
        "slmflow.serve": {c: [run(100, 1, 2), run(120, 1, 3)] for c in CLIENTS},
        "llama-server": {c: [run(50, 2, 4), run(100, 2, 5)] for c in CLIENTS},
    }
    ttfts = {name: {c: [0.1, 0.2, 0.3, 0.4, 1.0] for c in CLIENTS} for name in names}
    levels = summary(samples, ttfts, names)
    level = levels[16]
    assert level["tokens_per_second_ratio"] == pytest.approx((2.0 + 1.2) / 2)
    assert level["slmflow.serve"]["tokens_per_second"] == [100, 120]
    assert level["llama-server"]["p95_s"] == pytest.approx(4.5)
    assert level["llama-server"]["ttft_p50_s"] == pytest.approx(0.3)
    assert level["llama-server"]["ttft_p95_s"] == pytest.approx(1.0)


def test_each_server_is_asked_for_an_exact_length_its_own_way():
    ours = slmflow_target("models:/m-1")
    theirs = llama_server_target(Path("llama-server"), Path("m.gguf"), 16, 2, 512)
    assert body(ours, 0, 64)["min_tokens"] == 64
    assert body(theirs, 0, 64)["ignore_eos"] is True and "min_tokens" not in body(theirs, 0, 64)
    assert body(theirs, 0, 64)["max_tokens"] == 64
    assert "127.0.0.1" in theirs.command and theirs.command[theirs.command.index("-c") + 1] == str(16 * 512)
