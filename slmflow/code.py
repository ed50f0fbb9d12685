"""The project's code as files: where a module lives, and which project files a piece of code runs.

Cache keys and registered identities hash the code a step or a model really runs, found from the code
itself: its imports inside the project (at any depth, lazy imports in functions included), followed
transitively, plus the `__init__.py` of every package on the way and each package's `data/` folder.
A module named by a string (as a models-from-code entry, `"slmflow.chat.pyfunc_entry"`) counts as
imported. Adding a module nothing imports, or changing code outside the closure, changes no key.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent
PACKAGE = PACKAGE_DIR.name
# The pinned environment: a changed pin changes every key.
ENVIRONMENT_FILES = ("requirements.txt", "conda.yaml")
_MODULE_NAME = re.compile(rf"^{PACKAGE}(\.[A-Za-z_]\w*)*$")


def module_file(module: str, project_dir: Path = PROJECT_DIR) -> Path | None:
    """The file of a project module (`a.b` as `a/b.py` or `a/b/__init__.py`), or None when there is none."""
    base = project_dir.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _named_modules(tree: ast.AST) -> set[str]:
    """Every project module a file imports or names in a string, and each `from X import name` as X.name too."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_NAME.match(node.value):
            names.add(node.value)
    return {name for name in names if name == PACKAGE or name.startswith(PACKAGE + ".")}


def import_closure(files: Iterable[Path], project_dir: Path = PROJECT_DIR, excluded: Iterable[str] = ()) -> list[Path]:
    """The given files and every project file they run, sorted: modules, package `__init__`s, package data.

    `excluded` modules (and what only they import) are left out: code run only when the config asks for it.
    """
    seen: set[Path] = {found for module in excluded if (found := module_file(module, project_dir)) is not None}
    skipped = set(seen)
    pending = [Path(f).resolve() for f in files]
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _named_modules(ast.parse(path.read_text(), filename=str(path))):
            parts = module.split(".")
            for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                found = module_file(".".join(parts[:depth]), project_dir)
                if found is not None and found not in seen:
                    pending.append(found)
    data = {
        data_file
        for path in seen
        if path.name == "__init__.py"
        for data_file in (path.parent / "data").rglob("*")
        if data_file.is_file()
    }
    return sorted((seen - skipped) | data)


def code_digest(files: Iterable[Path], project_dir: Path = PROJECT_DIR, excluded: Iterable[str] = ()) -> str:
    """One digest of what `files` run (their import closure, less `excluded` modules) and the pins."""
    project_dir = project_dir.resolve()
    digest = hashlib.sha256()
    closure = import_closure(files, project_dir, excluded)
    for path in [*closure, *(project_dir / name for name in ENVIRONMENT_FILES)]:
        digest.update(path.relative_to(project_dir).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def module_digest(module: str, project_dir: Path = PROJECT_DIR) -> str:
    """The code digest of one project module: what importing and running it runs."""
    path = module_file(module, project_dir)
    if path is None:
        raise ValueError(f"no project module named {module}")
    return code_digest([path], project_dir)
