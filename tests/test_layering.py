"""The package layering, read from the source: which package may import which.

Every import counts, also one inside a function (a lazy import is still a dependency):
the model knows nothing of training or analysis, the analysis nothing of training, the
neutral modules (configuration, process groups, file writes, folder locks) nothing of any
package above them, and no library code imports the command line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import vilalign

SRC = Path(vilalign.__file__).parent
CLI = {"vilalign.commands", "vilalign.cli", "vilalign.__main__"}

#: package -> the packages it must never import.
FORBIDDEN = {
    "vilalign.config": {"vilalign.data", "vilalign.model", "vilalign.train", "vilalign.analysis",
                        "vilalign.experiments"},
    "vilalign.distributed": {"vilalign.data", "vilalign.model", "vilalign.train",
                             "vilalign.analysis", "vilalign.experiments"},
    "vilalign.io": {"vilalign.config", "vilalign.data", "vilalign.model", "vilalign.train",
                    "vilalign.analysis", "vilalign.experiments", "vilalign.distributed"},
    "vilalign.locks": {"vilalign.config", "vilalign.data", "vilalign.model", "vilalign.train",
                       "vilalign.analysis", "vilalign.experiments", "vilalign.distributed"},
    "vilalign.data": {"vilalign.train", "vilalign.analysis", "vilalign.experiments"},
    "vilalign.model": {"vilalign.train", "vilalign.analysis", "vilalign.experiments"},
    "vilalign.analysis": {"vilalign.train", "vilalign.experiments"},
    "vilalign.train": {"vilalign.experiments"},
    "vilalign.predictions": {"vilalign.train", "vilalign.analysis", "vilalign.experiments"},
}  # fmt: skip


def _module_name(path: Path) -> str:
    parts = ("vilalign", *path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports; ``from a import b`` counts as ``a`` and ``a.b``."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _top(module: str) -> str:
    """The package a module belongs to: ``vilalign.train.loop`` → ``vilalign.train``."""
    return ".".join(module.split(".")[:2])


GRAPH = {_module_name(p): _imports(p) for p in sorted(SRC.rglob("*.py"))}


def _violations(importer: str, forbidden: set[str]) -> list[str]:
    return sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if _top(module) == importer
        for target in targets
        if target.startswith("vilalign.") and _top(target) in forbidden
    )


@pytest.mark.parametrize("importer", sorted(FORBIDDEN))
def test_a_package_never_imports_the_layers_above_it(importer):
    assert _violations(importer, FORBIDDEN[importer]) == []


def test_the_library_never_imports_the_command_line():
    library = {_top(m) for m in GRAPH} - CLI
    bad = [v for package in sorted(library) for v in _violations(package, CLI)]
    assert bad == []


def test_the_checks_see_imports_inside_functions_and_relative_ones(tmp_path, monkeypatch):
    # The checks must not pass because the parser missed a lazy or relative import.
    folder = tmp_path / "vilalign" / "analysis"
    folder.mkdir(parents=True)
    probe = folder / "probe.py"
    probe.write_text("def f():\n    from ..train import loop\n    import vilalign.cli\n")
    monkeypatch.setattr(f"{__name__}.SRC", tmp_path / "vilalign")
    assert {"vilalign.train", "vilalign.train.loop", "vilalign.cli"} <= _imports(probe)
