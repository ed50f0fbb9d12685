import multiprocessing
import time
from pathlib import Path

import pytest

from slmflow.fetch.cache import build_once


def staged(folder: Path) -> list[str]:
    """What a build left beside its target."""
    return sorted(p.name for p in folder.iterdir() if p.name != "thing")


def test_builds_once_and_leaves_no_staging(tmp_path):
    calls = []

    def build(output):
        calls.append(output)
        output.mkdir()
        (output / "done").write_text("x")

    target = tmp_path / "cache" / "thing"
    assert build_once(target, "done", build) == target
    assert build_once(target, "done", build) == target
    assert len(calls) == 1
    assert (target / "done").read_text() == "x"
    assert staged(tmp_path / "cache") == []


def test_failed_build_leaves_nothing_behind(tmp_path):
    def build(output):
        output.mkdir()
        (output / "partial").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        build_once(tmp_path / "cache" / "thing", "done", build)
    assert not (tmp_path / "cache" / "thing").exists()
    assert staged(tmp_path / "cache") == []


def _slow_build(log: Path, output: Path) -> None:
    with log.open("a") as handle:
        handle.write("built\n")
    time.sleep(0.5)  # long enough for the other process to arrive while this one builds
    output.mkdir()
    (output / "done").write_text("x")


def _build_in_process(target: Path, log: Path) -> None:
    build_once(target, "done", lambda output: _slow_build(log, output))


def test_two_processes_sharing_the_cache_build_once(tmp_path):
    target, log = tmp_path / "cache" / "thing", tmp_path / "builds.log"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_build_in_process, args=(target, log)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert [worker.exitcode for worker in workers] == [0, 0]
    assert log.read_text() == "built\n"
    assert (target / "done").exists() and staged(tmp_path / "cache") == []
