"""Every service declares what it imports: each third-party module imported under a service's folder comes
from a distribution named in that service's own requirements.txt (following ``-r``).

The test venv holds every service's requirements together, so a missing line goes unnoticed by the other
tests and only fails where the service runs alone (its Docker image, or ``make run`` from ``make install``):
deblur's SciPy once did exactly that.
"""
from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = {"shared", "services", "gateway", "ui", "bench", "tools", "tests", "cli"}
SERVICE_DIRS = sorted(p.parent for p in ROOT.glob("services/*/requirements.txt")) + [ROOT / "gateway", ROOT / "ui"]


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-r "):
            names |= requirement_names((path.parent / line[3:].strip()).resolve())
            continue
        names.add(normalise(re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0]))
    return names


def imports_of(source: Path) -> tuple[set[str], set[str]]:
    """(top-level modules, modules of the shared package) that ``source`` imports, anywhere in it."""
    top, shared = set(), set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top.add(alias.name.split(".")[0])
                if alias.name.startswith("shared."):
                    shared.add(alias.name.split(".")[1])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                top.add(node.module.split(".")[0])
                if node.module.startswith("shared."):
                    shared.add(node.module.split(".")[1])
                elif node.module == "shared":
                    shared |= {alias.name for alias in node.names}
            elif node.level == 1 and source.parent.name == "shared":   # from .x import y inside shared/
                shared |= {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names}
    return top, shared


def imported_modules(folder: Path) -> set[str]:
    """Third-party modules the service's files import, with those of the shared modules they use (followed
    transitively: a stage without models never loads shared/torch_model.py)."""
    local = {p.stem for p in folder.rglob("*.py")} | {p.name for p in folder.rglob("*") if p.is_dir()}
    found: set[str] = set()
    pending = list(folder.rglob("*.py"))
    seen_shared: set[str] = set()
    while pending:
        source = pending.pop()
        top, shared = imports_of(source)
        found |= top
        for name in shared - seen_shared:
            seen_shared.add(name)
            if (ROOT / "shared" / f"{name}.py").is_file():
                pending.append(ROOT / "shared" / f"{name}.py")
    return {m for m in found if m not in sys.stdlib_module_names and m not in PROJECT_PACKAGES and m not in local}


def with_dependencies(names: set[str]) -> set[str]:
    """The distributions ``names`` install: themselves and what they require, transitively."""
    from importlib.metadata import PackageNotFoundError, requires
    out, pending = set(), list(names)
    while pending:
        name = pending.pop()
        if name in out:
            continue
        out.add(name)
        try:
            needs = requires(name) or []
        except PackageNotFoundError:
            continue
        pending += [normalise(re.split(r"[<>=!~;\[ (]", r, maxsplit=1)[0]) for r in needs if "extra ==" not in r]
    return out


def missing_requirements(folder: Path) -> dict[str, list[str]]:
    """Imported module -> the distributions that provide it, for modules none of the requirements install."""
    declared = with_dependencies(requirement_names(folder / "requirements.txt"))
    distributions = packages_distributions()
    missing = {}
    for module in sorted(imported_modules(folder)):
        owners = {normalise(d) for d in distributions.get(module, [])}
        assert owners, f"{module} (imported in {folder.name}) is not installed in the test venv"
        if not owners & declared:
            missing[module] = sorted(owners)
    return missing


@pytest.mark.parametrize("folder", SERVICE_DIRS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_a_service_requires_what_it_imports(folder: Path):
    missing = missing_requirements(folder)
    assert not missing, f"{folder.relative_to(ROOT)}/requirements.txt lacks {missing}"


def test_the_check_sees_a_missing_requirement(tmp_path: Path):
    """The check itself: a service that imports SciPy without declaring it is caught."""
    service = tmp_path / "stage"
    service.mkdir()
    (service / "stage.py").write_text("from scipy import fft\nimport numpy\n")
    (service / "requirements.txt").write_text("numpy>=1.26\n")
    assert imported_modules(service) == {"scipy", "numpy"}
    assert missing_requirements(service) == {"scipy": ["scipy"]}
