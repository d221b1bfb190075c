"""The package's folders are layers, and a module imports only from its own layer and the ones below it.

    env  <  data  <  serving  <  training  <  synthetic  <  tools

``env`` (protocol, dialogue, settings, frames) is the core: it imports no other layer and none of verl, vLLM, Ray
or torch.distributed. Every import statement of every module counts, at any depth: a lazy import inside a
function, or one under ``if TYPE_CHECKING:``, ties the layers as much as one at the top of the file.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "sparse_video_r1"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

#: Each layer, and the other layers its modules may import.
MAY_IMPORT: dict[str, frozenset[str]] = {
    "env": frozenset(),
    "data": frozenset({"env"}),
    "serving": frozenset({"env", "data"}),
    "training": frozenset({"env", "data", "serving"}),
    "synthetic": frozenset({"env", "data", "serving", "training"}),
    "tools": frozenset({"env", "data", "serving", "training", "synthetic"}),
}

#: Outside packages a layer must not import (a package and everything under it).
MUST_NOT_IMPORT: dict[str, tuple[str, ...]] = {
    "env": ("verl", "vllm", "ray", "torch.distributed", "transfer_queue"),
}


def imported_modules(tree: ast.AST, module: str) -> Iterator[tuple[int, str]]:
    """Every module an import statement anywhere in ``tree`` names, with its line; relative imports resolved.

    ``from a.b import c`` yields ``a.b.c`` as well as ``a.b``, since ``c`` may be a module.
    """
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *([base] if base else [])])
            yield node.lineno, base
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{base}.{alias.name}"


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_violations(root: Path) -> list[str]:
    """Every import in the package at ``root`` that breaks the layer rule, as ``path:line: module imports name``."""
    problems: list[str] = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if relative == Path("__init__.py"):
            continue
        layer = relative.parts[0]
        if len(relative.parts) < 2 or layer not in MAY_IMPORT:
            problems.append(f"{PACKAGE}/{relative}: lies in no layer (one of {', '.join(MAY_IMPORT)})")
            continue
        module = ".".join([PACKAGE, *relative.with_suffix("").parts])
        allowed = MAY_IMPORT[layer] | {layer}
        for line, name in imported_modules(ast.parse(path.read_text(), str(path)), module):
            where = f"{PACKAGE}/{relative}:{line}: {module} imports {name}"
            if _within(name, PACKAGE) and name != PACKAGE:
                target = name.split(".")[1]
                if target in MAY_IMPORT and target not in allowed:
                    problems.append(f"{where}, but {layer} may import only {sorted(allowed)}")
            for banned in MUST_NOT_IMPORT.get(layer, ()):
                if _within(name, banned):
                    problems.append(f"{where}, but {layer} must not import {banned}")
    return problems


def test_every_module_imports_only_its_own_layer_and_the_layers_below() -> None:
    problems = layer_violations(ROOT)
    assert not problems, "layer rule broken:\n" + "\n".join(problems)


def test_every_layer_is_a_package_that_says_what_it_may_import() -> None:
    for layer in MAY_IMPORT:
        init = ROOT / layer / "__init__.py"
        assert init.is_file(), f"{layer}/ has no __init__.py"
        assert ast.get_docstring(ast.parse(init.read_text())), f"{layer}/__init__.py has no docstring"


def test_a_planted_violation_is_reported_with_its_file_and_import(tmp_path: Path) -> None:
    root = tmp_path / PACKAGE
    for layer in MAY_IMPORT:
        (root / layer).mkdir(parents=True)
        (root / layer / "__init__.py").write_text('"""A layer."""\n')
    (root / "__init__.py").write_text("")
    (root / "env" / "core.py").write_text(
        "from sparse_video_r1.env import other\n"
        "def lazy():\n"
        "    from sparse_video_r1.tools import evaluate\n"
        "    import verl.trainer\n"
        "    from ..training import reward\n"
    )
    (root / "data" / "rows.py").write_text("from sparse_video_r1 import env, serving\n")
    (root / "tools" / "cli.py").write_text("from sparse_video_r1.synthetic import needle\nimport vllm\n")
    (root / "flat.py").write_text("")

    problems = layer_violations(root)

    assert [p.split(", but")[0] for p in problems] == [
        "sparse_video_r1/data/rows.py:1: sparse_video_r1.data.rows imports sparse_video_r1.serving",
        "sparse_video_r1/env/core.py:3: sparse_video_r1.env.core imports sparse_video_r1.tools",
        "sparse_video_r1/env/core.py:3: sparse_video_r1.env.core imports sparse_video_r1.tools.evaluate",
        "sparse_video_r1/env/core.py:4: sparse_video_r1.env.core imports verl.trainer",
        "sparse_video_r1/env/core.py:5: sparse_video_r1.env.core imports sparse_video_r1.training",
        "sparse_video_r1/env/core.py:5: sparse_video_r1.env.core imports sparse_video_r1.training.reward",
        "sparse_video_r1/flat.py: lies in no layer (one of env, data, serving, training, synthetic, tools)",
    ]
