"""Import closures and code digests on a small synthetic project: what counts as the code a file runs."""

from pathlib import Path

import pytest

from slmflow.code import PACKAGE, code_digest, import_closure, module_digest, module_file


def write(root: Path, relative: str, text: str = "") -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def project(tmp_path) -> Path:
    """A project whose package has the real package's name, so its imports count as project imports."""
    root = tmp_path / "project"
    write(root, "requirements.txt", "pin==1\n")
    write(root, "conda.yaml", "name: x\n")
    write(root, f"{PACKAGE}/__init__.py")
    write(root, f"{PACKAGE}/base.py", "VALUE = 1\n")
    write(root, f"{PACKAGE}/lazy.py", "def f():\n    import json\n    from slmflow import base\n    return base\n")
    write(root, f"{PACKAGE}/sub/__init__.py")
    write(root, f"{PACKAGE}/sub/leaf.py", "from slmflow.base import VALUE\n")
    write(root, f"{PACKAGE}/sub/data/table.csv", "a,b\n")
    write(root, f"{PACKAGE}/named.py", 'ENTRY = "slmflow.sub.leaf"\nOTHER = "not.a.module"\n')
    write(root, f"{PACKAGE}/unused.py", "X = 1\n")
    write(root, "steps/step.py", "import os\nfrom slmflow.sub import leaf\n")
    return root


def relative(paths, root: Path) -> set[str]:
    return {path.relative_to(root.resolve()).as_posix() for path in paths}


def test_the_closure_follows_imports_transitively_with_package_inits_and_data(project):
    closure = import_closure([project / "steps" / "step.py"], project)
    assert relative(closure, project) == {
        "steps/step.py",
        f"{PACKAGE}/__init__.py",
        f"{PACKAGE}/sub/__init__.py",
        f"{PACKAGE}/sub/leaf.py",  # `from slmflow.sub import leaf` names a module
        f"{PACKAGE}/base.py",  # imported by leaf
        f"{PACKAGE}/sub/data/table.csv",  # the data folder of a package on the way
    }
    assert closure == sorted(closure)


def test_lazy_imports_and_modules_named_by_a_string_count(project):
    assert f"{PACKAGE}/base.py" in relative(import_closure([project / PACKAGE / "lazy.py"], project), project)
    named = relative(import_closure([project / PACKAGE / "named.py"], project), project)
    assert {f"{PACKAGE}/sub/leaf.py", f"{PACKAGE}/base.py"} <= named


def test_a_changed_imported_module_changes_the_digest_and_an_unimported_one_does_not(project):
    step = [project / "steps" / "step.py"]
    before = code_digest(step, project)
    assert code_digest(step, project) == before  # deterministic
    (project / PACKAGE / "unused.py").write_text("X = 2\n")
    write(project, f"{PACKAGE}/brand_new.py", "Y = 1\n")
    assert code_digest(step, project) == before
    (project / PACKAGE / "base.py").write_text("VALUE = 2\n")  # two imports away from the step
    after_library = code_digest(step, project)
    assert after_library != before
    (project / PACKAGE / "sub" / "data" / "table.csv").write_text("a,b\n1,2\n")
    after_data = code_digest(step, project)
    assert after_data != after_library
    (project / "requirements.txt").write_text("pin==2\n")
    assert code_digest(step, project) != after_data
    after_pins = code_digest(step, project)
    (project / "conda.yaml").write_text("name: y\n")
    assert code_digest(step, project) != after_pins


def test_the_digest_holds_paths_relative_to_the_project(project, tmp_path):
    import shutil

    step = Path("steps") / "step.py"
    elsewhere = tmp_path / "elsewhere" / "deeper"
    shutil.copytree(project, elsewhere)
    assert code_digest([elsewhere / step], elsewhere) == code_digest([project / step], project)
    (elsewhere / "steps" / "step.py").rename(elsewhere / "steps" / "renamed.py")
    assert code_digest([elsewhere / "steps" / "renamed.py"], elsewhere) != code_digest([project / step], project)


def test_module_files_and_digests(project):
    assert module_file(f"{PACKAGE}.sub", project) == project / PACKAGE / "sub" / "__init__.py"
    assert module_file(f"{PACKAGE}.sub.leaf", project) == project / PACKAGE / "sub" / "leaf.py"
    assert module_file(f"{PACKAGE}.missing", project) is None
    assert module_digest(f"{PACKAGE}.sub.leaf", project) == code_digest(
        [project / PACKAGE / "sub" / "leaf.py"], project
    )
    assert module_digest(f"{PACKAGE}.base", project) != module_digest(f"{PACKAGE}.sub.leaf", project)
    with pytest.raises(ValueError, match=f"no project module named {PACKAGE}.missing"):
        module_digest(f"{PACKAGE}.missing", project)


def test_a_package_whose_name_only_starts_like_the_project_is_not_followed(project):
    write(project, f"{PACKAGE}/rel.py", "import slmflowextra\nimport os.path\nX = 'slmflowextra'\n")
    write(project, "slmflowextra.py", "Z = 1\n")
    assert relative(import_closure([project / PACKAGE / "rel.py"], project), project) == {f"{PACKAGE}/rel.py"}


def test_only_a_package_brings_its_data_folder(project):
    """The data of a package imported for its `__init__` alone counts; a `data/` beside a plain script does not."""
    write(project, f"{PACKAGE}/tables/__init__.py", "NAMES = 'names.csv'\n")
    write(project, f"{PACKAGE}/tables/data/names.csv", "name\n")
    write(project, "steps/data/notes.txt", "not code\n")
    write(project, "steps/reader.py", "from slmflow import tables\n")
    assert relative(import_closure([project / "steps" / "reader.py"], project), project) == {
        "steps/reader.py",
        f"{PACKAGE}/__init__.py",
        f"{PACKAGE}/tables/__init__.py",
        f"{PACKAGE}/tables/data/names.csv",
    }


def test_a_file_that_does_not_parse_is_named(project):
    broken = write(project, f"{PACKAGE}/broken.py", "def f(:\n")
    write(project, "steps/uses_broken.py", "import slmflow.broken\n")
    with pytest.raises(SyntaxError) as refused:
        import_closure([project / "steps" / "uses_broken.py"], project)
    assert refused.value.filename == str(broken.resolve())
