"""The packages form layers and data flows one way: estimators -> synth_blur -> dataset_tools -> bokeh_models ->
pipelines -> trainer -> bokeh_cli (the `bokeh` command). Every import in every module (also those inside
functions) is read with ``ast``; a module importing a package above its own fails."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["estimators", "synth_blur", "dataset_tools", "bokeh_models", "pipelines", "trainer", "bokeh_cli"]


def imported_packages(path: Path) -> set[str]:
    """The top-level names ``path`` imports (absolute imports; relative ones stay in its own package)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def upward_imports() -> list[str]:
    found = []
    for rank, package in enumerate(LAYERS):
        for path in sorted((ROOT / package).rglob("*.py")):
            above = sorted(name for name in imported_packages(path) if name in LAYERS[rank + 1:])
            found += [f"{path.relative_to(ROOT)} imports {name}" for name in above]
    return found


def test_every_package_is_a_layer_with_modules():
    assert all((ROOT / package / "__init__.py").is_file() for package in LAYERS)


def test_no_module_imports_a_layer_above_its_own():
    assert upward_imports() == []


def test_an_upward_import_is_found(tmp_path):
    """The checker itself, on a module written for it: a function-level import of a higher layer counts."""
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom . import sibling\n\ndef f():\n    from trainer.training import train\n    import pipelines.loading\n")
    assert imported_packages(module) == {"os", "trainer", "pipelines"}
