"""Imports point one way: config -> data -> modeling -> checkpoint -> inference -> training -> study -> cli.

Every module's imports (including those inside functions and under TYPE_CHECKING) are read with
`ast`; a module may import its own layer or a lower one, never a higher one. Training sits above
inference because it evaluates and samples during a run; inference never needs training.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The first name under the package -> its layer. errors, config and runtime are the base
# every layer may use; a new top-level module or folder must be placed here before it is used.
LAYERS = {
    "errors": 0, "typed_values": 0, "config": 0, "runtime": 0, "paths": 0, "version": 0,
    "data": 1,
    "modeling": 2,
    "checkpoint": 3,
    "inference": 4, "export": 4,
    "training": 5,
    "study": 6,
    "cli": 7, "__main__": 7, "api": 7,
    "__init__": 8,  # the package root re-exports the API (imported lazily, on first use)
}


def _module_name(path: Path, package_dir: Path) -> list[str]:
    """`pkg/a/b.py` -> [pkg, a, b]; a package's `__init__.py` -> [pkg, a, __init__]."""
    rel = path.relative_to(package_dir.parent).with_suffix("")
    return list(rel.parts)


def _imported(node: ast.AST, importer: list[str]) -> list[str]:
    """Absolute dotted names an Import / ImportFrom node brings in."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    assert isinstance(node, ast.ImportFrom)
    if node.level == 0:
        base = node.module or ""
    else:  # relative: drop the module itself, then one package per extra dot
        parent = importer[:-1][: len(importer) - node.level]
        base = ".".join(parent + ([node.module] if node.module else []))
    # `from pkg import sub` may import a submodule: judge `pkg.sub`, which names the layer.
    return [f"{base}.{alias.name}" if base.count(".") == 0 else base for alias in node.names]


def _layer(parts: list[str]) -> str:
    """The layer key of a module path below the package: its first part (file stem or folder)."""
    return parts[0] if parts else "__init__"


def layering_violations(package_dir: Path, layers: dict[str, int]) -> list[str]:
    """One message per import that goes from a lower layer to a higher one, or per module that
    belongs to no layer, for the package rooted at `package_dir`."""
    package = package_dir.name
    problems = []
    for path in sorted(package_dir.rglob("*.py")):
        importer = _module_name(path, package_dir)
        own = _layer(importer[1:])
        rel = path.relative_to(package_dir.parent)
        if own not in layers:
            problems.append(f"{rel}: '{own}' is in no layer (add it to LAYERS)")
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for name in _imported(node, importer):
                parts = name.split(".")
                if parts[0] != package:
                    continue
                target = _layer(parts[1:])
                if target not in layers:
                    problems.append(f"{rel}:{node.lineno}: imports {name}, which is in no layer")
                elif layers[target] > layers[own]:
                    problems.append(f"{rel}:{node.lineno}: {own} (layer {layers[own]}) imports {name} "
                                    f"({target}, layer {layers[target]}): imports must point down")
    return problems


def test_albert_gpt_imports_point_one_way():
    assert layering_violations(ROOT / "albert_gpt", LAYERS) == []


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root / "pkg"


@pytest.mark.parametrize("statement", [
    "from pkg.training.trainer import train",
    "import pkg.training.trainer",
    "from pkg import training",
    "from ..training import trainer",
    "def later():\n    from pkg.training import trainer\n",
])
def test_an_upward_import_is_found_and_named(tmp_path, statement):
    """A planted import from modeling/ up into training/ is reported with its file and line,
    however it is written (absolute, package, relative, inside a function)."""
    pkg = _tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/config.py": "",
        "pkg/modeling/__init__.py": "",
        "pkg/modeling/model.py": "import os\nfrom pkg.config import x\n" + statement + "\n",
        "pkg/training/__init__.py": "",
        "pkg/training/trainer.py": "from pkg.modeling.model import AlbertGPT\n",
    })
    problems = layering_violations(pkg, {"__init__": 0, "config": 0, "modeling": 2, "training": 5})
    line = 2 + next(n for n, text in enumerate(statement.splitlines(), 1) if "training" in text)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"pkg/modeling/model.py:{line}: modeling (layer 2) imports pkg.training")
    assert "imports must point down" in problems[0]


def test_downward_and_same_layer_imports_pass(tmp_path):
    pkg = _tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/config.py": "",
        "pkg/modeling/__init__.py": "",
        "pkg/modeling/layers.py": "from pkg.config import x\n",
        "pkg/modeling/model.py": "from .layers import Block\nfrom pkg.modeling import layers\n",
        "pkg/training/trainer.py": "from pkg.modeling.model import AlbertGPT\nfrom pkg import config\n",
    })
    assert layering_violations(pkg, {"__init__": 0, "config": 0, "modeling": 2, "training": 5}) == []


def test_a_module_outside_every_layer_is_reported(tmp_path):
    pkg = _tree(tmp_path, {"pkg/__init__.py": "", "pkg/helpers.py": "import os\n"})
    expected = "pkg/helpers.py: 'helpers' is in no layer (add it to LAYERS)"
    assert layering_violations(pkg, {"__init__": 0}) == [expected]
