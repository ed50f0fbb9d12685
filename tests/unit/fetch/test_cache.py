import pytest

from slmflow.fetch.cache import build_once


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
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["thing"]


def test_failed_build_leaves_nothing_behind(tmp_path):
    def build(output):
        output.mkdir()
        (output / "partial").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        build_once(tmp_path / "cache" / "thing", "done", build)
    assert list((tmp_path / "cache").iterdir()) == []
