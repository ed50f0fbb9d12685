import re
from pathlib import Path

import yaml

from slmflow.flavors.common import pinned_requirements
from slmflow.flavors.onnx_chat import ONNX_REQUIREMENTS
from slmflow.flavors.transformers_chat import TRANSFORMERS_REQUIREMENTS
from testkit.processes import PROJECT_DIR


def requirement_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def test_every_dependency_is_pinned_exactly():
    for name in ("requirements.txt", "requirements-dev.txt", "benchmarks/requirements.txt"):
        for line in requirement_lines(PROJECT_DIR / name):
            assert line.startswith("-r ") or re.fullmatch(r"[A-Za-z0-9_.\-]+==[\w.+]+", line), line


def test_torch_is_the_cpu_build_on_disk():
    """The installed distribution, not only the pin: a CUDA build would bring gigabytes of nvidia-* wheels."""
    from importlib import metadata

    import torch

    [pin] = [line for line in requirement_lines(PROJECT_DIR / "requirements.txt") if line.startswith("torch==")]
    assert metadata.version("torch") == pin.removeprefix("torch==") + "+cpu"
    assert torch.version.cuda is None and not torch.backends.cuda.is_built()
    names = {(dist.metadata["Name"] or "").lower() for dist in metadata.distributions()}
    assert not {name for name in names if name.startswith("nvidia-")}


def test_the_gguf_loaders_packages_are_pinned():
    """transformers reads GGUF files only with these two installed; neither comes with transformers."""
    pins = requirement_lines(PROJECT_DIR / "requirements.txt")
    assert "gguf==0.19.0" in pins and "accelerate==1.15.0" in pins


def test_conda_env_installs_the_same_pins():
    conda = yaml.safe_load((PROJECT_DIR / "conda.yaml").read_text())
    pip_section = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert pip_section == ["-r requirements.txt"]
    assert "python=3.11.7" in conda["dependencies"]


def test_logged_models_take_their_pins_from_requirements():
    pins = set(requirement_lines(PROJECT_DIR / "requirements.txt"))
    for requirement in pinned_requirements(*ONNX_REQUIREMENTS, *TRANSFORMERS_REQUIREMENTS):
        assert requirement in pins
    assert not any("torchvision" in r for r in pinned_requirements(*TRANSFORMERS_REQUIREMENTS))


def test_lm_eval_and_what_its_chat_client_needs_are_pinned_and_installed():
    from importlib import metadata

    pins = requirement_lines(PROJECT_DIR / "requirements.txt")
    for name, version in (("lm-eval", "0.4.13"), ("tenacity", "9.2.1"), ("aiohttp", "3.14.5")):
        assert f"{name}=={version}" in pins
        assert metadata.version(name) == version
